"""Benchmark output: a readable table on stderr, one JSON object per figure on stdout."""

import json
import os
import statistics
import sys
import time
import traceback
from contextlib import contextmanager

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the repository: benches use tests/tools too

_rows: list[tuple[str, float, str, str]] = []


def emit(name: str, value: float, unit: str, note: str = "") -> None:
    print(json.dumps({"name": name, "value": round(value, 4), "unit": unit}), flush=True)
    _rows.append((name, value, unit, note))


def table(title: str) -> None:
    width = max(len(r[0]) for r in _rows) if _rows else 10
    print(f"\n{title}", file=sys.stderr)
    for name, value, unit, note in _rows:
        print(f"  {name:<{width}}  {value:>12.4f} {unit:<6} {note}", file=sys.stderr)
    _rows.clear()


class Steps:
    """Run a benchmark's steps so that one failure loses only its own figures.

    Each figure is emitted by its step as soon as it is measured. A step that fails prints its
    traceback and ``logs()`` (the daemons' logs) to stderr; the run goes on with the next step and
    ``done()`` exits non-zero naming the failed steps.
    """

    def __init__(self):
        self.failed: list[str] = []

    def run(self, name: str, fn, logs=lambda: "") -> object:
        try:
            return fn()
        except Exception:  # noqa: BLE001 - report and go on: the other figures still count
            self.failed.append(name)
            print(f"\nstep {name!r} failed:\n{traceback.format_exc()}", file=sys.stderr)
            try:
                print(f"logs:\n{logs()}", file=sys.stderr)
            except Exception as exc:  # noqa: BLE001
                print(f"(no logs: {exc})", file=sys.stderr)
            return None

    def done(self) -> None:
        if self.failed:
            raise SystemExit(f"failed steps: {', '.join(self.failed)}")


def cpu_sample() -> tuple[int, int]:
    """The host's CPU ticks so far (from /proc/stat): total, and idle + iowait."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]


def busy_between(first: tuple[int, int], second: tuple[int, int]) -> float:
    """The host's CPU use between two :func:`cpu_sample` readings, 0..1 of all cores."""
    return 1 - (second[1] - first[1]) / max(1, second[0] - first[0])


def cpu_busy(window: float = 1.0) -> float:
    """The host's CPU use over ``window`` seconds, 0..1 of all cores."""
    first = cpu_sample()
    time.sleep(window)  # the measurement window
    return busy_between(first, cpu_sample())


def wait_cpu_quiet(below: float = 0.35, timeout: float = 90.0) -> float:
    """Until the host's CPU use falls below ``below`` (freshly started guests boot on the same cores a
    measurement runs on), or ``timeout``; returns the last reading."""
    deadline = time.monotonic() + timeout
    busy = cpu_busy()
    while busy >= below and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


def median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextmanager
def stopwatch():
    box = {}
    t0 = time.perf_counter()
    yield box
    box["s"] = time.perf_counter() - t0


def handovers(ops, make_pinger, runs: int) -> tuple[list[int], list[float]]:
    """``runs`` planned handovers between hv1 and hv2, each under its own pinger (started by
    ``make_pinger()``, stopped to a ``(sent, received)`` count): pings lost and seconds, per handover."""
    lost, seconds = [], []
    for _ in range(runs):
        target = "hv2" if ops.view.snapshot().primary.node == "hv1" else "hv1"
        pinger = make_pinger()
        time.sleep(0.5)  # pings before the move: the measurement window, not synchronisation
        t0 = time.monotonic()
        final = ops.wait_handover(ops.request_primary(target), 60)
        seconds.append(time.monotonic() - t0)
        if final is None or final.phase != "done":
            raise SystemExit(f"handover failed: {final.reason if final else 'timed out'}")
        time.sleep(0.5)  # and after it
        sent, received = pinger.stop()
        lost.append(sent - received)
    return lost, seconds


@contextmanager
def pvcapid(hosts: str, root: str, workdir: str, key: str, vms: int, **settings):
    """pvcapid (2 workers) on loopback, yielded as ``(process, port, client)`` once both workers list all ``vms``
    VMs (each loads them into its view first); stopped on the way out. ``settings``: more keys of its TOML file."""
    from pvccli.client import ApiError, Client
    from tests.tools.pvcapid import start_pvcapid

    api, port, _ = start_pvcapid(hosts, root, workdir, key=key, **{"workers": 2, "log_level": "warning", **settings})
    try:
        client = Client(f"http://127.0.0.1:{port}", key, timeout=30)
        deadline = time.monotonic() + 60
        while True:
            try:
                if len(client.vms()) == vms and len(client.vms()) == vms:
                    break
            except ApiError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("pvcapid did not come up")
            time.sleep(0.2)  # another process loading the VMs: polled under a deadline
        yield api, port, client
    finally:
        api.terminate()
        api.wait(30)

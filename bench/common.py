"""Benchmark output: a readable table on stderr, one JSON object per figure on stdout."""

import json
import statistics
import sys
import time
from contextlib import contextmanager

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

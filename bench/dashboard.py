"""The dashboard's live feed under gunicorn on loopback: how soon a change reaches every open page.

A cluster of 50 nodes and 1,000 VMs written straight into a real ZooKeeper, pvcapid with 2 workers of
64 threads (16 event streams each: a quarter of the threads; new connections may all land on one
worker), and 16 open streams (``GET /api/v1/events``, what each open dashboard tab holds). Then 100 changes of a VM's metadata, one every 100 ms, written by
another ZooKeeper client: for each, the time from its write to its delta on each stream.

Target (issue 17): a page updates within 1 s of a change. Also printed: the first event (the
snapshot of 1,000 VMs) of a new stream, its size, and the API's CPU while following the changes.

    .venv/bin/python bench/dashboard.py
"""

import json
import os
import statistics
import sys
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

from common import emit, pvcapid, table  # noqa: E402

from pvccore.demo.zookeeper import LocalZooKeeper  # noqa: E402
from pvccore.domain.models import VM, Node, VMMeta  # noqa: E402
from pvccore.zk.store import Store  # noqa: E402
from tests.tools.sse import Stream  # noqa: E402

NODES, VMS, STREAMS, CHANGES = 50, 1_000, 16, 100
KEY = "bench-key"
ROOT = "/bench-dashboard"


def populate(store: Store) -> None:
    for i in range(NODES):
        store.create_node(Node(name=f"hv{i:02d}", daemon_state="run", memory_total_mib=262144, memory_free_mib=100000,
                               cpu_count=64, running_vms=tuple(f"vm{j:04d}" for j in range(i, VMS, NODES))))
    for j in range(VMS):
        vm = VM(name=f"vm{j:04d}", uuid=str(uuid.uuid4()), memory_mib=1024, vcpus=2, state="start",
                node=f"hv{j % NODES:02d}", meta=VMMeta(node_selector="mem"))
        store.create_vm(vm, "<domain/>")


def cpu_seconds(pid: int) -> float:
    """User and system CPU of ``pid`` and its children (gunicorn's workers), from /proc."""
    total = 0.0
    for p in [pid] + [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main() -> None:
    with LocalZooKeeper() as zk:
        store = Store.connect(zk.hosts, ROOT)
        populate(store)
        try:
            with pvcapid(zk.hosts, ROOT, zk.dir, KEY, VMS, threads=64) as (api, port, _client):
                measure(store, api.pid, f"127.0.0.1:{port}")
        finally:
            store.close()
    table("dashboard feed (bench/dashboard.py)")


def measure(store: Store, api_pid: int, netloc: str) -> None:
    streams: list[Stream] = []
    try:
        firsts, sizes = [], []
        while len(streams) < STREAMS:
            t0 = time.perf_counter()
            s = Stream(netloc, KEY)
            if s.status != 200:
                raise SystemExit(f"stream {len(streams) + 1} refused: {s.status}")
            kind, snap = s.next()
            firsts.append(time.perf_counter() - t0)
            sizes.append(len(json.dumps(snap)))
            assert kind == "snapshot" and len(snap["vms"]) == VMS
            streams.append(s)
        emit("dashboard_first_event_ms", statistics.median(firsts) * 1000, "ms",
             f"a new stream's snapshot of {VMS} VMs, {NODES} nodes (median of {STREAMS})")
        emit("dashboard_snapshot_kib", statistics.median(sizes) / 1024, "KiB", "its size")

        seen: dict[int, dict[str, float]] = {i: {} for i in range(len(streams))}
        written: dict[str, float] = {}

        def follow(i: int, s: Stream) -> None:
            try:
                while len(seen[i]) < CHANGES:
                    kind, data = s.next()
                    now = time.monotonic()
                    for vm in data.get("vms", ()):
                        for tag in vm["meta"]["tags"]:
                            seen[i].setdefault(tag, now)
            except (AssertionError, OSError):
                pass

        readers = [threading.Thread(target=follow, args=(i, s), daemon=True) for i, s in enumerate(streams)]
        for r in readers:
            r.start()
        cpu0, t_start = cpu_seconds(api_pid), time.monotonic()
        for n in range(CHANGES):
            tag = f"t{n}"
            name = f"vm{(n * 37) % VMS:04d}"
            written[tag] = time.monotonic()
            store.update_vm(name, lambda vm: replace(vm, meta=replace(vm.meta, tags=(tag,))))
            time.sleep(0.1)  # the pace of changes the bench offers, not a wait for anything
        for r in readers:
            r.join(30)
        cpu = cpu_seconds(api_pid) - cpu0
        elapsed = time.monotonic() - t_start
        lat = sorted(at - written[tag] for i in seen for tag, at in seen[i].items())
        missed = CHANGES * len(streams) - len(lat)
        emit("dashboard_event_ms_p50", statistics.median(lat) * 1000, "ms",
             f"a change's write -> its delta on the stream, {len(streams)} streams, {CHANGES} changes")
        emit("dashboard_event_ms_p99", lat[int(len(lat) * 0.99) - 1] * 1000, "ms", "target 1,000")
        emit("dashboard_event_ms_max", lat[-1] * 1000, "ms", "")
        emit("dashboard_events_missed", missed, "events", "changes a stream never showed")
        emit("dashboard_api_cpu_pct", cpu / elapsed * 100, "%",
             f"pvcapid (both workers) following {CHANGES / elapsed:.0f} changes/s for {len(streams)} streams")
    finally:
        for s in streams:
            s.close()


if __name__ == "__main__":
    main()

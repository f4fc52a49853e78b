"""Benchmarks on the cluster in a box: real QEMU hypervisors in network namespaces, a ZooKeeper
ensemble, BMCs answering real IPMI, the API on the primary's floating IP (tests/cluster/harness.py).

- ``live_migration_s_median``: request -> the VM running on the other node (live), 10 migrations;
- ``failover_s_median`` / ``_worst``: power loss of a node through its BMC -> the last of its 3 VMs
  running elsewhere (as the other nodes' libvirt reports), 5 runs, default settings;
- ``handover_lost_pings_max`` / ``handover_s_median``: 10 planned primary handovers while a client
  host pings the floating IP every 25 ms;
- ``handover_api_gap_s``: through those handovers, a client host polls an authenticated API route on
  the floating IP every 10 ms; the longest time without a successful answer (target <= 1 s);
- ``flush20_s_p1`` / ``_p2`` / ``_p4``: flush of 20 VMs off one node by live migration, with
  ``flush_parallel`` 1, 2 and 4.

    .venv/bin/python bench/box.py        (or: make bench)
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Steps, emit, handovers, table, wait_cpu_quiet  # noqa: E402

from tests.cluster.harness import ClusterBox, FLOATING_IP, kvm_usable, tiny_domain_xml  # noqa: E402

MIGRATIONS = 10
FAILOVERS = 5
HANDOVERS = 10
FLUSH_VMS = 20


def wait_running_on(box: ClusterBox, names, node: str, timeout: float = 60) -> bool:
    """Poll the node's own libvirt (no watch to share across hosts) until all ``names`` run there."""
    deadline = time.monotonic() + timeout
    while not set(names) <= box.nodes[node].running_domains():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def live_migration(box: ClusterBox) -> list[float]:
    box.ops.define_vm(tiny_domain_xml("mig1"), target="hv1")
    assert wait_running_on(box, ["mig1"], "hv1")
    times = []
    for i in range(MIGRATIONS):
        target = "hv2" if i % 2 == 0 else "hv1"
        t0 = time.monotonic()
        box.ops.migrate("mig1", target)
        assert box.view.wait_for(lambda c: c.vms["mig1"].node == target and c.vms["mig1"].migration is None, 60)
        times.append(time.monotonic() - t0)
        assert box.running()[target] >= {"mig1"}
    done = [line for n in box.nodes.values() for line in n.daemon_log.read_text().splitlines()
            if "VM mig1: migrated from" in line]
    assert len(done) == MIGRATIONS and all("(live, " in line for line in done), done
    box.ops.undefine("mig1", force=True)
    return times


def failover(box: ClusterBox) -> list[float]:
    vms = ("fo1", "fo2", "fo3")
    for name in vms:
        box.ops.define_vm(tiny_domain_xml(name), target="hv3")
    times = []
    for _ in range(FAILOVERS):
        assert wait_running_on(box, vms, "hv3")
        assert not box.settled()
        t0 = time.monotonic()
        box.bmc("hv3", "chassis", "power", "off")
        deadline = time.monotonic() + 120
        while True:  # every VM running on another node, by that node's libvirt
            running = box.running()
            if all(any(name in running[n] for n in ("hv1", "hv2")) for name in vms):
                break
            assert time.monotonic() < deadline, box.logs()
            time.sleep(0.02)
        times.append(time.monotonic() - t0)
        assert not box.settled()
        box.nodes["hv3"].power_on()
        box.wait_running(["hv3"])
        box.cli("node", "ready", "hv3", "--wait")
    return times


def flush20(work: Path, parallel: int) -> float:
    with ClusterBox(str(work / f"flush-p{parallel}"), daemon_flags=("--flush-parallel", str(parallel))) as box:
        names = [f"f{i:02d}" for i in range(FLUSH_VMS)]
        for name in names:
            box.ops.define_vm(tiny_domain_xml(name), target="hv1")
        assert wait_running_on(box, names, "hv1", 180), box.logs()
        wait_cpu_quiet()  # the VMs' firmware boots on the cores the flush runs on
        t0 = time.monotonic()
        box.ops.flush("hv1")
        assert box.ops.wait_node("hv1", lambda n: n.domain_state == "flushed", 300), box.logs()
        took = time.monotonic() - t0
        assert not box.nodes["hv1"].running_domains() and not box.settled()
        return took


def main() -> None:
    accel = "KVM" if kvm_usable() else "TCG"
    steps = Steps()
    with tempfile.TemporaryDirectory(prefix="pvc-bench-box-") as work:
        work = Path(work)
        with ClusterBox(str(work / "main")) as box:
            def migrations():
                times = live_migration(box)
                emit("live_migration_s_median", statistics.median(times), "s",
                     f"{MIGRATIONS} live migrations of a 32 MiB VM ({accel}), request -> running on the target")
            steps.run("live_migration", migrations, box.logs)

            def handover_figures():
                poller = box.api_poller()
                lost, handover_s = handovers(box.ops, lambda: box.pinger(FLOATING_IP, 0.025), HANDOVERS)
                api_gap = poller.stop()
                emit("handover_lost_pings_max", max(lost), "pings", f"per handover: {lost}")
                emit("handover_s_median", statistics.median(handover_s), "s", f"worst {max(handover_s):.2f} s")
                emit("handover_api_gap_s", api_gap["gap_s"], "s",
                     f"longest time without an answer from GET /api/v1/node on the floating IP, polled every "
                     f"10 ms through {HANDOVERS} handovers ({api_gap['successes']} of {api_gap['polls']} answered)")
            steps.run("handover", handover_figures, box.logs)

            def failovers():
                fail = failover(box)
                emit("failover_s_median", statistics.median(fail), "s", f"runs: {', '.join(f'{t:.2f}' for t in fail)}")
                emit("failover_s_worst", max(fail), "s", "power loss through the BMC -> 3 VMs running elsewhere")
            steps.run("failover", failovers, box.logs)
        for p in (1, 2, 4):
            steps.run(f"flush20_p{p}", lambda p=p: emit(
                f"flush20_s_p{p}", flush20(work, p), "s", f"20 VMs live-migrated off one node, {p} at a time"))
    table("cluster in a box (real QEMU, IPMI BMCs, ZooKeeper ensemble, API on the floating IP)")
    steps.done()


if __name__ == "__main__":
    main()

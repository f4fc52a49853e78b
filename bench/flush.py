"""Flush of 20 VMs from one node at parallelism 1, 2 and 4, on three daemons with libvirt's test driver.

Time from the flush request to the node's domain state ``flushed`` (every VM
running elsewhere), median of 3 runs per setting.

    .venv/bin/python bench/flush.py          (or: make bench)
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from common import emit, table  # noqa: E402

from pvccore.demo.cluster import LocalCluster, sample_domain_xml  # noqa: E402
from pvccore.demo.zookeeper import LocalZooKeeper  # noqa: E402
from pvccore.operations import Operations  # noqa: E402
from pvccore.plugins import load_plugins  # noqa: E402
from pvccore.zk.store import Store, delete_tree  # noqa: E402
from pvccore.zk.session import Session  # noqa: E402

VMS = 20
RUNS = 3


def one_setting(zk: LocalZooKeeper, parallel: int) -> list[float]:
    root = f"/bench-flush-p{parallel}"
    flags = ("--keepalive-interval", "1", "--shutdown-timeout", "10", "--migration-timeout", "30",
             "--flush-parallel", str(parallel))
    store = Store.connect(zk.hosts, root)
    times = []
    with LocalCluster(zk.hosts, root, flags=flags):
        view = Session.on(store).view
        ops = Operations(store, view, load_plugins())
        for i in range(VMS):
            ops.define_vm(sample_domain_xml(f"vm{i:02d}", 256), target="hv1")
        for _ in range(RUNS):
            assert view.wait_for(lambda c: len(c.nodes["hv1"].running_vms) == VMS, 60), "VMs did not start"
            t0 = time.perf_counter()
            ops.flush("hv1")
            assert ops.wait_node("hv1", lambda n: n.domain_state == "flushed", 120), "flush did not finish"
            times.append(time.perf_counter() - t0)
            ops.ready("hv1")
            assert ops.wait_node("hv1", lambda n: n.domain_state == "ready", 120), "ready did not finish"
        view.stop()
    delete_tree(store.client, root)
    store.close()
    return times


def main() -> None:
    with LocalZooKeeper() as zk:
        for parallel in (1, 2, 4):
            times = one_setting(zk, parallel)
            emit(f"flush20_s_p{parallel}", statistics.median(times), "s",
                 f"runs: {', '.join(f'{t:.2f}' for t in times)}")
    table(f"flush of {VMS} VMs, libvirt test driver, shutdown + start path (median of {RUNS})")


if __name__ == "__main__":
    main()

"""Failover time: kill -9 of a node's daemon -> the last of its VMs running elsewhere, with default settings.

Three coordinator daemons on libvirt's test driver, each with a simulated BMC
answering real IPMI (pyghmi, ipmitool lanplus). Each run: 3 VMs on hv3, kill
hv3's daemon, time until all 3 run on other nodes (as their keepalives report),
then bring hv3 back and ready it. Target: median <= 10 s.

    .venv/bin/python bench/failover.py       (or: make bench)
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

from common import emit, table  # noqa: E402

from pvccore.demo.cluster import LocalCluster, sample_domain_xml  # noqa: E402
from pvccore.demo.zookeeper import LocalZooKeeper, free_port  # noqa: E402
from pvccore.operations import Operations  # noqa: E402
from pvccore.plugins import load_plugins  # noqa: E402
from pvccore.zk.store import Store  # noqa: E402
from pvccore.zk.session import Session  # noqa: E402

RUNS = 5
VMS = ("web1", "web2", "db1")
BMCSIM = Path(__file__).resolve().parents[1] / "tests" / "tools" / "bmcsim.py"


def main() -> None:
    times = []
    with tempfile.TemporaryDirectory() as work, LocalZooKeeper() as zk:
        work = Path(work)
        local = LocalCluster(zk.hosts, "/failover", workdir=str(work), flags=("--keepalive-interval", "1"),
                             node_flags={n: ("--coordinator",) for n in ("hv1", "hv2", "hv3")})
        ports = {n: free_port() for n in local.nodes}
        bmcs = [subprocess.Popen([sys.executable, str(BMCSIM), "--port", str(ports[n]), "--pgid-file",
                                  str(work / f"{n}.pgid")]) for n in local.nodes]
        local.start()
        store = Store.connect(zk.hosts, "/failover")
        view = Session.on(store).view
        ops = Operations(store, view, load_plugins())
        try:
            for n in local.nodes:
                (work / f"{n}.pgid").write_text(str(local.procs[n].pid))
                ops.set_fence_config(n, [{"fencer": "ipmi", "params": {
                    "host": "127.0.0.1", "port": ports[n], "username": "admin", "password": "secret"}}])
            for vm in VMS:
                ops.define_vm(sample_domain_xml(vm, 256), target="hv3")
            for _ in range(RUNS):
                assert view.wait_for(lambda c: all(v in c.nodes["hv3"].running_vms for v in VMS), 60), "not on hv3"
                t0 = time.monotonic()
                local.kill("hv3")
                ok = view.wait_for(lambda c: all(
                    c.vms[v].node != "hv3" and v in c.nodes[c.vms[v].node].running_vms for v in VMS), 120)
                times.append(time.monotonic() - t0)
                assert ok, "VMs not recovered"
                local.start_node("hv3")
                (work / "hv3.pgid").write_text(str(local.procs["hv3"].pid))
                local.wait_running(["hv3"])
                ops.ready("hv3")  # its VMs come back: ready for the next run
                assert ops.wait_node("hv3", lambda n: n.domain_state == "ready", 60)
        finally:
            view.stop()
            local.stop()
            for bmc in bmcs:
                bmc.terminate()
            store.close()
    emit("failover_s_median", statistics.median(times), "s", f"runs: {', '.join(f'{t:.2f}' for t in times)}")
    emit("failover_s_worst", max(times), "s")
    table(f"failover: kill -9 of a node's daemon -> its {len(VMS)} VMs running elsewhere (default settings)")


if __name__ == "__main__":
    main()

"""Capacity under concurrency: decisions made at once never put more on a node than it has room for."""

from __future__ import annotations

import threading

from pvccore.errors import PVCError
from pvccore.demo.cluster import sample_domain_xml
from pvccore.operations import Operations
from pvccore.plugins import load_plugins
from pvccore.zk.store import Store
from pvccore.zk.session import Session

T = 60
VM_MIB = 1500
NODE_MIB = 16384  # LocalCluster's nodes


def workers(zk_server, root, count):
    """``count`` independent clients, each with its own ZooKeeper session and view (as API workers are)."""
    out = []
    for _ in range(count):
        store = Store.connect(zk_server.hosts, root)
        view = Session.on(store).view
        out.append(Operations(store, view, load_plugins()))
    return out


def at_once(fns):
    """Run every function in its own thread, released together; return what each returned or raised."""
    start = threading.Barrier(len(fns))
    results = [None] * len(fns)

    def run(i, fn):
        start.wait()
        try:
            results[i] = fn()
        except PVCError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    return results


def committed_mib(view, node) -> int:
    """Memory of the VMs that run on ``node`` or are on their way to it."""
    snap = view.snapshot()
    return sum(v.memory_mib for v in snap.vms.values()
               if (v.node == node and v.state in ("start", "migrate", "migrate-live", "unmigrate"))
               or (v.migration is not None and v.migration.target == node))


def test_parallel_defines_on_one_node_never_overcommit_it(cluster, zk_server):
    ops = workers(zk_server, cluster.store.paths.root, 20)
    try:
        results = at_once([lambda o=o, i=i: o.define_vm(sample_domain_xml(f"big{i:02d}", VM_MIB, 1), target="hv1")
                           for i, o in enumerate(ops)])
    finally:
        for o in ops:
            o.view.stop()
            o.store.close()
    accepted = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(accepted) == NODE_MIB // VM_MIB, results  # exactly what fits: 10
    assert all("not enough free memory" in r.message for r in refused), refused
    assert cluster.view.wait_for(lambda c: len(c.nodes["hv1"].running_vms) == len(accepted), T)
    assert cluster.view.snapshot().nodes["hv1"].memory_free_mib == NODE_MIB - VM_MIB * len(accepted)


def test_simultaneous_flushes_never_overcommit_the_node_left(cluster):
    big = 2500  # 6 fit on the node left
    for node in ("hv1", "hv2"):
        for i in range(6):
            cluster.define_vm(sample_domain_xml(f"{node}-{i}", big, 1), target=node)
    assert cluster.view.wait_for(lambda c: all(len(c.nodes[n].running_vms) == 6 for n in ("hv1", "hv2")), T)
    at_once([lambda: cluster.flush("hv1"), lambda: cluster.flush("hv2")])
    most = 0

    def flushed(c) -> bool:
        nonlocal most
        most = max(most, committed_mib(cluster.view, "hv3"))
        return all(c.nodes[n].domain_state == "flushed" for n in ("hv1", "hv2"))

    assert cluster.view.wait_for(flushed, 120)
    assert most <= NODE_MIB, most  # never promised more than hv3 has, at any moment the view showed
    snap = cluster.view.snapshot()
    on_hv3 = [v for v in snap.vms.values() if v.node == "hv3" and v.state == "start"]
    parked = [v for v in snap.vms.values() if v.state == "stop" and v.meta.node_autostart]
    assert len(on_hv3) == NODE_MIB // big and len(on_hv3) + len(parked) == 12
    assert snap.nodes["hv3"].memory_free_mib >= 0

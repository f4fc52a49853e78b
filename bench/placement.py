"""Placement decision time: watched view vs. reading each node from ZooKeeper; the what-if of a node's failure
and the cluster-wide N+1 check.

10, 100 and 1,000 nodes with 20 VMs per node, all in a real ZooKeeper. The VM
has no node limit, so every node is scored. Targets: <= 1 ms a decision at 1,000
nodes from the view, and >= 100x faster than the node-by-node reads.

    .venv/bin/python bench/placement.py          (or: make bench)
"""

import os
import random
import sys
import uuid

sys.path.insert(0, os.path.dirname(__file__))

from common import emit, median_seconds, table  # noqa: E402

from pvccore.demo.zookeeper import LocalZooKeeper  # noqa: E402
from pvccore.domain.models import VM, Cluster, Node, VMMeta  # noqa: E402
from pvccore.domain.placement import place  # noqa: E402
from pvccore.domain.whatif import n_plus_one, plan_recovery  # noqa: E402
from pvccore.plugins import load_plugins  # noqa: E402
from pvccore.zk.store import Store, delete_tree  # noqa: E402
from pvccore.zk.view import ClusterView  # noqa: E402

VMS_PER_NODE = 20


def populate(store: Store, nodes: int) -> None:
    rnd = random.Random(nodes)
    pending = []
    for i in range(nodes):
        name = f"hv{i:04d}"
        vms = [f"{name}-vm{j:02d}" for j in range(VMS_PER_NODE)]
        node = Node(name=name, daemon_state="run", domain_state="ready", memory_total_mib=262144,
                    memory_free_mib=rnd.randrange(16384, 200000), memory_used_mib=62144,
                    memory_provisioned_mib=rnd.randrange(40000, 240000), cpu_count=64,
                    load_1m=rnd.random() * 16, vcpus_allocated=rnd.randrange(20, 120),
                    vm_count=VMS_PER_NODE, running_vms=tuple(vms))
        pending.append(store.client.create_async(store.paths.node(name), node.to_json()))
        for vm in vms:
            doc = VM(name=vm, uuid=str(uuid.uuid4()), memory_mib=2048, vcpus=2, state="start", node=name)
            pending.append(store.client.create_async(store.paths.vm(vm), doc.to_json()))
        if len(pending) > 2000:
            for p in pending:
                p.get()
            pending.clear()
    for p in pending:
        p.get()


def decide_from_zookeeper(store: Store, vm_name: str, selectors) -> str | None:
    """What a daemon without the view would do: read the VM, the config and every node."""
    vm = store.get_vm(vm_name)
    cluster = Cluster.build(store.list_nodes(), [vm], store.get_config())
    return place(vm, cluster, selectors).target


def main() -> None:
    selectors = load_plugins().selectors
    with LocalZooKeeper() as zk:
        for nodes in (10, 100, 1000):
            store = Store.connect(zk.hosts, f"/bench-placement-{nodes}")
            populate(store, nodes)
            probe = VM(name="probe", uuid="p", memory_mib=4096, vcpus=4, meta=VMMeta(node_selector="mem"))
            store.create_vm(probe, "<domain/>")
            view = ClusterView(store.connection, store.paths).start(timeout=120)

            def from_view():
                return place(probe, view.snapshot(), selectors).target

            assert from_view() == decide_from_zookeeper(store, "probe", selectors)  # same decision
            from_view()  # warm
            t_view = median_seconds(from_view, 200)
            t_ops = median_seconds(lambda: place(probe, view.placement_snapshot(), selectors).target, 200)
            t_zk = median_seconds(lambda: decide_from_zookeeper(store, "probe", selectors),
                                  20 if nodes < 1000 else 5)
            emit(f"placement_ms_{nodes}_nodes", t_view * 1000, "ms", "from the watched view")
            emit(f"placement_pending_ms_{nodes}_nodes", t_ops * 1000, "ms",
                 "from the view, with VMs not yet in keepalives counted (cached)")
            emit(f"placement_zk_ms_{nodes}_nodes", t_zk * 1000, "ms", "reading each node from ZooKeeper")
            emit(f"placement_speedup_{nodes}_nodes", t_zk / t_view, "x")
            snap = view.placement_snapshot()
            t_plan = median_seconds(lambda: plan_recovery(snap, "hv0000", selectors), 20 if nodes < 1000 else 3)
            t_n1 = median_seconds(lambda: n_plus_one(snap, selectors), 3 if nodes < 1000 else 1)
            emit(f"what_if_fail_ms_{nodes}_nodes", t_plan * 1000, "ms",
                 f"one node's recovery plan ({VMS_PER_NODE} VMs placed in turn)")
            emit(f"n_plus_one_ms_{nodes}_nodes", t_n1 * 1000, "ms", "every node's recovery plan")
            view.stop()
            delete_tree(store.client, store.paths.root)
            store.close()
    table(f"placement decision, {VMS_PER_NODE} VMs per node (median)")


if __name__ == "__main__":
    main()

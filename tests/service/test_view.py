"""The watched cluster view: loads, follows changes and deletions, and places with no ZooKeeper reads."""

from dataclasses import replace

from pvccore.domain.models import VM, VMMeta
from pvccore.domain.placement import place
from pvccore.zk.view import ClusterView
from tests.conftest import make_node


def test_view_loads_existing_state_and_follows_changes(store):
    for name, free in (("hv1", 1000), ("hv2", 3000)):
        store.create_node(make_node(name, memory_free_mib=free))
    store.create_vm(VM(name="web1", uuid="u", memory_mib=512, vcpus=1), "<domain/>")
    view = ClusterView(store.connection, store.paths).start()
    try:
        snap = view.snapshot()
        assert list(snap.nodes) == ["hv1", "hv2"] and list(snap.vms) == ["web1"]

        store.update_node("hv1", lambda n: replace(n, memory_free_mib=5000))
        assert view.wait_for(lambda c: c.nodes["hv1"].memory_free_mib == 5000, timeout=5)

        store.create_node(make_node("hv0"))
        assert view.wait_for(lambda c: list(c.nodes) == ["hv0", "hv1", "hv2"], timeout=5)

        store.update_config(lambda c: c.updated({"default_selector": "vms"}))
        assert view.wait_for(lambda c: c.config.default_selector == "vms", timeout=5)

        store.delete_vm("web1")
        assert view.wait_for(lambda c: "web1" not in c.vms, timeout=5)
        # re-created under the same name: seen again
        store.create_vm(VM(name="web1", uuid="u2", memory_mib=512, vcpus=1), "<domain/>")
        assert view.wait_for(lambda c: "web1" in c.vms and c.vms["web1"].uuid == "u2", timeout=5)
    finally:
        view.stop()


def test_snapshot_is_cached_until_something_changes(store):
    store.create_node(make_node("hv1"))
    view = ClusterView(store.connection, store.paths).start()
    try:
        a, b = view.snapshot(), view.snapshot()
        assert a.nodes is b.nodes and a.vms is b.vms
        store.update_node("hv1", lambda n: replace(n, load_1m=2.0))
        assert view.wait_for(lambda c: c.nodes["hv1"].load_1m == 2.0, timeout=5)
        assert view.snapshot().nodes is not a.nodes and view.snapshot().vms is a.vms
    finally:
        view.stop()


def test_node_leaving_ready_changes_the_decision(store, plugins):
    store.create_node(make_node("hv1", memory_free_mib=9000))
    store.create_node(make_node("hv2", memory_free_mib=4000))
    vm = VM(name="db", uuid="u", memory_mib=1024, vcpus=1, meta=VMMeta(node_limit=("hv1", "hv2")))
    view = ClusterView(store.connection, store.paths).start()
    try:
        assert place(vm, view.snapshot(), plugins.selectors).target == "hv1"
        store.update_node("hv1", lambda n: replace(n, domain_state="flush"))
        assert view.wait_for(lambda c: c.nodes["hv1"].domain_state == "flush", timeout=5)
        result = place(vm, view.snapshot(), plugins.selectors)
        assert result.target == "hv2" and result.excluded == {"hv1": "domain state is flush"}
    finally:
        view.stop()


def test_decision_reads_no_zookeeper(store, plugins, zk_server):
    """With the ZooKeeper connection stopped, placement still works from the view."""
    from pvccore.zk.store import Store

    own = Store.connect(zk_server.hosts, store.paths.root)
    for i in range(30):
        store.create_node(make_node(f"hv{i:02d}", vm_count=i))
    view = ClusterView(own.connection, own.paths).start()
    own.client.stop()
    try:
        vm = VM(name="x", uuid="u", memory_mib=1, vcpus=1, meta=VMMeta(node_selector="vms"))
        assert place(vm, view.snapshot(), plugins.selectors).target == "hv00"
    finally:
        view.stop()
        own.client.close()


def test_xml_cache_follows_changes_from_another_writer(store, zk_server):
    from pvccore.zk.store import Store

    store.create_vm(VM(name="x1", uuid="u", memory_mib=1, vcpus=1), "<domain>one</domain>")
    view = ClusterView(store.connection, store.paths).start()
    other = Store.connect(zk_server.hosts, store.paths.root)
    try:
        assert view.vm_xml("x1") == "<domain>one</domain>"
        other.client.set(other.paths.vm_xml("x1"), b"<domain>two</domain>")  # another process writes
        assert view.wait_until(lambda: view.vm_xml("x1") == "<domain>two</domain>", 5)
        assert view.vm_xml("nope") is None
    finally:
        other.close()
        view.stop()

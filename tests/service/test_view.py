"""The watched cluster view: loads, follows changes and deletions, and places with no ZooKeeper reads."""

from dataclasses import replace

import pytest

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


def test_a_view_that_follows_liveness_dates_nodes_by_their_liveness_record(store):
    """Liveness records (written by the node with every keepalive) date a node for the coordinators' views and for
    Store.get_node alike; a view that does not follow them sees the document's date. A record that goes back in
    time (the node's clock stepped back) still counts as a keepalive; another writer's change to the document
    does not re-date the node, and refuses the node's next liveness-only write until it answers."""
    store.create_node(make_node("hv1", keepalive=1000.0))
    follows = ClusterView(store.connection, store.paths).start()
    blind = ClusterView(store.connection, store.paths, liveness=False).start()
    try:
        assert follows.follows_liveness and not blind.follows_liveness
        assert not store.write_keepalive("hv1", 1001.0)  # this store never published hv1: nothing written
        store.publish_node("hv1", lambda n: replace(n, keepalive=1005.0, load_1m=1.0), 1005.0)
        assert follows.wait_for(lambda c: c.nodes["hv1"].keepalive == 1005.0 and c.nodes["hv1"].load_1m == 1.0, 5)
        assert blind.wait_for(lambda c: c.nodes["hv1"].load_1m == 1.0, timeout=5)
        assert store.write_keepalive("hv1", 1006.0)
        assert follows.wait_for(lambda c: c.nodes["hv1"].keepalive == 1006.0, timeout=5)
        assert store.get_node("hv1").keepalive == 1006.0
        assert store.write_keepalive("hv1", 900.0)  # the node's clock stepped back
        assert follows.wait_for(lambda c: c.nodes["hv1"].keepalive == 900.0, timeout=5)
        assert store.get_node("hv1").keepalive == 900.0
        # the primary declares it dead: the document's old date does not count, and the node must answer
        store.update_node("hv1", lambda n: replace(n, daemon_state="dead"))
        assert follows.wait_for(lambda c: c.nodes["hv1"].daemon_state == "dead", timeout=5)
        assert follows.snapshot().nodes["hv1"].keepalive == 900.0 and store.get_node("hv1").keepalive == 900.0
        assert blind.wait_for(lambda c: c.nodes["hv1"].daemon_state == "dead", timeout=5)
        assert blind.snapshot().nodes["hv1"].keepalive == 1005.0
        assert not store.write_keepalive("hv1", 901.0)
        store.publish_node("hv1", lambda n: replace(n, daemon_state="run", keepalive=902.0), 902.0)
        assert store.write_keepalive("hv1", 903.0)
        assert follows.wait_for(lambda c: c.nodes["hv1"].keepalive == 903.0 and c.nodes["hv1"].daemon_state == "run",
                                timeout=5)
        # an unreadable record: the document's date, for the view and the store alike
        store.client.set(store.paths.node_keepalive("hv1"), b'{"keepalive": NaN}')
        assert follows.wait_for(lambda c: c.nodes["hv1"].keepalive == 902.0, timeout=5)
        assert store.get_node("hv1").keepalive == 902.0
    finally:
        follows.stop()
        blind.stop()


def test_a_node_deleted_and_created_again_is_followed_afresh(store):
    store.create_node(make_node("hv1"))
    store.publish_node("hv1", lambda n: replace(n, keepalive=50.0), 50.0)
    view = ClusterView(store.connection, store.paths).start()
    try:
        assert view.wait_for(lambda c: c.nodes["hv1"].keepalive == 50.0, timeout=5)
        store.client.delete(store.paths.node("hv1"), recursive=True)
        assert view.wait_for(lambda c: "hv1" not in c.nodes, timeout=5)
        store.create_node(make_node("hv1", keepalive=10.0))
        assert view.wait_for(lambda c: "hv1" in c.nodes and c.nodes["hv1"].keepalive == 10.0, timeout=5)
        store.publish_node("hv1", lambda n: n, 11.0)
        assert view.wait_for(lambda c: c.nodes["hv1"].keepalive == 11.0, timeout=5)
    finally:
        view.stop()


def test_a_view_scoped_to_a_node_holds_its_node_and_the_vms_indexed_under_it(store):
    """What a node daemon that is not a coordinator watches: its own document and the VMs it acts on (where
    they are, and both ends of their migrations), kept by the index the store writes with every VM."""
    from pvccore.domain.states import MigrationKind
    from pvccore.domain.transitions import migration_done, migration_request

    for name in ("hv1", "hv2", "hv3"):
        store.create_node(make_node(name))
    for name, node in (("a1", "hv1"), ("a2", "hv1"), ("b1", "hv2")):
        store.create_vm(VM(name=name, uuid=name, memory_mib=512, vcpus=1, state="start", node=node), "<domain/>")
    store.client.ensure_path(store.paths.node_placed("hv3"))
    store.client.create(store.paths.node_placed("hv3") + "/not a name!")  # made by hand: ignored, not fatal
    hv1 = ClusterView(store.connection, store.paths, liveness=False, scope="hv1").start()
    hv3 = ClusterView(store.connection, store.paths, liveness=False, scope="hv3").start()
    try:
        assert hv1.scope == "hv1" and list(hv1.snapshot().nodes) == ["hv1"]
        assert sorted(hv1.snapshot().vms) == ["a1", "a2"] and hv3.snapshot().vms == {}
        with pytest.raises(RuntimeError):
            hv1.placement_snapshot()
        # a migration of a1 to hv3: both ends hold it while it runs, then only its new node
        store.update_vm("a1", lambda v: migration_request(v, MigrationKind.MOVE, "hv3"))
        assert hv3.wait_for(lambda c: "a1" in c.vms and c.vms["a1"].migration is not None, timeout=5)
        assert hv1.wait_for(lambda c: c.vms["a1"].migration is not None, timeout=5)
        store.update_vm("a1", migration_done)
        assert hv1.wait_for(lambda c: "a1" not in c.vms, timeout=5)
        assert hv3.wait_for(lambda c: "a1" in c.vms and c.vms["a1"].node == "hv3", timeout=5)
        assert sorted(store.client.get_children(store.paths.node_placed("hv1"))) == ["a2"]
        # a VM deleted leaves its node's view and the index
        store.delete_vm("a2")
        assert hv1.wait_for(lambda c: c.vms == {}, timeout=5)
        assert store.client.get_children(store.paths.node_placed("hv1")) == []
        # another node's document changes: the scoped view is not told (it has no watch there)
        store.update_node("hv2", lambda n: replace(n, load_1m=7.0))
        store.update_node("hv1", lambda n: replace(n, load_1m=3.0))
        assert hv1.wait_for(lambda c: c.nodes["hv1"].load_1m == 3.0, timeout=5)
        assert list(hv1.snapshot().nodes) == ["hv1"]
    finally:
        hv1.stop()
        hv3.stop()


def test_the_index_heals_what_was_written_around_it_and_never_loses_a_vm(store):
    """A VM document written around the store (by an older version, or by hand) has no index entry: the primary's
    index_vms adds what is missing. An entry that is already there, or already gone, does not stop the next
    write of the VM."""
    store.create_node(make_node("hv1"))
    store.create_node(make_node("hv2"))
    store.client.create(store.paths.vm("legacy"), VM(name="legacy", uuid="l", memory_mib=512, vcpus=1,
                                                     node="hv1").to_json())
    store.client.create(store.paths.vm_xml("legacy"), b"<domain/>")
    assert not store.client.exists(store.paths.placed_vm("hv1", "legacy"))
    vms = store.list_vms()
    assert store.index_vms(vms) == 1 and store.index_vms(vms) == 0
    assert store.client.exists(store.paths.placed_vm("hv1", "legacy"))
    # a stray entry where the next write creates one, and none where it deletes one: both writes go through
    store.client.ensure_path(store.paths.placed_vm("hv2", "legacy"))
    store.client.delete(store.paths.placed_vm("hv1", "legacy"))
    store.update_vm("legacy", lambda v: replace(v, node="hv2"))
    assert store.get_vm("legacy").node == "hv2"
    assert store.client.get_children(store.paths.node_placed("hv2")) == ["legacy"]
    # a node never registered gets its index parent with the first VM sent there
    store.update_vm("legacy", lambda v: replace(v, node="hv9"))
    assert store.client.get_children(store.paths.node_placed("hv9")) == ["legacy"]


def test_caught_up_holds_every_change_committed_before_it_by_any_session(store, zk_server):
    """What a listing after a change made through another API worker relies on."""
    from pvccore.zk.store import Store

    view = ClusterView(store.connection, store.paths).start()
    other = Store.connect(zk_server.hosts, store.paths.root)
    try:
        for i in range(20):  # each time at once after the other session's write returned: no waiting in between
            other.create_vm(VM(name=f"c{i}", uuid=f"u{i}", memory_mib=1, vcpus=1), "<domain/>")
            assert view.caught_up(5) and f"c{i}" in view.snapshot().vms
    finally:
        other.close()
        view.stop()

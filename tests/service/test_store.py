"""The ZooKeeper store against a real server: CAS updates, transactions, locks, isolation by root."""

import threading
from dataclasses import replace

import pytest

from pvccore.errors import ConflictError, LockTimeout, NotFoundError
from pvccore.domain.models import VM, ClusterConfig, Node, VMMeta
from pvccore.zk.store import Store, delete_tree


def test_layout_and_default_config(store):
    for path in store.paths.containers():
        assert store.client.exists(path)
    assert store.get_config() == ClusterConfig()


def test_roots_are_isolated(zk_server, store):
    other = Store.connect(zk_server.hosts, store.paths.root + "-other")
    try:
        store.create_node(Node("hv1"))
        assert other.node_names() == []
    finally:
        delete_tree(other.client, other.paths.root)
        other.close()


def test_vm_create_is_atomic_and_unique(store):
    vm = VM(name="web1", uuid="u1", memory_mib=512, vcpus=1, meta=VMMeta(node_limit=("hv1",)))
    store.create_vm(vm, "<domain/>")
    assert store.get_vm("web1") == vm and store.get_vm_xml("web1") == "<domain/>"
    with pytest.raises(ConflictError, match="already exists"):
        store.create_vm(vm, "<domain/>")
    with pytest.raises(NotFoundError):
        store.get_vm("nope")


def test_concurrent_updates_are_never_lost(store):
    """20 threads each add their name to a node's running list: all 20 survive (CAS + retry)."""
    store.create_node(Node("hv1"))
    names = [f"vm{i}" for i in range(20)]
    barrier = threading.Barrier(len(names))

    def add(name):
        barrier.wait()
        store.update_node("hv1", lambda n: replace(n, running_vms=n.running_vms + (name,)))

    threads = [threading.Thread(target=add, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(store.get_node("hv1").running_vms) == sorted(names)


def test_update_that_keeps_losing_raises(store, monkeypatch):
    store.create_node(Node("hv1"))
    bump = iter(range(1000))

    def meddle(node):
        # Someone else writes between our read and our write, every time.
        store.client.set(store.paths.node("hv1"), replace(node, vm_count=next(bump)).to_json())
        return replace(node, load_1m=9.0)

    with pytest.raises(ConflictError, match="gave up"):
        store.update_node("hv1", meddle)
    assert store.get_node("hv1").load_1m == 0.0


def test_transaction_check_failure_changes_nothing(store):
    store.create_vm(VM(name="a", uuid="u", memory_mib=1, vcpus=1), "<x/>")
    stale = store.client.get(store.paths.vm("a"))[1].version
    store.update_vm("a", lambda v: replace(v, state="start"))
    with pytest.raises(ConflictError, match="check"):
        store.transaction().check(store.paths.vm("a"), stale).set(store.paths.vm_xml("a"), b"<y/>").commit()
    assert store.get_vm_xml("a") == "<x/>"


def test_delete_vm_guarded_by_check(store):
    store.create_vm(VM(name="a", uuid="u", memory_mib=1, vcpus=1, state="start"), "<x/>")

    def refuse_running(vm):
        if vm.state == "start":
            raise ConflictError("VM 'a' is running", "state")

    with pytest.raises(ConflictError, match="running"):
        store.delete_vm("a", check=refuse_running)
    assert store.get_vm("a").state == "start"
    store.update_vm("a", lambda v: replace(v, state="stop"))
    store.delete_vm("a", check=refuse_running)
    assert store.vm_names() == []


def test_exclusive_lock_times_out_with_error(store, zk_server):
    other = Store.connect(zk_server.hosts, store.paths.root)
    try:
        with store.lock("fence", timeout=5, identifier="hv1"):
            assert store.lock_contenders("fence") == ["hv1"]
            with pytest.raises(LockTimeout, match="exclusive lock .*/locks/fence"):
                with other.lock("fence", timeout=0.3):
                    pass
        with other.lock("fence", timeout=5):  # released on exit
            pass
    finally:
        other.close()


def test_read_locks_share_write_lock_excludes(store, zk_server):
    other = Store.connect(zk_server.hosts, store.paths.root)
    try:
        with store.read_lock("handover", timeout=5):
            with other.read_lock("handover", timeout=5):
                pass  # two readers at once
            with pytest.raises(LockTimeout):
                with other.write_lock("handover", timeout=0.3):
                    pass
        with store.write_lock("handover", timeout=5):
            with pytest.raises(LockTimeout, match="read lock"):
                with other.read_lock("handover", timeout=0.3):
                    pass
    finally:
        other.close()

"""Primary election and the phased handover, with real ZooKeeper and three coordinator daemons.

(Floating IPs in network namespaces, with pings, are in test_floating_ip.py.)
"""

import pytest

from pvccore.errors import ConflictError
from pvccore.demo.cluster import LocalCluster
from pvccore.operations import Operations
from pvccore.plugins import load_plugins
from pvccore.zk.store import Store, delete_tree
from pvccore.zk.session import Session
from tests.conftest import Events

T = 30
NODES = ("hv1", "hv2", "hv3")


@pytest.fixture
def coordinators(zk_server, zk_root, recorder_site, tmp_path):
    """Start three coordinator daemons; extra environment (e.g. a slow phase) per test."""
    started = []

    def start(**env):
        events = tmp_path / "events.jsonl"
        local = LocalCluster(zk_server.hosts, zk_root, workdir=str(tmp_path), flags=(
            "--keepalive-interval", "0.5", "--handover-timeout", "10", "--shutdown-timeout", "5"),
            node_flags={n: ("--coordinator",) for n in NODES},
            env={"PYTHONPATH": str(recorder_site), "PVC_TEST_EVENTS": str(events),
                 "PVC_PRIMARY_FILE": str(tmp_path / "{node}.primary"), **env})
        store = Store.connect(zk_server.hosts, zk_root)
        local.start()
        view = Session.on(store).view
        ops = Operations(store, view, load_plugins(disabled=()))
        ops.local, ops.events, ops.dir = local, Events(events), tmp_path
        started.append(ops)
        assert view.wait_for(lambda c: c.primary is not None and c.nodes[c.primary.node].coordinator_state
                             == "primary", T), "no primary elected"
        return ops

    yield start
    for ops in started:
        ops.view.stop()
        ops.local.stop()
        delete_tree(ops.store.client, zk_root)
        ops.store.close()


def primaries(c) -> list[str]:
    return [n.name for n in c.nodes.values() if n.coordinator_state == "primary"]


def one_primary(ops, name: str) -> bool:
    return ops.view.wait_for(lambda c: c.primary is not None and c.primary.node == name and primaries(c) == [name]
                             and all(n.coordinator_state == "secondary" for n in c.nodes.values() if n.name != name),
                             T)


def primary_files(ops) -> list[str]:
    return sorted(p.name.split(".")[0] for p in ops.dir.glob("*.primary"))


def test_exactly_one_is_elected(coordinators):
    ops = coordinators()
    first = ops.view.snapshot().primary.node
    assert one_primary(ops, first)
    assert ops.view.snapshot().primary.epoch == 1
    assert ops.events.wait(1, "handover", phase="start-services", node=first)[0]["old_primary"] is None
    assert primary_files(ops) == [first]


def test_planned_handover_runs_the_phases_in_order(coordinators):
    ops = coordinators()
    old = ops.view.snapshot().primary.node
    new = next(n for n in NODES if n != old)
    most = []
    h = ops.request_primary(new)
    assert ops.view.wait_for(lambda c: most.append(len(primaries(c))) or (c.handover.id == h.id and c.handover.phase
                                                                          == "done"), T)
    assert max(most) <= 1  # never two primaries, at any change the view saw
    assert one_primary(ops, new) and ops.view.snapshot().primary.epoch == 2
    steps = [(e["phase"], e["role"], e["node"]) for e in ops.events.wait(5, "handover")
             if e["old_primary"] == old and e["new_primary"] == new]
    assert steps == [("stop-services", "relinquish", old), ("move-ips", "takeover", new),
                     ("move-ips", "relinquish", old), ("start-services", "takeover", new)]
    assert primary_files(ops) == [new]
    states = [(e["old"], e["new"]) for e in ops.events.all("node_state", node=old, kind="coordinator")]
    assert ("primary", "relinquish") in states and ("relinquish", "secondary") in states
    states = [(e["old"], e["new"]) for e in ops.events.all("node_state", node=new, kind="coordinator")]
    assert ("secondary", "takeover") in states and ("takeover", "primary") in states

    back = ops.request_secondary(new)  # and away again
    assert ops.view.wait_for(lambda c: c.handover.id == back.id and c.handover.phase == "done", T)
    assert one_primary(ops, back.target) and back.target != new


def test_locks_are_held_by_the_side_doing_the_step(coordinators):
    ops = coordinators(PVC_TEST_SLOW_PHASE="move-ips:takeover:2")
    old = ops.view.snapshot().primary.node
    new = next(n for n in NODES if n != old)
    h = ops.request_primary(new)
    assert ops.events.wait(1, "slow", node=new)  # the new primary is adding IPs, holding W(add)
    add = ops.store.lock_contenders(f"handover/{h.id}/add", "write")
    release = ops.store.lock_contenders(f"handover/{h.id}/release", "write")
    assert add[0] == f"{new}:write"
    assert release[0] == f"{old}:write"  # the old primary still owes the IP removal
    assert ops.view.wait_for(lambda c: c.handover.phase == "done", T) and one_primary(ops, new)


def test_refused_requests(coordinators):
    ops = coordinators()
    old = ops.view.snapshot().primary.node
    with pytest.raises(ConflictError, match="already primary"):
        ops.request_primary(old)
    with pytest.raises(ConflictError, match="is not primary"):
        ops.request_secondary(next(n for n in NODES if n != old))
    h = ops.request_primary(next(n for n in NODES if n != old))
    with pytest.raises(ConflictError, match="under way"):
        ops.request_primary(next(n for n in NODES if n not in (old, h.target)))


def test_clean_stop_of_the_primary_hands_over_first(coordinators):
    ops = coordinators()
    old = ops.view.snapshot().primary.node
    assert ops.local.stop_node(old) == 0
    assert ops.view.wait_for(lambda c: c.primary.node != old and len(primaries(c)) == 1, T)
    new = ops.view.snapshot().primary.node
    assert ops.view.snapshot().handover.phase == "done" and one_primary(ops, new)
    assert primary_files(ops) == [new]


def test_taker_killed_mid_handover_leaves_the_old_primary(coordinators):
    ops = coordinators(PVC_TEST_SLOW_PHASE="move-ips:takeover:30")
    old = ops.view.snapshot().primary.node
    new = next(n for n in NODES if n != old)
    h = ops.request_primary(new)
    assert ops.events.wait(1, "slow", node=new)
    ops.local.kill(new)  # its locks go when its ZooKeeper session ends
    assert ops.view.wait_for(lambda c: c.handover.id == h.id and c.handover.phase == "failed", T)
    assert "without finishing" in ops.view.snapshot().handover.reason
    assert ops.view.wait_for(lambda c: c.primary.node == old and c.nodes[old].coordinator_state == "primary", T)
    assert primaries(ops.view.snapshot()) == [old]
    assert primary_files(ops) == [old]


def test_old_primary_killed_mid_handover_makes_no_second_primary(coordinators):
    ops = coordinators(PVC_TEST_SLOW_PHASE="stop-services:relinquish:30")
    old = ops.view.snapshot().primary.node
    new = next(n for n in NODES if n != old)
    h = ops.request_primary(new)
    assert ops.events.wait(1, "slow", node=old)
    ops.local.kill(old)
    assert ops.view.wait_for(lambda c: c.handover.id == h.id and c.handover.phase == "failed", T)
    snap = ops.view.snapshot()
    assert snap.primary.node == old  # the role stays with the dead node until it is fenced
    assert ops.view.wait_for(lambda c: c.nodes[new].coordinator_state == "secondary", T)
    assert [n for n in primaries(ops.view.snapshot()) if n != old] == []

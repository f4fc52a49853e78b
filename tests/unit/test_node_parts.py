"""The node daemon's parts against in-memory fakes (tests/unit/fakes.py): migration phases, flush and ready
ordering, fence escalation and back-off, election and handover phases, the self-fence, and the lifecycle
hooks each part fires. The same parts run with real ZooKeeper, libvirt and IPMI in the service and
cluster-in-a-box tiers.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from pvccore.domain.models import VM, ClusterConfig, FenceStatus, Handover, Node, VMMeta
from pvccore.domain.states import (CoordinatorState, DaemonState, DomainState, HandoverPhase, MigrationKind,
                                   VMState)
from pvccore.domain.transitions import migration_request, target_fenced
from pvccore.errors import ConflictError
from pvccore.hookspecs import Fencer, FenceResult
from pvccore.node import flush
from pvccore.node.context import Workers
from pvccore.node.coordinator import Coordinator
from pvccore.node.fencing import FenceMonitor
from pvccore.node.keepalive import FIGURES_REFRESH, Keepalive, moved
from pvccore.node.lifecycle import STRAY_RECHECK, VMLifecycle
from pvccore.node.migration import Migrations
from pvccore import hookimpl

from .fakes import FakeHypervisor, FakeNetwork, MemoryCluster, Recorder, node_context, plugins

T = 5.0  # seconds any one wait may take; every wait ends as soon as its condition holds


class FakeNode:
    """One node's lifecycle and migration parts on a fake hypervisor."""

    def __init__(self, cluster: MemoryCluster, name: str, plugin_set, live: bool = True, **cfg):
        self.name, self.cluster = name, cluster
        self.hv = FakeHypervisor(name, live=live)
        self.ctx = node_context(cluster, name, plugin_set, **cfg)
        self.workers = Workers(self.ctx)
        self.lifecycle = VMLifecycle(self.ctx, self.hv, self.workers, Migrations(self.ctx, self.hv, self.workers, live))
        cluster.add_node(Node(name, daemon_state=DaemonState.RUN, memory_total_mib=8192, memory_free_mib=8192,
                              cpu_count=8, live_migration=live, migration_uri=self.hv.uri))

    def reconcile(self) -> None:
        since = time.monotonic()
        self.lifecycle.reconcile(self.cluster.snapshot().vms, self.hv.domains(), since)

    def close(self) -> None:
        self.ctx.stopping.set()
        self.workers.join(T)


@pytest.fixture
def world():
    """A cluster, a recorder plugin, and a maker of nodes that are stopped after the test."""
    cluster, rec, made = MemoryCluster(), Recorder(), []

    def node(name, **kw):
        made.append(FakeNode(cluster, name, plugins(rec), **kw))
        return made[-1]

    yield cluster, rec, node
    for n in made:
        n.close()


def drive(cluster: MemoryCluster, nodes, until, timeout: float = T) -> bool:
    """Reconcile every node after each change, as their daemons would, until ``until(snapshot)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        gen = cluster.generation
        for n in nodes:
            n.reconcile()
        if until(cluster.snapshot()):
            return True
        if time.monotonic() > deadline:
            return False
        cluster.wait_changed(gen, 0.05)


def running_vm(cluster, node, name, memory=512, **meta) -> VM:
    node.hv.run(name, memory, 1)
    return cluster.add_vm(VM(name, f"uuid-{name}", memory, 1, state=VMState.START, node=node.name,
                             meta=VMMeta().updated(meta)))


def phases(cluster, vm) -> list[str]:
    """Each migration phase the VM document went through, in order, without repeats."""
    out = []
    for doc in cluster.written("vm", vm):
        phase = doc.migration.phase if doc.migration else None
        if phase and (not out or out[-1] != phase):
            out.append(phase)
    return out


def settled(name):
    return lambda c: c.vms[name].migration is None and c.vms[name].state in (VMState.START, VMState.STOP)


# -- migration --------------------------------------------------------------------------------------


def test_hook_pvc_migration_finished(world):
    """A live migration passes requested, prepare, ready, sent; only then does the VM's node change."""
    cluster, rec, node = world
    a, b = node("hv1"), node("hv2")
    running_vm(cluster, a, "web1", migration_max_downtime=250)
    cluster.update_vm("web1", lambda v: migration_request(v, MigrationKind.MIGRATE, "hv2"))
    assert drive(cluster, [a, b], settled("web1"))
    assert phases(cluster, "web1") == ["requested", "prepare", "ready", "sent"]
    assert a.hv.max_downtime == 250  # the VM's metadata reaches libvirt
    assert all(doc.node == "hv1" for doc in cluster.written("vm", "web1") if doc.migration is not None)
    vm = cluster.vms["web1"]
    assert (vm.node, vm.last_node, vm.state) == ("hv2", "hv1", "start")
    assert "web1" in b.hv.running and "web1" not in a.hv.running
    [done] = rec.of("pvc_migration_finished")
    assert (done["vm"], done["source"], done["target"], done["method"], done["ok"]) == ("web1", "hv1", "hv2", "live",
                                                                                         True)
    assert 0 <= done["seconds"] < T
    assert cluster.stats == {"migrations": 1}


def test_a_failed_live_migration_falls_back_to_shutdown_and_start(world):
    cluster, rec, node = world
    a, b = node("hv1"), node("hv2")
    a.hv.fail_migrate = "unsafe cache mode"
    running_vm(cluster, a, "web1")
    cluster.update_vm("web1", lambda v: migration_request(v, MigrationKind.MIGRATE, "hv2"))
    assert drive(cluster, [a, b], settled("web1"))
    assert phases(cluster, "web1") == ["requested", "prepare", "ready", "stopped"]
    assert cluster.vms["web1"].node == "hv2" and "web1" in b.hv.running
    assert ("undefine", "web1") in a.hv.calls and rec.of("pvc_migration_finished")[0]["method"] == "shutdown"


def test_a_target_that_cannot_start_the_vm_fails_it_and_the_source_starts_it_again(world):
    cluster, rec, node = world
    a, b = node("hv1"), node("hv2")
    b.hv.fail_start["web1"] = "disk not found"
    running_vm(cluster, a, "web1", migration_method="shutdown")
    cluster.update_vm("web1", lambda v: migration_request(v, MigrationKind.MIGRATE, "hv2"))
    assert drive(cluster, [a, b], settled("web1"))
    assert phases(cluster, "web1") == ["requested", "prepare", "ready", "stopped", "failed"]
    vm = cluster.vms["web1"]
    assert (vm.node, vm.state) == ("hv1", "start") and "disk not found" in vm.reason
    assert "web1" in a.hv.running and "web1" not in b.hv.running
    assert [c["ok"] for c in rec.of("pvc_migration_finished")] == [False]


def test_a_target_not_accepting_vms_answers_failed_before_anything_is_sent(world):
    cluster, rec, node = world
    a, b = node("hv1"), node("hv2")
    set_domain(cluster, "hv2", DomainState.FLUSHED)
    running_vm(cluster, a, "web1")
    cluster.update_vm("web1", lambda v: migration_request(v, MigrationKind.MIGRATE, "hv2"))
    assert drive(cluster, [a, b], settled("web1"))
    assert phases(cluster, "web1") == ["requested", "prepare", "failed"]
    assert "migrate_live" not in [c for c, _ in a.hv.calls] and cluster.vms["web1"].node == "hv1"
    assert "not accepting VMs" in cluster.vms["web1"].reason


def test_live_only_to_a_node_that_cannot_receive_live_is_abandoned_and_the_vm_keeps_running(world):
    cluster, rec, node = world
    a, b = node("hv1"), node("hv2", live=False)
    running_vm(cluster, a, "web1")
    cluster.update_vm("web1", lambda v: migration_request(v, MigrationKind.MIGRATE, "hv2", force_live=True))
    assert drive(cluster, [a, b], settled("web1"))
    assert phases(cluster, "web1") == ["requested"]
    vm = cluster.vms["web1"]
    assert (vm.node, vm.state) == ("hv1", "start") and "cannot receive a live migration" in vm.reason
    assert "web1" in a.hv.running and a.hv.calls == []


# -- flush and ready ------------------------------------------------------------------------------------


def max_in_flight(cluster, source) -> int:
    """The most migrations away from ``source`` at one time, replayed from the write history."""
    moving, most = set(), 0
    for kind, name, doc in cluster.history:
        if kind != "vm":
            continue
        if doc.migration is not None and doc.migration.source == source:
            moving.add(name)
        else:
            moving.discard(name)
        most = max(most, len(moving))
    return most


def set_domain(cluster, node, state):
    cluster.update_node(node, lambda n: Node.from_dict({**n.to_dict(), "domain_state": state}))


def run_domain_work(work, ctx):
    t = threading.Thread(target=work, args=(ctx, ctx.name), daemon=True)
    t.start()
    return t


def test_flush_sends_at_most_flush_parallel_at_once_parks_what_cannot_move_and_says_flushed_last(world):
    cluster, rec, node = world
    a, b = node("hv1", flush_parallel=2), node("hv2")
    for i in range(5):
        running_vm(cluster, a, f"vm{i}")
    running_vm(cluster, a, "pinned", node_limit=["hv1"])
    set_domain(cluster, "hv1", DomainState.FLUSH)
    worker = run_domain_work(flush.run_flush, a.ctx)
    assert drive(cluster, [a, b], lambda c: c.nodes["hv1"].domain_state == DomainState.FLUSHED)
    worker.join(T)
    vms = cluster.snapshot().vms
    assert all(vms[f"vm{i}"].node == "hv2" and vms[f"vm{i}"].last_node == "hv1" for i in range(5))
    assert max_in_flight(cluster, "hv1") == 2
    pinned = vms["pinned"]
    assert (pinned.node, pinned.state, pinned.meta.node_autostart) == ("hv1", "stop", True)
    assert "outside the VM's node limit" in pinned.reason and "pinned" not in a.hv.running
    # "flushed" is written only after every VM left or was parked
    flushed_at = next(i for i, (k, n, d) in enumerate(cluster.history)
                      if k == "node" and n == "hv1" and d.domain_state == DomainState.FLUSHED)
    assert all(i < flushed_at for i, (k, n, d) in enumerate(cluster.history)
               if k == "vm" and d.migration is None and d.node == "hv2")

    set_domain(cluster, "hv1", DomainState.UNFLUSH)
    worker = run_domain_work(flush.run_unflush, a.ctx)
    assert drive(cluster, [a, b], lambda c: c.nodes["hv1"].domain_state == DomainState.READY)
    worker.join(T)
    vms = cluster.snapshot().vms
    assert all(vms[f"vm{i}"].node == "hv1" and vms[f"vm{i}"].last_node == "" for i in range(5))
    assert vms["pinned"].state == "start" and not vms["pinned"].meta.node_autostart
    assert drive(cluster, [a, b], lambda c: "pinned" in a.hv.running and all(f"vm{i}" in a.hv.running
                                                                               for i in range(5)))


def test_a_flush_that_is_cancelled_stops_at_its_next_step(world):
    cluster, rec, node = world
    a, b = node("hv1", flush_parallel=1), node("hv2")
    for i in range(3):
        running_vm(cluster, a, f"vm{i}")
    set_domain(cluster, "hv1", DomainState.FLUSH)
    worker = run_domain_work(flush.run_flush, a.ctx)
    assert cluster.wait_for(lambda c: any(v.migration for v in c.vms.values()), T)
    set_domain(cluster, "hv1", DomainState.READY)  # the operator changed their mind
    assert drive(cluster, [a, b], lambda c: all(v.migration is None for v in c.vms.values()))
    worker.join(T)
    assert not worker.is_alive() and cluster.nodes["hv1"].domain_state == DomainState.READY
    assert sum(v.node == "hv2" for v in cluster.vms.values()) == 1


class ScopedView:
    """A node's scoped view over a MemoryCluster (pvccore.zk.view): its node, and the VMs it acts on."""

    def __init__(self, cluster: MemoryCluster, scope: str):
        self.cluster, self.scope = cluster, scope

    def snapshot(self):
        snap = self.cluster.snapshot()
        return replace(snap, nodes={self.scope: snap.nodes[self.scope]},
                       vms={n: v for n, v in snap.vms.items() if self.scope in v.involved})


class CountingStore:
    """The cluster as a store, counting the VM documents read."""

    def __init__(self, cluster: MemoryCluster):
        self.cluster, self.reads = cluster, []

    def get_vm(self, name):
        self.reads.append(name)
        return self.cluster.get_vm(name)


def test_a_scoped_daemon_looks_up_the_domains_its_view_lacks_and_stops_a_copy_that_belongs_elsewhere(world):
    """Never two copies, with a view that holds only this node's VMs: a domain running here whose VM the view
    does not hold is read from the cluster, and stopped when it belongs elsewhere; a domain no VM has is left
    alone, and asked about again only after STRAY_RECHECK."""
    cluster, rec, node = world
    a, b = node("hv1"), node("hv2")
    running_vm(cluster, b, "web1")
    a.hv.run("web1")  # a copy here (left from before a recovery, say)
    a.hv.run("foreign")  # not a pvc VM
    running_vm(cluster, a, "mine")
    store = CountingStore(cluster)
    a.lifecycle.ctx = replace(a.ctx, view=ScopedView(cluster, "hv1"), store=store)
    snap = a.lifecycle.ctx.view.snapshot()
    assert set(snap.vms) == {"mine"}
    vms = a.lifecycle.with_strays(snap.vms, a.hv.domains())
    assert set(vms) == {"mine", "web1"} and vms["web1"].node == "hv2" and sorted(store.reads) == ["foreign", "web1"]
    a.lifecycle.reconcile(vms, a.hv.domains(), time.monotonic())
    a.workers.join(T)
    assert "web1" not in a.hv.running and "foreign" in a.hv.running and "mine" in a.hv.running
    store.reads.clear()
    assert set(a.lifecycle.with_strays(snap.vms, a.hv.domains())) == {"mine"} and store.reads == []
    a.lifecycle._unknown["foreign"] -= STRAY_RECHECK
    a.lifecycle.with_strays(snap.vms, a.hv.domains())
    assert store.reads == ["foreign"]


# -- fencing ----------------------------------------------------------------------------------------------


class Fencers:
    """Fencers named ``first`` and ``second`` whose answers a test sets; every call is kept.

    ``power`` gives a fencer a power check (``is_off``) answering that value (an exception is raised).
    """

    def __init__(self, first: bool, second: bool, power: dict | None = None):
        self.answers, self.calls = {"first": first, "second": second}, []
        self.power, self.looks = power or {}, []

    def _fence(self, name):
        def fence(node, params):
            self.calls.append((name, node))
            return FenceResult(self.answers[name], f"{name} says {'off' if self.answers[name] else 'no'}")
        return fence

    def _is_off(self, name):
        def is_off(node, params):
            self.looks.append((name, node))
            if isinstance(self.power[name], Exception):
                raise self.power[name]
            return self.power[name]
        return is_off if name in self.power else None

    @hookimpl
    def pvc_register_fencers(self):
        return [Fencer(n, "test", self._fence(n), public=frozenset({"host"}), is_off=self._is_off(n))
                for n in ("first", "second")]


def fence_world(first: bool, second: bool, power: dict | None = None, **config):
    cluster = MemoryCluster(ClusterConfig().updated(config))
    rec, fencers = Recorder(), Fencers(first, second, power)
    ps = plugins(rec, fencers)
    for name in ("hv1", "hv2", "hv3"):
        cluster.add_node(Node(name, daemon_state=DaemonState.RUN, keepalive=100.0, memory_total_mib=8192,
                              memory_free_mib=8192, cpu_count=8, keepalive_interval=1.0, session_timeout=4.0))
    cluster.fence_config["hv3"] = [{"fencer": "first", "params": {}}, {"fencer": "second", "params": {}}]
    cluster.claim_primary("hv1", lambda cur: True)
    for i in range(2):
        cluster.add_vm(VM(f"vm{i}", f"u{i}", 512, 1, state=VMState.START, node="hv3"))
    return cluster, rec, fencers, FakeTime(node_context(cluster, "hv1", ps, keepalive_interval=1.0))


class FakeTime:
    """A fence monitor on a clock the test sets: ``tick(t)`` is the monitor's look at time ``t``."""

    def __init__(self, ctx):
        self.now = 0.0
        self.monitor = FenceMonitor(ctx, serving=lambda: True, clock=lambda: self.now)

    def tick(self, now: float) -> None:
        self.now = now
        self.monitor.tick(now)


def keep_alive(cluster, *names):
    for name in names:
        cluster.update_node(name, lambda n: Node.from_dict({**n.to_dict(), "keepalive": n.keepalive + 1}))


def test_hook_pvc_node_fenced(world):
    """Silent past keepalive_limit: suspect; past fence_grace more: dead, fenced by the first fencer that confirms."""
    cluster, rec, fencers, monitor = fence_world(first=False, second=True)
    monitor.tick(0.0)
    for now in (1.0, 2.0, 3.0, 4.0):  # within keepalive_limit (3 s) + fence_grace (2 s): nothing happens
        keep_alive(cluster, "hv2")
        monitor.tick(now)
    assert cluster.nodes["hv3"].daemon_state == DaemonState.RUN and fencers.calls == []
    monitor.tick(5.5)  # suspect since 4 s of silence at the 4.0 tick... still within grace
    keep_alive(cluster, "hv2")
    monitor.tick(6.5)
    assert fencers.calls == [("first", "hv3"), ("second", "hv3")]
    assert cluster.nodes["hv3"].daemon_state == DaemonState.FENCED
    status = cluster.fencing["hv3"]
    assert status.state == "fenced" and status.message.startswith("#2 second")
    [fenced] = rec.of("pvc_node_fenced")
    assert fenced["node"] == "hv3" and fenced["result"].off
    assert [c["new"] for c in rec.of("pvc_node_state_changed")] == ["dead", "fenced"]
    assert cluster.stats == {"fences": 1}


def test_hook_pvc_node_recovered(world):
    cluster, rec, fencers, monitor = fence_world(first=True, second=False)
    cluster.add_vm(VM("pinned", "up", 512, 1, state=VMState.START, node="hv3", meta=VMMeta(node_limit=("hv3",))))
    monitor.tick(0.0)
    monitor.tick(4.0)
    monitor.tick(6.5)
    vms = cluster.snapshot().vms
    assert {vms["vm0"].node, vms["vm1"].node} <= {"hv1", "hv2"} and vms["vm0"].last_node == "hv3"
    assert (vms["pinned"].state, vms["pinned"].meta.node_autostart) == ("stop", True)
    [recovered] = rec.of("pvc_node_recovered")
    assert recovered["node"] == "hv3" and recovered["parked"] == ["pinned"]
    assert recovered["moved"] == {"vm0": vms["vm0"].node, "vm1": vms["vm1"].node}
    assert cluster.nodes["hv3"].domain_state == DomainState.FLUSHED


def test_failed_fencing_recovers_nothing_and_retries_with_a_doubling_back_off(world):
    cluster, rec, fencers, monitor = fence_world(first=False, second=False, fence_retry_max=4.0)
    monitor.tick(0.0)
    monitor.tick(4.0)
    attempts_at = []
    now = 6.5
    while now < 30:
        before = len(fencers.calls)
        keep_alive(cluster, "hv2")
        monitor.tick(now)
        if len(fencers.calls) > before:
            attempts_at.append(now)
        now += 0.5
    # the back-off doubles from 1 s up to fence_retry_max, counted from the end of each attempt
    gaps = [b - a for a, b in zip(attempts_at, attempts_at[1:])]
    assert gaps[:3] == [1.0, 2.0, 4.0] and len(gaps) >= 4 and set(gaps[2:]) == {4.0}, attempts_at
    status = cluster.fencing["hv3"]
    assert (status.state, status.attempts, status.retry_in) == ("failed", len(attempts_at), 4.0)
    assert cluster.nodes["hv3"].daemon_state == DaemonState.DEAD
    assert all(v.node == "hv3" and v.state == "start" for v in cluster.vms.values())  # nothing recovered
    assert rec.of("pvc_node_recovered") == []


def hv3_failed_then_back():
    """hv3's fencing failed under hv1 as primary (whose monitor is then gone); hv3 came back meanwhile."""
    cluster, rec, fencers, earlier = fence_world(first=False, second=False)
    earlier.tick(0.0)
    earlier.tick(4.0)
    keep_alive(cluster, "hv2")
    earlier.tick(6.5)
    assert cluster.fencing["hv3"].state == "failed"
    cluster.nodes["hv3"] = replace(cluster.nodes["hv3"], daemon_state=DaemonState.RUN)
    return cluster, rec, fencers


def test_a_failed_fencing_left_by_an_earlier_primary_is_cleared_once_the_node_speaks(world):
    """The primary that retried it is gone (restarted, or handed over); the node came back meanwhile. Its new
    primary clears the record (and so the fault and the cluster's "fencing failed" problem), fencing nothing."""
    cluster, rec, fencers = hv3_failed_then_back()
    calls = len(fencers.calls)
    later = FakeTime(node_context(cluster, "hv1", plugins(rec, fencers), keepalive_interval=1.0))
    later.tick(100.0)
    assert cluster.fencing["hv3"].state == "failed"  # a first look tells nothing: it may be as silent as before
    keep_alive(cluster, "hv3")
    later.tick(100.5)
    assert "hv3" not in cluster.fencing and len(fencers.calls) == calls


def test_a_primary_clears_a_failed_fencing_of_itself_left_by_an_earlier_primary(world):
    cluster, rec, fencers = hv3_failed_then_back()
    secondary = FakeTime(node_context(cluster, "hv3", plugins(rec, fencers), keepalive_interval=1.0))
    secondary.tick(100.0)
    assert cluster.fencing["hv3"].state == "failed"  # only the primary writes it
    cluster.claim_primary("hv3", lambda cur: True)  # the node came back and became primary
    secondary.tick(101.0)
    assert cluster.fencing["hv3"].state == "failed"  # its own keepalive not seen written yet
    keep_alive(cluster, "hv3")
    secondary.tick(101.5)
    assert "hv3" not in cluster.fencing
    cluster.fencing["hv3"] = FenceStatus(state="failed")
    secondary.tick(120.0)  # (its keepalive not written for 18.5 s: a thread of a stuck node)
    assert cluster.fencing["hv3"].state == "failed"


def test_maintenance_mode_reports_a_silent_node_fences_nothing_and_times_it_afresh_once_over(world):
    cluster, rec, fencers, monitor = fence_world(first=True, second=True, maintenance=True)
    monitor.tick(0.0)
    now = 0.0
    while now < 60:  # a minute of silence from hv3 in maintenance mode
        now += 0.5
        keep_alive(cluster, "hv2")
        monitor.tick(now)
    assert fencers.calls == [] and cluster.nodes["hv3"].daemon_state == DaemonState.RUN
    assert cluster.fencing["hv3"].state == "held" and all(v.node == "hv3" for v in cluster.vms.values())
    assert [w for w in cluster.history if w[0] == "fencing"] == [("fencing", "hv3", cluster.fencing["hv3"])]  # once
    cluster.config = cluster.config.updated({"maintenance": False})
    off = now
    while not fencers.calls:
        now += 0.5
        keep_alive(cluster, "hv2")
        monitor.tick(now)
        assert now < off + 30
    # timed from the end of maintenance: keepalive_limit (3 s) and fence_grace (2 s) after it, not at once
    assert now - off >= 5.0
    assert cluster.nodes["hv3"].daemon_state == DaemonState.FENCED and cluster.fencing["hv3"].state == "fenced"
    assert {v.node for v in cluster.vms.values()} <= {"hv1", "hv2"}


def test_a_node_that_speaks_again_in_maintenance_mode_loses_its_held_report(world):
    cluster, rec, fencers, monitor = fence_world(first=True, second=True, maintenance=True)
    monitor.tick(0.0)
    monitor.tick(4.0)
    assert cluster.fencing["hv3"].state == "held"
    keep_alive(cluster, "hv2", "hv3")
    monitor.tick(4.5)
    assert "hv3" not in cluster.fencing and fencers.calls == []


def test_maintenance_mode_disarms_the_self_fence():
    assert ClusterConfig().updated({"failed_fence": "recover"}).self_fence_armed
    assert not ClusterConfig().updated({"failed_fence": "recover", "maintenance": True}).self_fence_armed


def ticks_until(monitor, now: float, done, timeout: float = T) -> bool:
    """The monitor's looks at the same instant ``now`` until ``done()`` (its power check runs in a thread)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        monitor.tick(now)
        time.sleep(0.01)  # the check's thread: polled under a deadline
    return True


def test_a_suspect_node_reported_powered_off_is_fenced_without_the_saving_throw(world):
    """Power loss: once suspect (3 s of silence), its power is checked; reported off, it is fenced at once,
    2 s before the saving throw would have ended, by the fencers in order as always."""
    cluster, rec, fencers, monitor = fence_world(first=True, second=True, power={"second": True})
    monitor.tick(0.0)
    monitor.tick(2.5)
    assert fencers.looks == []  # not yet suspect: nobody looks
    assert ticks_until(monitor, 3.5, lambda: cluster.nodes["hv3"].daemon_state == DaemonState.FENCED)
    assert fencers.looks == [("second", "hv3")] and fencers.calls == [("first", "hv3")]
    assert {v.node for v in cluster.vms.values()} <= {"hv1", "hv2"}  # recovered
    assert [c["new"] for c in rec.of("pvc_node_state_changed")] == ["dead", "fenced"]


def test_a_suspect_node_reported_on_or_unknown_waits_out_the_saving_throw_and_is_looked_at_once(world):
    for power in ({"first": False}, {"first": RuntimeError("BMC bug")}, {}):
        cluster, rec, fencers, monitor = fence_world(first=True, second=False, power=power)
        monitor.tick(0.0)
        keep_alive(cluster, "hv2")
        monitor.tick(3.5)
        assert ticks_until(monitor, 3.5, lambda: len(fencers.looks) == len(power))
        for now in (3.6, 4.0, 4.5, 4.9):
            keep_alive(cluster, "hv2")
            monitor.tick(now)
        assert cluster.nodes["hv3"].daemon_state == DaemonState.RUN and fencers.calls == [], power
        assert len(fencers.looks) == len(power)  # once per silence
        monitor.tick(5.5)
        assert cluster.nodes["hv3"].daemon_state == DaemonState.FENCED, power


def test_a_power_look_that_cannot_read_the_fence_config_or_gets_no_true_answer_changes_nothing(world, monkeypatch):
    """Hostile or broken answers: ZooKeeper gone when the look reads the node's fence configuration, or a
    fencer answering a truthy non-True ("off", 1): none of them skips the saving throw."""
    for answer in ("off", 1, None):
        cluster, rec, fencers, monitor = fence_world(first=True, second=False, power={"first": answer})
        monitor.tick(0.0)
        monitor.tick(3.5)
        assert ticks_until(monitor, 3.5, lambda: len(fencers.looks) == 1)
        monitor.tick(4.9)
        assert cluster.nodes["hv3"].daemon_state == DaemonState.RUN and fencers.calls == [], answer
    cluster, rec, fencers, monitor = fence_world(first=True, second=False, power={"first": True})

    def gone(name):
        raise ConnectionError("ZooKeeper is not reachable")

    monkeypatch.setattr(cluster, "get_fence_config", gone)
    assert monitor.monitor.power_is_off("hv3") is False
    assert fencers.looks == []


def test_a_node_that_was_on_when_looked_at_is_looked_at_again_in_its_next_silence(world):
    cluster, rec, fencers, monitor = fence_world(first=True, second=False, power={"first": False})
    monitor.tick(0.0)
    assert ticks_until(monitor, 3.5, lambda: len(fencers.looks) == 1)
    keep_alive(cluster, "hv3", "hv2")  # it was only slow: it writes again
    monitor.tick(4.0)
    fencers.power["first"] = True  # then it loses its power
    keep_alive(cluster, "hv2")
    monitor.tick(6.0)
    assert ticks_until(monitor, 7.5, lambda: cluster.nodes["hv3"].daemon_state == DaemonState.FENCED)
    assert len(fencers.looks) == 2


def test_a_node_that_writes_again_is_forgotten_and_its_failed_status_cleared(world):
    cluster, rec, fencers, monitor = fence_world(first=False, second=False)
    monitor.tick(0.0)
    monitor.tick(4.0)
    monitor.tick(6.5)
    assert cluster.fencing["hv3"].state == "failed"
    cluster.update_node("hv3", lambda n: Node.from_dict({**n.to_dict(), "daemon_state": "run",
                                                         "keepalive": n.keepalive + 1}))
    monitor.tick(7.0)
    assert "hv3" not in cluster.fencing and cluster.nodes["hv3"].daemon_state == DaemonState.RUN


# -- election and handover -----------------------------------------------------------------------------------


def coordinators(names=("hv1", "hv2")):
    cluster, rec, net = MemoryCluster(), Recorder(), []
    ps = plugins(rec)
    coords = {}
    for name in names:
        cluster.add_node(Node(name, daemon_state=DaemonState.RUN, coordinator_state=CoordinatorState.SECONDARY))
        ctx = node_context(cluster, name, ps, coordinator=True, floating_ips=("198.18.0.250/24@lo",))
        coords[name] = Coordinator(ctx, network=FakeNetwork(name, net))
    return cluster, rec, net, coords


def run_coordinators(cluster, coords, until, timeout=T) -> bool:
    deadline = time.monotonic() + timeout
    while not until(cluster.snapshot()):
        if time.monotonic() > deadline:
            return False
        gen = cluster.generation
        for c in coords:
            c.reconcile(cluster.snapshot())
        cluster.wait_changed(gen, 0.05)
    for c in coords:
        c.join(T)
    return True


def test_election_makes_exactly_one_primary():
    cluster, rec, net, coords = coordinators()
    assert run_coordinators(cluster, coords.values(), lambda c: any(
        n.coordinator_state == CoordinatorState.PRIMARY for n in c.nodes.values()))
    primary = cluster.primary.node
    assert [c.serving for c in coords.values()].count(True) == 1 and coords[primary].serving
    assert cluster.primary.epoch == 1 and net == [("add", primary, "198.18.0.250/24@lo")]


def test_hook_pvc_handover_phase():
    """The phases in order; the new primary adds the IPs before the old one removes them; services stop on the
    old side before they start on the new one; the primary record changes only at the end."""
    cluster, rec, net, coords = coordinators()
    cluster.claim_primary("hv1", lambda cur: True)
    assert run_coordinators(cluster, coords.values(), lambda c: coords["hv1"].serving)
    net.clear()
    rec.calls.clear()
    cluster.start_handover(Handover.new("hv1", "hv2"))
    assert run_coordinators(cluster, coords.values(),
                            lambda c: c.handover.phase in (HandoverPhase.DONE, HandoverPhase.FAILED))
    assert [h.phase for h in cluster.written("handover", cluster.handover.id)] == [
        "requested", "relinquish-ready", "takeover-ready", "services-stopped", "ips-added", "ips-released", "done"]
    assert net == [("add", "hv2", "198.18.0.250/24@lo"), ("remove", "hv1", "198.18.0.250/24@lo")]
    calls = [(c["node"], c["role"], c["phase"]) for c in rec.of("pvc_handover_phase")]
    assert calls == [("hv1", "relinquish", "stop-services"), ("hv2", "takeover", "move-ips"),
                     ("hv1", "relinquish", "move-ips"), ("hv2", "takeover", "start-services")]
    assert all(c["old_primary"] == "hv1" and c["new_primary"] == "hv2" for c in rec.of("pvc_handover_phase"))
    assert (cluster.primary.node, cluster.primary.epoch) == ("hv2", 2)
    assert coords["hv2"].serving and not coords["hv1"].serving
    assert cluster.nodes["hv1"].coordinator_state == "secondary" and cluster.nodes["hv2"].coordinator_state == "primary"


def test_a_handover_whose_target_dies_fails_and_the_old_primary_keeps_the_role():
    cluster, rec, net, coords = coordinators()
    cluster.claim_primary("hv1", lambda cur: True)
    assert run_coordinators(cluster, [coords["hv1"]], lambda c: coords["hv1"].serving)
    cluster.start_handover(Handover.new("hv1", "hv2"))
    cluster.update_node("hv2", lambda n: Node.from_dict({**n.to_dict(), "daemon_state": "dead"}))
    assert run_coordinators(cluster, [coords["hv1"]], lambda c: c.handover.phase == HandoverPhase.FAILED)
    assert "hv2 is not running" in cluster.handover.reason
    assert cluster.primary.node == "hv1" and coords["hv1"].serving
    assert cluster.nodes["hv1"].coordinator_state == "primary"


# -- keepalive and self-fence ----------------------------------------------------------------------------------


def test_self_fence_stops_the_vms_only_when_armed_and_only_after_the_published_deadline():
    cluster = MemoryCluster(ClusterConfig(failed_fence="none"))
    cluster.add_node(Node("hv1", daemon_state=DaemonState.RUN))
    ctx = node_context(cluster, "hv1", plugins(), keepalive_interval=1.0)
    hv = FakeHypervisor("hv1")
    hv.run("web1")
    keepalive = Keepalive(ctx, hv, live=True)
    keepalive.publish(first=True)
    assert cluster.nodes["hv1"].self_fence_deadline == 0.0
    assert not keepalive.check_deadline(time.monotonic() + 3600) and "web1" in hv.running  # disarmed: never

    cluster.config = ClusterConfig().updated({"failed_fence": "recover", "self_fence_deadline": 10.0})
    keepalive.publish()
    assert cluster.nodes["hv1"].self_fence_deadline == 10.0
    now = time.monotonic()
    assert not keepalive.check_deadline(now + 9.0) and "web1" in hv.running
    assert keepalive.check_deadline(now + 10.5) and hv.running == {}
    keepalive.publish()  # back: the next keepalive re-arms, the VMs are not started again here
    assert not keepalive.self_fenced and hv.running == {}


def test_the_self_fence_resets_the_host_with_its_command_after_stopping_the_vms(tmp_path):
    cluster = MemoryCluster(ClusterConfig().updated({"failed_fence": "recover", "self_fence_deadline": 10.0}))
    cluster.add_node(Node("hv1", daemon_state=DaemonState.RUN))
    mark = tmp_path / "reset"
    ctx = node_context(cluster, "hv1", plugins(), keepalive_interval=1.0,
                       self_fence_command=f"echo $(ls {tmp_path}) > {mark}")
    hv = FakeHypervisor("hv1")
    hv.run("web1")
    keepalive = Keepalive(ctx, hv, live=True)
    keepalive.publish(first=True)
    assert not keepalive.check_deadline(time.monotonic() + 5.0) and not mark.exists()  # not before the deadline
    assert keepalive.check_deadline(time.monotonic() + 10.5)
    assert hv.running == {} and mark.exists()  # the VMs stopped, then the host reset


def published_node(interval: float):
    """A running node hv1 whose keepalive published once: (cluster, hypervisor, keepalive)."""
    cluster = MemoryCluster(ClusterConfig())
    cluster.add_node(Node("hv1", daemon_state=DaemonState.RUN))
    hv = FakeHypervisor("hv1")
    keepalive = Keepalive(node_context(cluster, "hv1", plugins(), keepalive_interval=interval), hv, live=True)
    keepalive.publish(first=True)
    return cluster, hv, keepalive


def test_a_keepalive_rewrites_the_node_document_only_when_something_in_it_moved():
    cluster, hv, keepalive = published_node(1.0)

    def written(action) -> list[str]:
        mark = len(cluster.history)
        action()
        return [kind for kind, _name, _value in cluster.history[mark:]]

    before = cluster.nodes["hv1"].keepalive
    assert written(keepalive.publish) == ["keepalive"]  # nothing moved: the liveness record only
    assert cluster.nodes["hv1"].keepalive > before
    hv.run("web1")
    keepalive.collect()
    assert written(keepalive.publish) == ["node"] and cluster.nodes["hv1"].running_vms == ("web1",)
    assert written(keepalive.publish) == ["keepalive"]
    cluster.config = ClusterConfig().updated({"failed_fence": "recover", "self_fence_deadline": 10.0})
    assert written(keepalive.publish) == ["node"] and cluster.nodes["hv1"].self_fence_deadline == 10.0
    cluster.update_node("hv1", lambda n: replace(n, daemon_state=DaemonState.DEAD))  # declared dead meanwhile
    assert written(keepalive.publish) == ["node"] and cluster.nodes["hv1"].daemon_state == DaemonState.RUN
    keepalive._doc_written -= FIGURES_REFRESH  # nothing moved for the refresh interval: rewritten anyway
    assert written(keepalive.publish) == ["node"]
    assert written(keepalive.publish) == ["keepalive"]


def test_figures_count_as_moved_by_their_step_not_by_every_wobble():
    base = {"load_1m": 1.0, "memory_free_mib": 8000, "memory_used_mib": 8384, "running_vms": ("a",), "cpu_count": 8}
    assert not moved(base, dict(base))
    assert moved(None, base) and moved(base, {**base, "extra": 1})
    assert not moved(base, {**base, "load_1m": 1.4}) and moved(base, {**base, "load_1m": 1.5})
    assert not moved({**base, "load_1m": 10.0}, {**base, "load_1m": 11.9})  # a fifth of 10
    assert moved({**base, "load_1m": 10.0}, {**base, "load_1m": 12.0})
    assert not moved(base, {**base, "memory_free_mib": 7900, "memory_used_mib": 8484})
    assert moved(base, {**base, "memory_free_mib": 7800})
    assert moved(base, {**base, "running_vms": ("a", "b")}) and moved(base, {**base, "cpu_count": 4})


def test_a_keepalive_never_waits_on_a_hypervisor_slow_to_answer():
    """libvirt stuck (twenty guests starting at once held every call of the daemon's connection): the
    keepalives go on with the last figures, and the figures catch up once it answers."""
    cluster, hv, keepalive = published_node(0.05)
    ctx = keepalive.ctx
    assert cluster.nodes["hv1"].running_vms == ()
    kick = threading.Event()
    collector = threading.Thread(target=keepalive.collect_loop, args=(kick,), daemon=True)
    collector.start()
    try:
        with hv.lock:  # every hypervisor call blocks from here on
            hv.running["web1"] = (512, 1)
            before = cluster.nodes["hv1"].keepalive
            for _ in range(3):
                done = threading.Thread(target=keepalive.publish, daemon=True)
                done.start()
                done.join(2.0)
                assert not done.is_alive(), "a keepalive waited on the hypervisor"
            assert cluster.nodes["hv1"].keepalive > before and cluster.nodes["hv1"].running_vms == ()
        assert kick.wait(5.0), "the figures were not read again once the hypervisor answered"
        keepalive.publish()
        assert cluster.nodes["hv1"].running_vms == ("web1",)
    finally:
        ctx.stopping.set()
        collector.join(5.0)


def test_hook_pvc_vm_state_changed(world):
    cluster, rec, node = world
    a = node("hv1")
    a.hv.fail_start["web1"] = "no such disk"
    cluster.add_vm(VM("web1", "u", 512, 1, state=VMState.START, node="hv1"))
    assert drive(cluster, [a], lambda c: c.vms["web1"].state == VMState.FAIL)
    a.reconcile()
    assert [(c["old"], c["new"]) for c in rec.of("pvc_vm_state_changed")] == [(None, "start"), ("start", "fail")]
    assert rec.of("pvc_vm_state_changed")[-1]["reason"] == "no such disk"


def test_hook_pvc_node_state_changed(world):
    cluster, rec, node = world
    a = node("hv1")
    a.lifecycle.announce_node(cluster.nodes["hv1"])
    set_domain(cluster, "hv1", DomainState.FLUSH)
    a.lifecycle.announce_node(cluster.nodes["hv1"])
    a.lifecycle.announce_node(cluster.nodes["hv1"])  # unchanged: nothing new
    assert [(c["kind"], c["old"], c["new"]) for c in rec.of("pvc_node_state_changed")] == [
        ("daemon", None, "run"), ("coordinator", None, "client"), ("domain", None, "ready"),
        ("domain", "ready", "flush")]


def test_a_stray_copy_is_removed_and_a_vm_that_stopped_on_its_own_is_started_again(world):
    cluster, rec, node = world
    a, b = node("hv1"), node("hv2")
    running_vm(cluster, a, "web1")
    b.hv.run("web1")  # a second copy, where ZooKeeper does not place it
    assert drive(cluster, [a, b], lambda c: "web1" not in b.hv.running)
    assert ("undefine", "web1") in b.hv.calls and "web1" in a.hv.running
    a.reconcile()  # seen running
    a.hv.destroy("web1")  # the guest died
    assert drive(cluster, [a, b], lambda c: "web1" in a.hv.running)
    assert "stopped unexpectedly" in cluster.vms["web1"].reason


def test_the_back_off_counts_from_the_end_of_a_slow_attempt(world):
    cluster, rec, fencers, clock = fence_world(first=False, second=False)
    slow = fencers._fence("first")

    def takes_three_seconds(node, params):
        clock.now += 3.0  # a BMC that times out
        return slow(node, params)

    fencers.answers["first"] = False
    clock.monitor.ctx.plugins.fencers["first"] = replace(clock.monitor.ctx.plugins.fencers["first"],
                                                         fence=takes_three_seconds)
    clock.tick(0.0)
    clock.tick(4.0)
    clock.tick(6.5)  # attempt 1 ends at 9.5: the next is due at 10.5, not 7.5
    assert len(fencers.calls) == 2
    for now in (7.5, 9.0, 10.0):
        keep_alive(cluster, "hv2")
        clock.tick(now)
    assert len(fencers.calls) == 2
    keep_alive(cluster, "hv2")
    clock.tick(10.5)
    assert len(fencers.calls) == 4


def test_recovery_leaves_alone_a_vm_whose_trip_to_the_dead_node_ended_meanwhile():
    vm = VM("web1", "u", 512, 1, state=VMState.START, node="hv1")
    moving = migration_request(vm, MigrationKind.MIGRATE, "hv3")
    assert target_fenced(moving, "hv3").migration is None
    assert target_fenced(moving, "hv3").reason == "migration to hv3 abandoned: hv3 fenced"
    assert target_fenced(vm, "hv3") is vm  # the source ended it first: nothing to do, no error
    assert target_fenced(migration_request(vm, MigrationKind.MIGRATE, "hv2"), "hv3").migration.target == "hv2"


def test_unmigrate_goes_only_to_the_last_node_as_it_is_now():
    vm = VM("web1", "u", 512, 1, state=VMState.START, node="hv2", last_node="hv1")
    assert migration_request(vm, MigrationKind.UNMIGRATE, "hv1").migration.target == "hv1"
    moved = replace(vm, last_node="")  # an operator's move made meanwhile
    with pytest.raises(ConflictError, match="has no last node"):
        migration_request(moved, MigrationKind.UNMIGRATE, "hv1")


def test_a_stopping_coordinator_that_is_not_primary_hands_nothing_over():
    cluster, rec, net, coords = coordinators()
    cluster.claim_primary("hv2", lambda cur: True)
    coords["hv1"].serving = True  # believes it serves (a takeover that failed half-way, say)
    coords["hv1"].step_down(cluster.snapshot())
    assert cluster.handover is None and not coords["hv1"].serving


def test_a_take_over_from_an_older_snapshot_reports_the_migration_once(world):
    """A reconcile that read the VM before the target's own take-over write (and ran after that worker ended)
    takes it over a second time: that one changes nothing, and the migration is counted and announced once."""
    cluster, rec, node = world
    a, b = node("hv1"), node("hv2")
    running_vm(cluster, a, "web1")
    cluster.update_vm("web1", lambda v: migration_request(v, MigrationKind.MIGRATE, "hv2"))
    stale = cluster.update_vm("web1", lambda v: replace(v, migration=replace(v.migration, phase="sent", method="live")))
    del a.hv.running["web1"]
    b.hv.run("web1", 512, 1)  # the source has sent it: it runs on the target
    assert b.lifecycle.migrations.take_over(stale, True).node == "hv2"
    again = b.lifecycle.migrations.take_over(stale, True)
    assert (again.node, again.migration) == ("hv2", None)
    assert len(rec.of("pvc_migration_finished")) == 1
    assert cluster.stats == {"migrations": 1}


def test_a_reconcile_leaves_a_vm_whose_worker_ended_after_its_snapshot_to_the_next_one(world):
    cluster, rec, node = world
    a = node("hv1")
    gate, done = threading.Event(), threading.Event()
    before = time.monotonic()  # a snapshot read now cannot show what the worker writes
    a.workers.spawn("web1", lambda: (gate.wait(T), done.set()))
    assert a.workers.busy("web1") and a.workers.busy("web1", before)
    gate.set()
    assert done.wait(T)
    a.workers.join(T)
    assert not a.workers.busy("web1")  # owned by no one now
    assert a.workers.busy("web1", before)  # but that snapshot is older than its end
    assert not a.workers.busy("web1", time.monotonic())  # a fresh one is not

"""Node flush and ready (unflush), driven by the primary coordinator: one worker thread per node.

The primary holds the whole cluster in its view and places; the flushed node's own daemon only
carries out the migrations it is asked for, like any other (a node that is not a coordinator
watches only its own VMs, and cannot place). A new primary takes up a flush where the cluster is.

Flush: every running VM of the node is sent away by placement (its selector and
node limit), at most the node's ``flush_parallel`` migrations at a time; a VM with no valid
target is shut down and gets ``node_autostart``; then the node is ``flushed``.
Ready: the VMs whose last node is this one come back (those still in flight elsewhere
once they land), the VMs at home here with ``node_autostart`` start (the flag is cleared
as it is used); then ``ready``.
A change of the node's domain state (an operator asking the opposite), or this daemon
no longer being primary (``active``), ends the worker at its next step. Progress waits on
the view, never on fixed sleeps.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Callable

from pvccore.domain.models import VM
from pvccore.domain.states import ACCEPTING, DomainState, MigrationKind, VMState
from pvccore.domain.transitions import autostarted, parked
from pvccore.errors import PVCError
from pvccore.node.context import NodeContext
from pvccore.zk.placing import request_migration

log = logging.getLogger(__name__)


def _still(ctx: NodeContext, me: str, state: DomainState, active: Callable[[], bool]) -> bool:
    node = ctx.view.node(me)
    return not ctx.stopping.is_set() and active() and node is not None and node.domain_state == state


def _set_domain(ctx: NodeContext, me: str, was: DomainState, now: DomainState) -> None:
    ctx.store.update_node(me, lambda n: replace(n, domain_state=now) if n.domain_state == was else n)
    ctx.view.wait_seen("node", me, ctx.store.last_write[1])


def run_flush(ctx: NodeContext, me: str, active: Callable[[], bool] = lambda: True) -> None:
    """Flush node ``me`` (see the module docstring)."""
    sent: dict[str, str] = {}  # VM -> target, as requested by this flush
    looked_at: set[str] = set()  # stopped VMs: re-homed, or left here for want of a target
    gen = ctx.view.generation
    while _still(ctx, me, DomainState.FLUSH, active):
        snap = ctx.view.snapshot()
        node = snap.nodes.get(me)
        parallel = node.flush_parallel if node is not None and node.flush_parallel > 0 else ctx.cfg.flush_parallel
        mine = sorted((vm for vm in snap.vms.values() if vm.node == me), key=lambda vm: vm.name)
        for vm in mine:
            if vm.name not in looked_at and vm.state in (VMState.STOP, VMState.DISABLE, VMState.FAIL) \
                    and vm.migration is None and not vm.meta.node_autostart:
                looked_at.add(vm.name)
                _rehome_stopped(ctx, me, vm)
        moving = [vm for vm in mine if vm.migration is not None]
        stopping = [vm for vm in mine if vm.state in (VMState.SHUTDOWN, VMState.RESTART)]
        todo = [vm for vm in mine if vm.state == VMState.START and vm.migration is None]
        if not todo and not moving and not stopping:
            break
        for vm in todo[:max(0, parallel - len(moving))]:
            if not active():  # handed over meanwhile: the new primary goes on from here
                break
            if vm.name in sent:  # it came back: its migration failed, and it cannot stay here
                _park(ctx, me, vm, f"migration to {sent[vm.name]} failed during flush of {me}: {vm.reason}")
                continue
            try:
                target, why = _send(ctx, vm)
            except PVCError as exc:  # changed meanwhile (an operator acted): look again next round
                log.info("flush of %s: VM %s not sent: %s", me, vm.name, exc.message)
                continue
            if target is None:
                _park(ctx, me, vm, why)
                continue
            sent[vm.name] = target
            log.info("flush of %s: VM %s to %s", me, vm.name, target)
        gen = ctx.view.wait_changed(gen, ctx.cfg.keepalive_interval)
    if _still(ctx, me, DomainState.FLUSH, active):
        _set_domain(ctx, me, DomainState.FLUSH, DomainState.FLUSHED)
        log.info("node %s flushed (%d VMs sent away)", me, len(sent))


def _send(ctx: NodeContext, vm: VM, kind: MigrationKind = MigrationKind.MIGRATE, target: str | None = None,
          domains: tuple[DomainState, ...] = (DomainState.READY,)) -> tuple[str | None, str]:
    """Request ``vm``'s migration (see :func:`pvccore.zk.placing.request_migration`), and wait until the view
    shows it: ``(target, "")``, or ``(None, why)`` when no node can take it."""
    written, why = request_migration(ctx.store, ctx.view, ctx.plugins.selectors, vm.name, kind, target,
                                     domains=domains)
    if written is None:
        return None, why
    ctx.view.wait_seen("vm", vm.name, ctx.store.last_write[1])
    return (written.migration.target if written.migration else written.node), ""


def _rehome_stopped(ctx: NodeContext, me: str, vm: VM) -> None:
    """A stopped VM needs no hypervisor work: assign it elsewhere now (it comes back on ready),
    so that starting it while this node is flushed does not start it here."""
    try:
        target, why = _send(ctx, vm)
    except PVCError as exc:
        log.info("flush of %s: stopped VM %s not re-homed: %s", me, vm.name, exc.message)
        return
    if target is None:
        log.info("flush of %s: stopped VM %s stays assigned there: %s", me, vm.name, why)
        return
    log.info("flush of %s: stopped VM %s re-homed to %s", me, vm.name, target)


def _park(ctx: NodeContext, me: str, vm: VM, reason: str) -> None:
    """No node can take the VM: shut it down on ``me`` and have it start with its home node."""
    log.warning("flush of %s: VM %s shut down: %s", me, vm.name, reason)
    still = lambda v: v.node == me and v.state == VMState.START and v.migration is None  # noqa: E731
    ctx.write_vm(vm.name, lambda v: parked(v, reason) if still(v) else v)


def run_unflush(ctx: NodeContext, me: str, active: Callable[[], bool] = lambda: True) -> None:
    """Bring home the VMs whose home is node ``me``, start the ones parked there, then say ``ready``.

    A VM still in flight elsewhere (a flush of another node moving it on) is waited for and
    brought home once it lands, so a rolling maintenance that readies this node meanwhile still
    ends with the VM here. Bounded: each request extends the wait by one migration timeout.
    """
    asked: set[str] = set()  # unmigrations requested (or refused: they are not asked again)
    in_flight: set[str] = set()  # VMs of this home that were moving elsewhere when seen
    deadline = time.monotonic() + ctx.cfg.migration_timeout
    gen = ctx.view.generation
    while _still(ctx, me, DomainState.UNFLUSH, active):
        snap = ctx.view.snapshot()
        for vm in sorted(snap.vms.values(), key=lambda v: v.name):
            if vm.name in asked:
                continue
            if vm.last_node == me and vm.node != me and vm.migration is None:
                asked.add(vm.name)
                deadline = max(deadline, time.monotonic() + ctx.cfg.migration_timeout)
                _bring_home(ctx, me, vm)
            elif vm.node == me and vm.meta.node_autostart and vm.state == VMState.STOP:
                ctx.write_vm(vm.name, lambda v: autostarted(v) if v.meta.node_autostart and v.state == VMState.STOP
                             else v)
                log.info("ready of %s: VM %s autostarted", me, vm.name)
        snap = ctx.view.snapshot()  # with the requests just made
        moving = [v for v in snap.vms.values() if v.migration is not None
                  and (v.name in asked or (v.last_node == me and v.node != me))]
        for vm in moving:
            if vm.name not in asked and vm.name not in in_flight:
                in_flight.add(vm.name)
                log.info("ready of %s: VM %s is on its way to %s; it comes home once it lands", me, vm.name,
                         vm.migration.target)
        if not moving:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            log.warning("ready of %s: still waiting for %s; ready without them", me,
                        ", ".join(sorted(v.name for v in moving)))
            break
        gen = ctx.view.wait_changed(gen, min(left, ctx.cfg.keepalive_interval))
    if _still(ctx, me, DomainState.UNFLUSH, active):
        _set_domain(ctx, me, DomainState.UNFLUSH, DomainState.READY)
        ctx.store.discard(ctx.store.paths.node_stop_flush(me))  # ready, however it came: nothing to undo
        log.info("node %s ready (%d VMs asked home)", me, len(asked))


def _bring_home(ctx: NodeContext, me: str, vm: VM) -> None:
    try:
        _send(ctx, vm, MigrationKind.UNMIGRATE, vm.last_node, ACCEPTING)
    except PVCError as exc:
        log.warning("ready of %s: VM %s stays on %s: %s", me, vm.name, vm.node, exc.message)

"""The migration protocol between a source and a target node daemon, through the VM document.

Phases of ``vm.migration.phase`` and who writes them::

    requested  (API / flush)   a migration is wanted; the source acts
    prepare    (source)        method chosen (live or shutdown); the target must answer
    ready      (target)        the target can receive; only now does the source send
    sent       (source)        live migration done: the VM runs on the target
    stopped    (source)        shutdown path: the VM is off and undefined on the source
    failed     (target)        the target could not run it; the source starts it again

The target ends a migration by writing, in one compare-and-set, ``node`` = itself,
``state`` = start and no migration: the node field changes only once the VM runs on
the target. The source ends one it gives up on (no answer, live-only migration
impossible) by clearing the migration with a reason. Every wait has a deadline
and is a watch on the view, never a fixed sleep.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from pvccore.domain.models import VM, Node
from pvccore.domain.states import ACCEPTING, DaemonState, MigrationMethod, VMState
from pvccore.domain.states import MigrationPhase as Phase
from pvccore.domain.transitions import migration_abandoned, migration_done
from pvccore.node.context import NodeContext, Workers
from pvccore.errors import NotFoundError
from pvccore.node.hypervisor import HypervisorError

log = logging.getLogger(__name__)


def _in_phase(vm: VM, *phases: Phase):
    """Precondition for a write: the same migration is still in one of ``phases``."""
    started = vm.migration.started
    return lambda v: v.migration is not None and v.migration.started == started and v.migration.phase in phases


class Migrations:
    """This node's side of every migration it is part of, as source or target.

    ``hv`` is the node's :class:`pvccore.node.hypervisor.Hypervisor` (or a fake); ``live`` says whether
    this node can live-migrate (hypervisor and migration address).
    """

    def __init__(self, ctx: NodeContext, hv, workers: Workers, live: bool):
        self.ctx, self.hv, self.workers, self.live = ctx, hv, workers, live

    def step(self, vm: VM, running: bool) -> None:
        """Start this node's next step of ``vm``'s migration, if it owes one (in a worker)."""
        phase, spawn = vm.migration.phase, self.workers.spawn
        if vm.migration.target == self.ctx.name:
            if phase == Phase.PREPARE:
                spawn(vm.name, self.acknowledge, vm, running)
            elif phase == Phase.SENT:
                spawn(vm.name, self.take_over, vm, running)
            elif phase == Phase.STOPPED:
                spawn(vm.name, self.take_over, vm, False)
        elif vm.node == self.ctx.name:
            if phase in (Phase.REQUESTED, Phase.PREPARE, Phase.READY):
                spawn(vm.name, self.send, vm, running)
            elif phase == Phase.FAILED:
                spawn(vm.name, self.restart_here, vm)

    # -- source side ---------------------------------------------------------------------

    def choose_method(self, vm: VM, target: Node | None, running: bool) -> tuple[str, str]:
        """``(method, why_not)``: ``live`` when both ends can and the VM allows it, else ``shutdown``.

        ``method`` is empty when the VM must migrate live and cannot; ``why_not`` says why.
        """
        mig = vm.migration
        live_only = mig.live_only
        if vm.meta.migration_method == MigrationMethod.SHUTDOWN and not live_only:
            return MigrationMethod.SHUTDOWN, ""
        if not running:
            return ("", "the VM is not running") if live_only else (MigrationMethod.SHUTDOWN, "")
        why = ""
        if not self.live:
            why = f"node {self.ctx.name} cannot live-migrate (hypervisor or migration address)"
        elif target is None or not target.live_migration or not target.migration_uri:
            why = f"node {mig.target} cannot receive a live migration"
        if not why:
            return MigrationMethod.LIVE, ""
        return ("", why) if live_only else (MigrationMethod.SHUTDOWN, why)

    def _read_node(self, name: str) -> Node | None:
        try:
            return self.ctx.store.get_node(name)
        except NotFoundError:
            return None

    def send(self, vm: VM, running: bool) -> VM | None:
        """Source side: choose the method, wait for the target's answer, then send the VM (or stop it)."""
        ctx, cfg = self.ctx, self.ctx.cfg
        mig = vm.migration
        target = ctx.view.node(mig.target) or self._read_node(mig.target)  # (a node's scoped view lacks it)
        method, why_not = self.choose_method(vm, target, running)
        if not method:
            return self.abandon(vm, f"live migration impossible: {why_not}")
        if why_not:
            log.info("VM %s: %s; migrating by shutdown", vm.name, why_not)
        vm = ctx.set_vm(vm.name, _in_phase(vm, Phase.REQUESTED, Phase.PREPARE, Phase.READY),
                        migration=replace(mig, phase=Phase.PREPARE, method=method))
        if vm is None or vm.migration is None or vm.migration.phase != Phase.PREPARE:
            return vm

        # The target answers (ready or failed) through the VM document.
        answered = ctx.view.wait_for(
            lambda c: (v := c.vms.get(vm.name)) is None or v.migration is None or v.migration.phase != Phase.PREPARE,
            cfg.migration_timeout)
        current = ctx.view.vm(vm.name)
        if current is None or current.migration is None or current.migration.phase == Phase.FAILED:
            return current  # failed: the next reconcile runs restart_here
        if not answered:
            return self.abandon(current, f"node {mig.target} did not answer within {cfg.migration_timeout:g}s")
        if current.migration.phase != Phase.READY:
            return self.abandon(current, f"unexpected phase {current.migration.phase} while waiting for {mig.target}")

        if method == MigrationMethod.LIVE:
            try:
                self.hv.migrate_live(vm.name, target.migration_uri, cfg.migration_timeout,
                                     vm.meta.migration_max_downtime)
                return ctx.set_vm(vm.name, _in_phase(current, Phase.READY),
                                  migration=replace(current.migration, phase=Phase.SENT))
            except HypervisorError as exc:
                if mig.live_only:
                    return self.abandon(current, str(exc))
                log.warning("VM %s: %s; falling back to shutdown and start", vm.name, exc)
        graceful = self.hv.shutdown(vm.name, cfg.shutdown_timeout, ctx.stopping)
        self.hv.undefine(vm.name)  # the target defines it from the XML in ZooKeeper
        reason = "" if graceful else f"did not shut down within {cfg.shutdown_timeout:g}s; stopped"
        return ctx.set_vm(vm.name, _in_phase(current, Phase.READY),
                          migration=replace(current.migration, phase=Phase.STOPPED, method=MigrationMethod.SHUTDOWN,
                                            reason=reason))

    def abandon(self, vm: VM, reason: str) -> VM | None:
        """Give up a migration that has not left the source: the VM stays (and runs) here."""
        log.warning("VM %s: migration to %s abandoned: %s", vm.name, vm.migration.target, reason)
        written, ended = self._end(vm.name, _in_phase(vm, Phase.REQUESTED, Phase.PREPARE, Phase.READY),
                                   lambda v: migration_abandoned(v, reason))
        if ended:
            self._report(vm, ok=False)
        return written

    def restart_here(self, vm: VM) -> VM | None:
        """Source side: the target could not start the VM after we stopped it: start it here again."""
        mig = vm.migration
        reason = f"migration to {mig.target} failed: {mig.reason}"
        try:
            self.hv.start(vm.name, self.ctx.store.get_vm_xml(vm.name))
        except HypervisorError as exc:
            return self.ctx.set_vm(vm.name, _in_phase(vm, Phase.FAILED), migration=None, state=VMState.FAIL,
                                   reason=f"{reason}; restarting here failed too: {exc}")
        self._report(vm, ok=False)
        return self.ctx.set_vm(vm.name, _in_phase(vm, Phase.FAILED), migration=None, state=VMState.START, reason=reason)

    # -- target side -----------------------------------------------------------------------

    def acknowledge(self, vm: VM, running: bool) -> VM | None:
        """Target side: say ready, or why not, before the source sends anything."""
        me = self.ctx.view.node(self.ctx.name)
        why = ""
        if running:
            why = f"a copy of {vm.name} already runs on {self.ctx.name}"
        elif me is None or me.daemon_state != DaemonState.RUN or me.domain_state not in ACCEPTING:
            why = f"node {self.ctx.name} is not accepting VMs"
        return self.ctx.set_vm(vm.name, _in_phase(vm, Phase.PREPARE),
                               migration=replace(vm.migration, phase=Phase.FAILED if why else Phase.READY, reason=why))

    def take_over(self, vm: VM, running: bool) -> VM | None:
        """Target side: make sure the VM runs here, then take it over in one write."""
        ctx, mig = self.ctx, vm.migration
        if mig.phase == Phase.STOPPED:
            try:
                self.hv.start(vm.name, ctx.store.get_vm_xml(vm.name))
            except HypervisorError as exc:
                return ctx.set_vm(vm.name, _in_phase(vm, Phase.STOPPED),
                                  migration=replace(mig, phase=Phase.FAILED, reason=str(exc)))
        elif not running:
            return ctx.set_vm(vm.name, _in_phase(vm, Phase.SENT), migration=replace(
                mig, phase=Phase.FAILED, reason=f"not running on {ctx.name} after live migration"))
        written, ended = self._end(vm.name, _in_phase(vm, mig.phase), migration_done)
        if not ended or written is None or written.migration is not None or written.node != ctx.name:
            return written  # ended meanwhile (by us, from a reconcile's older snapshot, or by someone else)
        self._report(vm, ok=True)
        if mig.reason:
            log.warning("VM %s: %s", vm.name, mig.reason)
        return written

    # -- both ------------------------------------------------------------------------------------

    def _end(self, name: str, same: Callable[[VM], bool], change: Callable[[VM], VM]) -> tuple[VM | None, bool]:
        """Compare-and-set ``change`` while ``same`` holds: the document as written, and whether this write
        made the change (a worker started from a reconcile's older snapshot finds it made already)."""
        ended = False

        def update(v: VM) -> VM:
            nonlocal ended  # the last try of the compare-and-set decides
            ended = same(v)
            return change(v) if ended else v

        return self.ctx.write_vm(name, update), ended

    def _report(self, vm: VM, ok: bool) -> None:
        """Log, count and announce (``pvc_migration_finished``) how a migration ended."""
        mig = vm.migration
        seconds = max(0.0, time.time() - mig.started)
        method = mig.method or MigrationMethod.SHUTDOWN
        if ok:
            log.info("VM %s: migrated from %s to %s (%s, %.1fs)", vm.name, mig.source, mig.target, method, seconds)
        else:
            log.warning("VM %s: migration from %s to %s failed after %.1fs", vm.name, mig.source, mig.target, seconds)
        try:
            self.ctx.store.count("migrations" if ok else "migrations_failed")
        except Exception as exc:  # a counter must not break a migration
            log.warning("could not count the migration of %s: %s", vm.name, exc)
        self.ctx.plugins.notify("pvc_migration_finished", vm=vm.name, source=mig.source, target=mig.target,
                                method=str(method), seconds=seconds, ok=ok)

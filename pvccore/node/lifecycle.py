"""A node's VMs: what each needs done now (start, shut down, stop, restart, a migration step, a stray
removed), each action in a worker that owns the VM until it ends, and the lifecycle notifications.

Reconciling is level-triggered: the decision is made from what ZooKeeper wants and what libvirt shows,
never from what happened before, so a daemon that restarts picks up where the cluster is.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Mapping

from pvccore.domain.models import VM, Node
from pvccore.domain.states import MIGRATION_STATES, VMState
from pvccore.errors import NotFoundError, ValidationError
from pvccore.node.context import NodeContext, Workers
from pvccore.node.hypervisor import Domain, HypervisorError
from pvccore.node.migration import Migrations

log = logging.getLogger("pvcnoded")

STRAY_RECHECK = 30.0  # seconds before a domain unknown to the cluster is looked up again


class VMLifecycle:
    """Carries out the wanted state of the VMs placed on this node, and removes copies that do not belong.

    ``hv`` is the node's hypervisor (or a fake).
    """

    def __init__(self, ctx: NodeContext, hv, workers: Workers, migrations: Migrations):
        self.ctx, self.hv, self.workers, self.migrations = ctx, hv, workers, migrations
        self._managed: set[str] = set()  # VMs this daemon has looked after: an undefine removes them here
        self._seen_vm: dict[str, str] = {}  # VM -> state last announced
        self._seen_node: dict[str, str] = {}  # kind -> this node's state last announced
        self._was_running: set[str] = set()
        self._unknown: dict[str, float] = {}  # domain -> when the cluster last said it has no such VM

    def with_strays(self, vms: Mapping[str, VM], local: Mapping[str, object]) -> Mapping[str, VM]:
        """``vms`` plus the documents of the domains here that a view scoped to this node does not hold.

        Such a domain belongs elsewhere (a VM migrated away, or recovered elsewhere while this node was
        cut off) or to no VM at all: :meth:`remove_stray` needs to know which, as it does with the whole
        cluster in view, so each is read from ZooKeeper. A name with no VM is asked again every
        ``STRAY_RECHECK`` seconds only.
        """
        if getattr(self.ctx.view, "scope", None) is None:
            return vms
        now = time.monotonic()
        missing = [name for name in local if name not in vms and now - self._unknown.get(name, -STRAY_RECHECK)
                   >= STRAY_RECHECK]
        if not missing:
            return vms
        out = dict(vms)
        for name in missing:
            try:
                out[name] = self.ctx.store.get_vm(name)
                self._unknown.pop(name, None)
            except (NotFoundError, ValidationError):  # no such VM (or a name no VM can have)
                self._unknown[name] = now
            except Exception as exc:  # ZooKeeper away: left alone this time, asked again at the next look
                log.warning("could not look up domain %s in the cluster: %s", name, getattr(exc, "message", exc))
        for name in set(self._unknown) - set(local):
            del self._unknown[name]
        return out

    def reconcile(self, vms, local: dict[str, Domain], since: float | None = None) -> None:
        """One look at every VM ZooKeeper places here (or sends here) and every domain libvirt has; ``vms`` as
        read at ``since`` (monotonic): a VM whose worker ended after that is left to the next look."""
        me = self.ctx.name
        was_running, self._was_running = self._was_running, {n for n, d in local.items() if d.running}
        mine = set()
        for vm in vms.values():
            involved = vm.node == me or (vm.migration is not None and vm.migration.target == me)
            if involved:
                self._managed.add(vm.name)
            if vm.node == me:
                mine.add(vm.name)
                self._announce_vm(vm)
            if involved and not self.workers.busy(vm.name, since):
                self.act(vm, local.get(vm.name), vm.name in was_running)
        for name, dom in local.items():
            if not self.workers.busy(name, since):
                self.remove_stray(name, dom, vms.get(name))
        for gone in set(self._seen_vm) - mine:
            del self._seen_vm[gone]

    def act(self, vm: VM, dom: Domain | None, was_running: bool) -> None:
        """Start the one action ``vm`` needs now, if any."""
        running = bool(dom and dom.running)
        if vm.migration is not None:
            self.migrations.step(vm, running)
            return
        spawn, state = self.workers.spawn, vm.state
        if state == VMState.START and not running:
            spawn(vm.name, self.start, vm, "restarted after it stopped unexpectedly" if was_running else "")
        elif state == VMState.RESTART:
            spawn(vm.name, self.restart, vm)
        elif state in (VMState.SHUTDOWN, VMState.DISABLE) and running:
            spawn(vm.name, self.shutdown, vm)
        elif state == VMState.SHUTDOWN:
            spawn(vm.name, self.ctx.set_vm, vm.name, lambda v: v.state == VMState.SHUTDOWN, state=VMState.STOP)
        elif state == VMState.STOP and running:
            spawn(vm.name, self.destroy, vm)
        elif state in MIGRATION_STATES:  # a migration state with no migration: keep it running
            spawn(vm.name, self.ctx.set_vm, vm.name, lambda v: v.migration is None and v.state == state,
                  state=VMState.START)

    def remove_stray(self, name: str, dom: Domain, vm: VM | None) -> None:
        """A libvirt domain here that ZooKeeper does not place here."""
        me = self.ctx.name
        if vm is None:
            if name in self._managed:  # undefined through pvc
                self.workers.spawn(name, self.hv.undefine, name)
            return
        if vm.node == me or (vm.migration is not None and me in (vm.migration.source, vm.migration.target)):
            return
        if dom.running:  # never two copies: ZooKeeper says it belongs elsewhere
            log.error("VM %s runs here but belongs to node %s: stopping this copy", name, vm.node)
        self.workers.spawn(name, self.hv.undefine, name)  # a running stray, or a definition left by a migration

    # -- actions (each in the VM's worker) -------------------------------------------------------

    def start(self, vm: VM, reason: str = "") -> VM | None:
        if reason:
            log.warning("VM %s: %s", vm.name, reason)
        me = self.ctx.name
        return self._boot(vm, "start", lambda v: v.state == VMState.START and v.node == me and v.migration is None,
                          reason=reason)

    def shutdown(self, vm: VM) -> VM | None:
        cfg = self.ctx.cfg
        graceful = self.hv.shutdown(vm.name, cfg.shutdown_timeout, self.ctx.stopping)
        # Keep a reason given with the request (e.g. why a flush parked the VM).
        reason = vm.reason if graceful else f"did not shut down within {cfg.shutdown_timeout:g}s; stopped"
        log.info("VM %s: %s", vm.name, "shut down" if graceful else reason)
        new_state = VMState.STOP if vm.state == VMState.SHUTDOWN else vm.state
        return self.ctx.set_vm(vm.name, lambda v: v.state == vm.state and v.node == self.ctx.name, state=new_state,
                               reason=reason)

    def restart(self, vm: VM) -> VM | None:
        self.hv.shutdown(vm.name, self.ctx.cfg.shutdown_timeout, self.ctx.stopping)
        return self._boot(vm, "restart", lambda v: v.state == VMState.RESTART and v.node == self.ctx.name,
                          state=VMState.START, reason="")

    def _boot(self, vm: VM, what: str, mine: Callable[[VM], bool], **changes) -> VM | None:
        """Start the domain from its stored XML; then write ``changes``, or ``fail`` with libvirt's error,
        while ``mine`` holds."""
        try:
            self.hv.start(vm.name, self.ctx.store.get_vm_xml(vm.name))
        except HypervisorError as exc:
            log.error("VM %s: %s failed: %s", vm.name, what, exc)
            return self.ctx.set_vm(vm.name, mine, state=VMState.FAIL, reason=str(exc))
        log.info("VM %s: %sed", vm.name, what)
        return self.ctx.set_vm(vm.name, mine, **changes)

    def destroy(self, vm: VM) -> None:
        self.hv.destroy(vm.name)
        log.info("VM %s: stopped", vm.name)

    # -- lifecycle notifications -------------------------------------------------------------------

    def announce_node(self, me: Node) -> None:
        """``pvc_node_state_changed`` for each of this node's states that changed since the last look."""
        for kind in ("daemon", "coordinator", "domain"):
            new = str(getattr(me, f"{kind}_state"))
            old = self._seen_node.get(kind)
            if old != new:
                self._seen_node[kind] = new
                self.ctx.plugins.notify("pvc_node_state_changed", node=self.ctx.name, kind=kind, old=old, new=new)

    def _announce_vm(self, vm: VM) -> None:
        old = self._seen_vm.get(vm.name)
        if old != vm.state:
            self._seen_vm[vm.name] = str(vm.state)
            self.ctx.plugins.notify("pvc_vm_state_changed", vm=vm.name, node=self.ctx.name, old=old,
                                    new=str(vm.state), reason=vm.reason)

"""Node flush and ready (unflush), run by the node's own daemon in a worker thread.

Flush: every running VM of the node is sent away by placement (its selector and
node limit), at most ``flush_parallel`` migrations at a time; a VM with no valid
target is shut down and gets ``node_autostart``; then the node is ``flushed``.
Ready: the VMs whose last node is this one come back (those still in flight elsewhere
once they land), the VMs at home here with ``node_autostart`` start (the flag is cleared
as it is used); then ``ready``.
A change of the node's domain state (an operator asking the opposite) ends the
worker at its next step. Progress waits on the view, never on fixed sleeps.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from .errors import PVCError
from .models import VM
from .operations import migration_request
from .placement import Placement, place
from .placing import placing

if TYPE_CHECKING:
    from .daemon import NodeDaemon

log = logging.getLogger(__name__)


def _still(d: "NodeDaemon", state: str) -> bool:
    node = d.view.node(d.name)
    return not d.stopping.is_set() and node is not None and node.domain_state == state


def run_flush(d: "NodeDaemon") -> None:
    me = d.name
    sent: dict[str, str] = {}  # VM -> target, as requested by this flush
    looked_at: set[str] = set()  # stopped VMs: re-homed, or left here for want of a target
    gen = d.view.generation
    while _still(d, "flush"):
        snap = d.view.snapshot()
        mine = sorted((vm for vm in snap.vms.values() if vm.node == me), key=lambda vm: vm.name)
        for vm in mine:
            if vm.name not in looked_at and vm.state in ("stop", "disable", "fail") and vm.migration is None \
                    and not vm.meta.node_autostart:
                looked_at.add(vm.name)
                _rehome_stopped(d, vm)
        moving = [vm for vm in mine if vm.migration is not None]
        stopping = [vm for vm in mine if vm.state in ("shutdown", "restart")]
        todo = [vm for vm in mine if vm.state == "start" and vm.migration is None]
        if not todo and not moving and not stopping:
            break
        for vm in todo[:max(0, d.cfg.flush_parallel - len(moving))]:
            if vm.name in sent:  # it came back: its migration failed, and it cannot stay here
                _park(d, vm, f"migration to {sent[vm.name]} failed during flush of {me}: {vm.reason}")
                continue
            try:
                decision = _send(d, vm)
            except PVCError as exc:  # changed meanwhile (an operator acted): look again next round
                log.info("flush of %s: VM %s not sent: %s", me, vm.name, exc.message)
                continue
            if decision.target is None:
                _park(d, vm, decision.reason)
                continue
            sent[vm.name] = decision.target
            log.info("flush of %s: VM %s to %s (%s)", me, vm.name, decision.target, decision.selector)
        gen = d.view.wait_changed(gen, d.cfg.keepalive_interval)
    if _still(d, "flush"):
        d.set_node(lambda n: n.domain_state == "flush", domain_state="flushed")
        log.info("node %s flushed (%d VMs sent away)", me, len(sent))


def _send(d: "NodeDaemon", vm: VM) -> Placement:
    """Place ``vm`` and request its migration there, with no other placement in between (see pvccore.placing).

    Returns the decision (its target None: nowhere to go, nothing written).
    """
    with placing(d.store, d.view) as fresh:
        decision = place(vm, fresh(), d.plugins.selectors)
        if decision.target is not None:
            d.write_vm(vm.name, lambda v: migration_request(v, "migrate", decision.target))
    return decision


def _rehome_stopped(d: "NodeDaemon", vm: VM) -> None:
    """A stopped VM needs no hypervisor work: assign it elsewhere now (it comes back on ready),
    so that starting it while this node is flushed does not start it here."""
    try:
        decision = _send(d, vm)
    except PVCError as exc:
        log.info("flush of %s: stopped VM %s not re-homed: %s", d.name, vm.name, exc.message)
        return
    if decision.target is None:
        log.info("flush of %s: stopped VM %s stays assigned here: %s", d.name, vm.name, decision.reason)
        return
    log.info("flush of %s: stopped VM %s re-homed to %s (%s)", d.name, vm.name, decision.target, decision.selector)


def _park(d: "NodeDaemon", vm: VM, reason: str) -> None:
    """No node can take the VM: shut it down here and have it start with its home node."""
    log.warning("flush of %s: VM %s shut down: %s", d.name, vm.name, reason)
    d.set_vm(vm.name, lambda v: v.node == d.name and v.state == "start" and v.migration is None, state="shutdown",
             meta=replace(vm.meta, node_autostart=True), reason=reason)


def run_unflush(d: "NodeDaemon") -> None:
    """Bring home the VMs whose home this is, start the ones parked here, then say ``ready``.

    A VM still in flight elsewhere (a flush of another node moving it on) is waited for and
    brought home once it lands, so a rolling maintenance that readies this node meanwhile still
    ends with the VM here. Bounded: each request extends the wait by one migration timeout.
    """
    me = d.name
    asked: set[str] = set()  # unmigrations requested (or refused: they are not asked again)
    in_flight: set[str] = set()  # VMs of this home that were moving elsewhere when seen
    deadline = time.monotonic() + d.cfg.migration_timeout
    gen = d.view.generation
    while _still(d, "unflush"):
        snap = d.view.snapshot()
        for vm in sorted(snap.vms.values(), key=lambda v: v.name):
            if vm.name in asked:
                continue
            if vm.last_node == me and vm.node != me and vm.migration is None:
                asked.add(vm.name)
                deadline = max(deadline, time.monotonic() + d.cfg.migration_timeout)
                _bring_home(d, vm)
            elif vm.node == me and vm.meta.node_autostart and vm.state == "stop":
                d.set_vm(vm.name, lambda v: v.meta.node_autostart and v.state == "stop", state="start",
                         meta=replace(vm.meta, node_autostart=False), reason="")
                log.info("ready of %s: VM %s autostarted", me, vm.name)
        snap = d.view.snapshot()  # with the requests just made
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
        gen = d.view.wait_changed(gen, min(left, d.cfg.keepalive_interval))
    if _still(d, "unflush"):
        d.set_node(lambda n: n.domain_state == "unflush", domain_state="ready")
        log.info("node %s ready (%d VMs asked home)", me, len(asked))


def _bring_home(d: "NodeDaemon", vm: VM) -> None:
    try:
        d.ops.unmigrate(vm.name)
    except PVCError as exc:
        log.warning("ready of %s: VM %s stays on %s: %s", d.name, vm.name, vm.node, exc.message)

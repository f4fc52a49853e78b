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
from dataclasses import replace
from typing import TYPE_CHECKING

from .hypervisor import HypervisorError
from .models import VM, Node
from .operations import finished

if TYPE_CHECKING:
    from .daemon import NodeDaemon

log = logging.getLogger(__name__)


def source_step(d: "NodeDaemon", vm: VM, running: bool) -> None:
    phase = vm.migration.phase
    if phase in ("requested", "prepare", "ready"):
        d.spawn(vm.name, run_source, d, vm, running)
    elif phase == "failed":
        d.spawn(vm.name, recover_failed, d, vm)


def target_step(d: "NodeDaemon", vm: VM, running: bool) -> None:
    phase = vm.migration.phase
    if phase == "prepare":
        d.spawn(vm.name, acknowledge, d, vm, running)
    elif phase == "sent":
        d.spawn(vm.name, finish, d, vm, running)
    elif phase == "stopped":
        d.spawn(vm.name, finish, d, vm, False)


def _in_phase(vm: VM, *phases: str):
    """Precondition for a write: the same migration is still in one of ``phases``."""
    started = vm.migration.started
    return lambda v: v.migration is not None and v.migration.started == started and v.migration.phase in phases


def choose_method(d: "NodeDaemon", vm: VM, target: Node | None, running: bool) -> tuple[str, str]:
    """``(method, why_not)``: ``live`` when both ends can and the VM allows it, else ``shutdown``.

    ``method`` is empty when the VM must migrate live and cannot; ``why_not`` says why.
    """
    mig = vm.migration
    live_only = mig.live_only
    if vm.meta.migration_method == "shutdown" and not live_only:
        return "shutdown", ""
    if not running:
        return ("", "the VM is not running") if live_only else ("shutdown", "")
    why = ""
    if not d.live:
        why = f"node {d.name} cannot live-migrate (hypervisor or migration address)"
    elif target is None or not target.live_migration or not target.migration_uri:
        why = f"node {mig.target} cannot receive a live migration"
    if not why:
        return "live", ""
    return ("", why) if live_only else ("shutdown", why)


def run_source(d: "NodeDaemon", vm: VM, running: bool) -> VM | None:
    mig = vm.migration
    target = d.view.node(mig.target)
    method, why_not = choose_method(d, vm, target, running)
    if not method:
        return abort(d, vm, f"live migration impossible: {why_not}")
    if why_not:
        log.info("VM %s: %s; migrating by shutdown", vm.name, why_not)
    vm = d.set_vm(vm.name, _in_phase(vm, "requested", "prepare", "ready"),
                  migration=replace(mig, phase="prepare", method=method))
    if vm is None or vm.migration is None or vm.migration.phase != "prepare":
        return vm

    # The target answers (ready or failed) through the VM document.
    answered = d.view.wait_for(
        lambda c: (v := c.vms.get(vm.name)) is None or v.migration is None or v.migration.phase != "prepare",
        d.cfg.migration_timeout)
    current = d.view.vm(vm.name)
    if current is None or current.migration is None or current.migration.phase == "failed":
        return current  # failed: the reconcile loop runs recover_failed
    if not answered:
        return abort(d, current, f"node {mig.target} did not answer within {d.cfg.migration_timeout:g}s")
    if current.migration.phase != "ready":
        return abort(d, current, f"unexpected phase {current.migration.phase} while waiting for {mig.target}")

    if method == "live":
        try:
            d.hv.migrate_live(vm.name, target.migration_uri, d.cfg.migration_timeout)
            return d.set_vm(vm.name, _in_phase(current, "ready"),
                            migration=replace(current.migration, phase="sent"))
        except HypervisorError as exc:
            if mig.live_only:
                return abort(d, current, str(exc))
            log.warning("VM %s: %s; falling back to shutdown and start", vm.name, exc)
    graceful = d.hv.shutdown(vm.name, d.cfg.shutdown_timeout, d.stopping)
    d.hv.undefine(vm.name)  # the target defines it from the XML in ZooKeeper
    reason = "" if graceful else f"did not shut down within {d.cfg.shutdown_timeout:g}s; stopped"
    return d.set_vm(vm.name, _in_phase(current, "ready"),
                    migration=replace(current.migration, phase="stopped", method="shutdown", reason=reason))


def abort(d: "NodeDaemon", vm: VM, reason: str) -> VM | None:
    """Give up a migration that has not left the source: the VM stays (and runs) here."""
    mig = vm.migration
    log.warning("VM %s: migration to %s abandoned: %s", vm.name, mig.target, reason)
    written = d.set_vm(vm.name, _in_phase(vm, "requested", "prepare", "ready"), migration=None, state="start",
                       reason=f"migration to {mig.target} failed: {reason}")
    _finished(d, vm, ok=False)
    return written


def recover_failed(d: "NodeDaemon", vm: VM) -> VM | None:
    """The target could not start the VM after we stopped it: start it here again."""
    mig = vm.migration
    reason = f"migration to {mig.target} failed: {mig.reason}"
    try:
        d.hv.start(vm.name, d.store.get_vm_xml(vm.name))
    except HypervisorError as exc:
        return d.set_vm(vm.name, _in_phase(vm, "failed"), migration=None, state="fail",
                        reason=f"{reason}; restarting here failed too: {exc}")
    _finished(d, vm, ok=False)
    return d.set_vm(vm.name, _in_phase(vm, "failed"), migration=None, state="start", reason=reason)


def acknowledge(d: "NodeDaemon", vm: VM, running: bool) -> VM | None:
    """Target side: say ready, or why not, before the source sends anything."""
    me = d.view.node(d.name)
    why = ""
    if running:
        why = f"a copy of {vm.name} already runs on {d.name}"
    elif me is None or me.daemon_state != "run" or me.domain_state not in ("ready", "unflush"):
        why = f"node {d.name} is not accepting VMs"
    phase = "failed" if why else "ready"
    return d.set_vm(vm.name, _in_phase(vm, "prepare"), migration=replace(vm.migration, phase=phase, reason=why))


def finish(d: "NodeDaemon", vm: VM, running: bool) -> VM | None:
    """Target side: make sure the VM runs here, then take it over in one write."""
    mig = vm.migration
    if mig.phase == "stopped":
        try:
            d.hv.start(vm.name, d.store.get_vm_xml(vm.name))
        except HypervisorError as exc:
            return d.set_vm(vm.name, _in_phase(vm, "stopped"), migration=replace(mig, phase="failed",
                                                                                     reason=str(exc)))
    elif not running:
        return d.set_vm(vm.name, _in_phase(vm, "sent"),
                        migration=replace(mig, phase="failed", reason=f"not running on {d.name} after live migration"))
    same = _in_phase(vm, mig.phase)
    written = d.write_vm(vm.name, lambda v: finished(v) if same(v) else v)
    if written is None or written.migration is not None or written.node != d.name:
        return written  # someone else ended it meanwhile
    _finished(d, vm, ok=True)
    if mig.reason:
        log.warning("VM %s: %s", vm.name, mig.reason)
    return written


def _finished(d: "NodeDaemon", vm: VM, ok: bool) -> None:
    mig = vm.migration
    seconds = max(0.0, time.time() - mig.started)
    if ok:
        log.info("VM %s: migrated from %s to %s (%s, %.1fs)", vm.name, mig.source, mig.target,
                 mig.method or "shutdown", seconds)
    else:
        log.warning("VM %s: migration from %s to %s failed after %.1fs", vm.name, mig.source, mig.target, seconds)
    try:
        d.store.count("migrations" if ok else "migrations_failed")
    except Exception as exc:  # a counter must not break a migration
        log.warning("could not count the migration of %s: %s", vm.name, exc)
    d.plugins.notify("pvc_migration_finished", vm=vm.name, source=mig.source, target=mig.target,
                     method=mig.method or "shutdown", seconds=seconds, ok=ok)

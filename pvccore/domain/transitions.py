"""How a VM document changes, as pure functions: the one place each transition is written.

Used by the API's operations and by the node daemons alike (neither imports the other).
"""

from __future__ import annotations

import time
from dataclasses import replace

from pvccore.domain.models import VM, Cluster, Migration, Node
from pvccore.domain.states import RUNNING_STATES, DaemonState, DomainState, MigrationKind, MigrationMethod, VMState
from pvccore.errors import ConflictError


def migration_request(vm: VM, kind: MigrationKind, target: str, force_live: bool = False) -> VM:
    """The VM document with a migration of ``kind`` to ``target`` requested.

    A stopped VM needs no hypervisor work: it is re-homed at once.
    :raises ConflictError: already migrating, or in a state that cannot move.
    """
    if vm.migration is not None:
        raise ConflictError(f"VM {vm.name!r} is already migrating to {vm.migration.target}", "action")
    if vm.node == target:
        raise ConflictError(f"VM {vm.name!r} is already on {target}", "target")
    if kind == MigrationKind.UNMIGRATE and vm.last_node != target:
        raise ConflictError(f"VM {vm.name!r} has no last node to return to" if not vm.last_node else
                            f"VM {vm.name!r} returns to {vm.last_node} now, not {target}", "action")
    last = last_node_after(vm, kind, vm.node, target)
    if vm.state != VMState.START:
        if vm.state in RUNNING_STATES:
            raise ConflictError(f"VM {vm.name!r} is busy (state {vm.state})", "action")
        return replace(vm, node=target, last_node=last)
    state = VMState.MIGRATE_LIVE if force_live else (
        VMState.UNMIGRATE if kind == MigrationKind.UNMIGRATE else VMState.MIGRATE)
    mig = Migration(kind=MigrationKind(kind), source=vm.node, target=target, started=time.time(),
                    live_only=force_live or vm.meta.migration_method == MigrationMethod.LIVE)
    return replace(vm, state=state, migration=mig, reason="")


def last_node_after(vm: VM, kind: MigrationKind, source: str, target: str) -> str:
    """``migrate`` remembers the VM's home (for ``unmigrate`` and ready): the node it left, or, when it
    was already away, the home it had (so chained moves such as a rolling flush still lead home),
    none once it is home again; ``move`` and ``unmigrate`` forget it."""
    if kind != MigrationKind.MIGRATE:
        return ""
    home = vm.last_node or source
    return "" if home == target else home


def migration_done(vm: VM) -> VM:
    """The VM document once its migration's target runs it: the node changes only now."""
    mig = vm.migration
    assert mig is not None
    return replace(vm, node=mig.target, last_node=last_node_after(vm, mig.kind, mig.source, mig.target),
                   state=VMState.START, migration=None, reason="")


def migration_abandoned(vm: VM, reason: str) -> VM:
    """The VM document once its migration is given up before it left the source: it runs where it is."""
    return replace(vm, migration=None, state=VMState.START, reason=f"migration to {vm.migration.target} failed: {reason}")


def target_fenced(vm: VM, dead: str) -> VM:
    """A VM that was on its way to ``dead`` when it was fenced: it stays where it is and runs there."""
    if vm.migration is None or vm.migration.target != dead:
        return vm
    return replace(vm, migration=None, state=VMState.START, reason=f"migration to {dead} abandoned: {dead} fenced")


def started_elsewhere(vm: VM, target: str, why: str) -> VM:
    """A stopped VM started on ``target`` because its home cannot run it now: the home's next ready brings it
    back, and its autostart is used up (it is running)."""
    return replace(vm, node=target, state=VMState.START, reason=f"started on {target}: {why}",
                   last_node=last_node_after(vm, MigrationKind.MIGRATE, vm.node, target),
                   meta=replace(vm.meta, node_autostart=False))


def parked(vm: VM, reason: str) -> VM:
    """No node can take the VM now: shut down where it is, to start again with its home node's next ready."""
    return replace(vm, state=VMState.SHUTDOWN, meta=replace(vm.meta, node_autostart=True), reason=reason)


def autostarted(vm: VM) -> VM:
    """A parked VM starting with its home node's ready: the autostart flag is used up."""
    return replace(vm, state=VMState.START, meta=replace(vm.meta, node_autostart=False), reason="")


def recovered(vm: VM, dead: str, target: str) -> VM:
    """A fenced node's VM, started on ``target``; it returns home (the dead node, or the home it was already
    away from) on that node's ready."""
    return replace(vm, node=target, last_node=last_node_after(vm, MigrationKind.MIGRATE, dead, target),
                   state=VMState.START, migration=None, reason=f"recovered from {dead} (fenced)")


def recovery_parked(vm: VM, dead: str, why: str) -> VM:
    """A fenced node's VM no node can take: stopped, to start with its home node's next ready."""
    return replace(vm, state=VMState.STOP, migration=None, meta=replace(vm.meta, node_autostart=True),
                   reason=f"{dead} fenced; {why}")


def is_active(vm: VM) -> bool:
    """Whether the VM runs, or should, or is moving."""
    return vm.state in RUNNING_STATES or vm.migration is not None


def invariant_violations(cluster: Cluster) -> list[str]:
    """VMs running on two nodes, or not running where they should (from nodes' published lists)."""
    where: dict[str, list[str]] = {}
    for node in cluster.nodes.values():
        if node.daemon_state == DaemonState.RUN:
            for vm in node.running_vms:
                where.setdefault(vm, []).append(node.name)
    out = [f"VM {vm} runs on {', '.join(nodes)}" for vm, nodes in where.items() if len(nodes) > 1]
    for vm in cluster.vms.values():
        if vm.state == VMState.START and vm.migration is None and where.get(vm.name, []) != [vm.node]:
            out.append(f"VM {vm.name} should run on {vm.node} but runs on {where.get(vm.name) or 'nothing'}")
    return out


#: A flush or ready request: the domain states it is taken from, and those in which it is already under way or done.
DOMAIN_REQUESTS = {
    DomainState.FLUSH: ((DomainState.READY, DomainState.UNFLUSH), (DomainState.FLUSH, DomainState.FLUSHED)),
    DomainState.UNFLUSH: ((DomainState.FLUSH, DomainState.FLUSHED), (DomainState.UNFLUSH, DomainState.READY)),
}


def domain_requested(node: Node, new: DomainState) -> Node:
    """``node`` asked to flush (``new`` = flush) or to take its VMs back (unflush).

    :raises ConflictError: the node is being recovered after a fence.
    """
    from_, already = DOMAIN_REQUESTS[new]
    if node.domain_state in from_:
        return replace(node, domain_state=new)
    if node.domain_state in already:
        return node
    raise ConflictError(f"node {node.name} is {node.domain_state} (its VMs are being recovered after a fence); "
                        "try again once that is done", "state")

"""Faults: what needs an operator, found in the cluster as the primary sees it, and kept with its history.

:func:`conditions` lists what is wrong now (a node dead, fenced or silent in maintenance mode, a
fence that failed, a VM failed or stopped for want of a node, a ZooKeeper server that does not
answer). :func:`merged` folds one condition into the stored record of the same id: first and last
seen, how many times it came back, whether it is still active, whether an operator acknowledged it.
The primary's fault monitor (pvccore.node.faults) runs both; ``pvc cluster faults`` shows the records.

Pure: no ZooKeeper, no clock (``now`` is given).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

from pvccore.domain.models import Cluster, Fault, FenceStatus
from pvccore.domain.states import DaemonState, FaultKind, FenceOutcome, VMState

REFRESH = 60.0  # seconds: how often an active fault's last_seen is written while nothing else about it changes


@dataclass(frozen=True)
class Condition:
    kind: FaultKind
    subject: str
    message: str

    @property
    def id(self) -> str:
        return f"{self.kind}.{self.subject}"


def conditions(cluster: Cluster, fencing: Mapping[str, FenceStatus], zookeeper_down: Mapping[str, str]) \
        -> dict[str, Condition]:
    """Everything that needs an operator now, by fault id."""
    found = []
    for node in cluster.nodes.values():
        if node.daemon_state == DaemonState.DEAD:
            found.append(Condition(FaultKind.NODE_DEAD, node.name, f"node {node.name} declared dead; its VMs are "
                                   "recovered once it is fenced"))
        elif node.daemon_state == DaemonState.FENCED:
            found.append(Condition(FaultKind.NODE_FENCED, node.name, f"node {node.name} was fenced; boot it and it "
                                   "rejoins flushed (then pvc node ready)"))
    for name, status in fencing.items():
        if status.state == FenceOutcome.FAILED:
            found.append(Condition(FaultKind.FENCE_FAILED, name, f"fencing of node {name} failed: {status.message}; "
                                   "its VMs are not recovered"))
        elif status.state == FenceOutcome.HELD:
            found.append(Condition(FaultKind.NODE_SILENT, name, f"node {name} is silent; maintenance mode: not "
                                   "fenced"))
    for vm in cluster.vms.values():
        if vm.state == VMState.FAIL:
            found.append(Condition(FaultKind.VM_FAILED, vm.name, f"VM {vm.name} failed: {vm.reason}"))
        elif vm.state in (VMState.STOP, VMState.SHUTDOWN) and vm.meta.node_autostart and vm.reason:
            found.append(Condition(FaultKind.VM_STOPPED, vm.name, f"VM {vm.name} stopped: {vm.reason}; it starts "
                                   f"with node {vm.node}'s next ready"))
    for server, why in zookeeper_down.items():
        found.append(Condition(FaultKind.ZOOKEEPER_DOWN, server, f"ZooKeeper server {server} does not answer: {why}"))
    return {c.id: c for c in found}


def merged(stored: Fault | None, condition: Condition | None, now: float) -> Fault | None:
    """The record to write for one fault id, or None when the stored one stands as it is.

    New: count 1. Back after it cleared: count + 1, unacknowledged again. Still there: last_seen
    is refreshed every :data:`REFRESH` seconds (or with a new message). Gone: inactive.
    """
    if condition is None:
        return replace(stored, active=False) if stored is not None and stored.active else None
    if stored is None:
        return Fault(id=condition.id, kind=condition.kind, subject=condition.subject, message=condition.message,
                     first_seen=now, last_seen=now)
    if not stored.active:
        return replace(stored, message=condition.message, last_seen=now, count=stored.count + 1, active=True,
                       acknowledged=False)
    if stored.message != condition.message or now - stored.last_seen >= REFRESH:
        return replace(stored, message=condition.message, last_seen=now)
    return None

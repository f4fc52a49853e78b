"""Where a node's VMs go if it fails: the recovery plan, computed before the failure as after it.

:func:`plan_recovery` is the one decision a recovery makes (pvccore.node.recovery carries it out
after a confirmed fence), so asking it of a live node (``pvc node what-if-fail``) answers what the
cluster would do, VM by VM, with the same selectors, node limits, free memory and the VMs already
on their way. :func:`n_plus_one` asks it of every node: which single failure would leave a VM with
no node to run on.

Pure: a snapshot in (the placement view, :func:`pvccore.domain.placement.current`), a plan out.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping

from pvccore.domain.models import Cluster
from pvccore.domain.placement import Placement, place, with_vm
from pvccore.domain.states import RUNNING_STATES, DaemonState
from pvccore.hookspecs import Selector


@dataclass(frozen=True)
class RecoveryPlan:
    """What a recovery of ``node`` does: each VM's decision, in the order they are placed."""

    node: str
    moves: Mapping[str, Placement] = field(default_factory=dict)  # VM -> decision with a target
    parked: Mapping[str, Placement] = field(default_factory=dict)  # VM -> decision without one
    stays: tuple[str, ...] = ()  # VMs on their way to the node: they stay where they are

    @property
    def targets(self) -> dict[str, str]:
        return {vm: p.target for vm, p in self.moves.items()}

    def to_dict(self) -> dict:
        return {
            "node": self.node,
            "moves": [{"vm": vm, "target": p.target, "selector": p.selector, "score": p.scores[p.target]}
                      for vm, p in self.moves.items()],
            "parked": [{"vm": vm, "selector": p.selector, "reason": p.reason} for vm, p in self.parked.items()],
            "stays": list(self.stays),
        }


def plan_recovery(cluster: Cluster, node: str, selectors: Mapping[str, Selector]) -> RecoveryPlan:
    """The recovery of ``node``: its active VMs placed one after another (each counting against the nodes
    chosen before it), by name; those no node can take are parked; those migrating to it stay put.

    A VM in the middle of a migration away from ``node`` is placed afresh like the others (where it was
    going is not known to have received it).
    """
    moves: dict[str, Placement] = {}
    parked: dict[str, Placement] = {}
    stays: list[str] = []
    nodes = dict(cluster.nodes)  # the nodes with the VMs placed so far counted (with_pending, one VM at a time)
    counted = replace(cluster, nodes=MappingProxyType(nodes))
    for vm in sorted(cluster.vms.values(), key=lambda v: v.name):
        mig = vm.migration
        if mig is not None and mig.target == node and vm.node != node:
            stays.append(vm.name)
            continue
        if vm.node != node or (vm.state not in RUNNING_STATES and mig is None):
            continue
        decision = place(replace(vm, migration=None), counted, selectors)
        if decision.target is None:
            parked[vm.name] = decision
        else:
            moves[vm.name] = decision
            nodes[decision.target] = with_vm(nodes[decision.target], vm)
    return RecoveryPlan(node, moves, parked, tuple(stays))


def n_plus_one(cluster: Cluster, selectors: Mapping[str, Selector]) -> dict[str, RecoveryPlan]:
    """For every running node whose failure would leave a VM without a target: its recovery plan.

    An empty answer means the cluster survives the loss of any one node with every VM running.
    """
    out = {}
    for name, node in cluster.nodes.items():
        if node.daemon_state != DaemonState.RUN:
            continue  # already out: its loss is not a what-if
        plan = plan_recovery(cluster, name, selectors)
        if plan.parked:
            out[name] = plan
    return out

"""Recovery: a fenced node's VMs started elsewhere by placement, those with no valid target parked."""

from __future__ import annotations

import logging
from dataclasses import replace

from pvccore.domain.models import Cluster
from pvccore.domain.placement import place, with_pending
from pvccore.domain.states import RUNNING_STATES, DomainState
from pvccore.domain.transitions import recovered, recovery_parked, target_fenced
from pvccore.node.context import NodeContext
from pvccore.zk.placing import placing

log = logging.getLogger(__name__)


def recover(ctx: NodeContext, dead: str) -> None:
    """Start the dead node's VMs elsewhere by placement; park those with no valid target."""
    with placing(ctx.store, ctx.view, timeout=30.0) as fresh:
        moved, parked = _recover_placed(ctx, dead, fresh())
    ctx.store.update_node(dead, lambda n: replace(n, domain_state=DomainState.FLUSHED)
                          if n.domain_state == DomainState.FENCE_FLUSH else n)
    log.warning("node %s: recovered %d VM(s) %s; %d left stopped with autostart %s", dead, len(moved), moved,
                len(parked), parked)
    ctx.plugins.notify("pvc_node_recovered", node=dead, moved=moved, parked=parked)


def _recover_placed(ctx: NodeContext, dead: str, cluster: Cluster) -> tuple[dict[str, str], list[str]]:
    """Place and write each of the dead node's VMs (under the placement lock): VM -> node, and the parked."""
    moved: dict[str, str] = {}
    parked: list[str] = []
    pending: dict[str, str] = {}
    for vm in sorted(cluster.vms.values(), key=lambda v: v.name):
        mig = vm.migration
        if mig is not None and mig.target == dead and vm.node != dead:
            # It was on its way to the dead node: it stays where it is and runs there.
            ctx.store.update_vm(vm.name, lambda v: target_fenced(v, dead))
            continue
        if vm.node != dead or (vm.state not in RUNNING_STATES and mig is None):
            continue
        decision = place(replace(vm, migration=None), with_pending(cluster, pending), ctx.plugins.selectors)
        if decision.target is None:
            ctx.store.update_vm(vm.name, lambda v: recovery_parked(v, dead, decision.reason))
            parked.append(vm.name)
            continue
        ctx.store.update_vm(vm.name, lambda v, t=decision.target: recovered(v, dead, t))
        pending[vm.name] = moved[vm.name] = decision.target
    return moved, parked

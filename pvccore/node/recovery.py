"""Recovery: a fenced node's VMs started elsewhere by placement, those with no valid target parked."""

from __future__ import annotations

import logging
from dataclasses import replace

from pvccore.domain.models import Cluster
from pvccore.domain.states import DomainState
from pvccore.domain.transitions import recovered, recovery_parked, target_fenced
from pvccore.domain.whatif import plan_recovery
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
    """Carry out the dead node's recovery plan (under the placement lock): VM -> node, and the parked.

    The plan is the one ``pvc node what-if-fail`` shows (pvccore.domain.whatif), made here from the
    snapshot taken under the lock.
    """
    plan = plan_recovery(cluster, dead, ctx.plugins.selectors)
    for name in plan.stays:  # it was on its way to the dead node: it stays where it is and runs there
        ctx.store.update_vm(name, lambda v: target_fenced(v, dead))
    for name, target in plan.targets.items():
        ctx.store.update_vm(name, lambda v, t=target: recovered(v, dead, t))
    for name, decision in plan.parked.items():
        ctx.store.update_vm(name, lambda v, why=decision.reason: recovery_parked(v, dead, why))
    return plan.targets, list(plan.parked)

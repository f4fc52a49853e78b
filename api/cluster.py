"""``/cluster/status``: the cluster at a glance, and cluster-wide settings; ``/cluster/faults``: what needs an
operator."""

from __future__ import annotations

import time
from collections import Counter

from pvccore.domain.fields import CLUSTER_SETTINGS
from pvccore.domain.states import FenceOutcome
from pvccore.errors import PVCError
from pvccore.operations import NPlusOne

from .guards import caught_up, fresh, not_kept
from .inputs import body, field


class Status:
    def __init__(self, deps):
        self.deps = deps

    def on_get(self, req, resp):
        caught_up(self.deps)
        resp.media = status(self.deps.ops, self.deps.guards)

    def on_post(self, req, resp):
        """Change cluster-wide settings (any of :data:`pvccore.domain.fields.CLUSTER_SETTINGS`)."""
        changes = body(req, set(CLUSTER_SETTINGS))
        config = self.deps.ops.set_config(changes)  # an empty body is refused there, naming the settings
        resp.media = {"message": "cluster settings updated", "config": config.to_dict()}

    def on_get_faults(self, req, resp):
        """Every fault record, active ones first (read from ZooKeeper: 503 while it is away)."""
        faults = fresh(self.deps.guards, self.deps.ops.faults, not_kept("faults"))
        resp.media = [f.to_dict() for f in faults]

    def on_post_fault(self, req, resp, fault):
        """``{"acknowledged": true | false}``."""
        acknowledged = field(body(req, {"acknowledged"}), "acknowledged", bool)
        written = self.deps.ops.acknowledge_fault(fault, acknowledged)
        resp.media = {"message": f"fault {fault} {'acknowledged' if acknowledged else 'no longer acknowledged'}",
                      "fault": written.to_dict()}

    def on_delete_fault(self, req, resp, fault):
        self.deps.ops.delete_fault(fault)
        resp.media = {"message": f"fault {fault} deleted"}


MAINTENANCE = ("maintenance mode is on: silent nodes are reported but not fenced, their VMs not recovered, and no "
               "node self-fences (pvc cluster maintenance off)")


def status(ops, guards=None) -> dict:
    """The cluster at a glance; while ZooKeeper is away (``guards``), from the watched view as last seen."""
    snap = ops.view.snapshot()
    fencing, primary, config, faults = fresh(
        guards, lambda: (ops.store.get_fencing(), ops.store.get_primary(), ops.store.get_config(), ops.faults()),
        lambda: (ops.view.shown("fencing"), snap.primary, snap.config, None))
    stale = guards.stale_for() if guards else None
    nodes, vms = snap.nodes.values(), snap.vms.values()
    problems = [f"node {n.name}: daemon {n.daemon_state}" for n in nodes if n.daemon_state not in ("run", "stop")]
    problems += [f"VM {v.name}: failed: {v.reason}" for v in vms if v.state == "fail"]
    for node, f in sorted(fencing.items()):
        if f.state == FenceOutcome.FAILED:
            problems.append(f"node {node}: fencing failed (attempt {f.attempts}): {f.message}; "
                            f"its VMs are not recovered; retrying every {f.retry_in:g}s at most")
        elif f.state == FenceOutcome.HELD:
            problems.append(f"node {node}: silent since {time.strftime('%H:%M:%S', time.localtime(f.at))}; "
                            "maintenance mode: not fenced, its VMs not recovered")
    h = snap.handover
    if h is not None and h.phase == "failed":
        problems.append(f"last handover from {h.source} to {h.target} failed: {h.reason}")
    if stale is not None:
        problems.insert(0, f"ZooKeeper unreachable for {stale:.0f}s: this is the last known state")
    warnings = [MAINTENANCE] if config.maintenance else []
    try:
        check = ops.n_plus_one()
    except PVCError as exc:  # e.g. the cluster's default selector is not registered in this API
        check = NPlusOne(None)
        warnings.append(f"N+1 check failed: {exc.message}")
    at_risk = check.at_risk or {}
    if check.at_risk is None:
        warnings.append("N+1 check not done yet (a large cluster: it runs in the background)")
    warnings += [f"N+1: losing node {node} would leave {len(plan.parked)} VM(s) stopped ({few(plan.parked)}); "
                 f"pvc node what-if-fail {node} shows why" for node, plan in sorted(at_risk.items())]
    return {
        "maintenance": config.maintenance,
        "healthy": not problems,
        "stale": stale is not None,
        "problems": problems,
        "warnings": warnings,
        "faults": None if faults is None else {  # (None: ZooKeeper is away)
            "active": sum(1 for f in faults if f.active),
            "unacknowledged": sum(1 for f in faults if f.active and not f.acknowledged)},
        "n_plus_one": {"ok": None if check.at_risk is None else not at_risk, "age": round(check.age, 1),
                       "stranded": {n: list(p.parked) for n, p in sorted(at_risk.items())}},
        "primary": primary.node if primary else None,
        "handover": h.to_dict() if h is not None else None,
        "fencing": {node: f.to_dict() for node, f in sorted(fencing.items())},
        "nodes": {"total": len(snap.nodes),
                  "daemon_state": dict(Counter(n.daemon_state for n in nodes)),
                  "domain_state": dict(Counter(n.domain_state for n in nodes))},
        "vms": {"total": len(snap.vms), "state": dict(Counter(v.state for v in vms)),
                "migrating": sum(1 for v in vms if v.migration is not None)},
        # Read, not taken from this worker's view: a setting just changed through another worker shows.
        "config": config.to_dict(),
    }


def few(names, shown: int = 5) -> str:
    names = list(names)
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")

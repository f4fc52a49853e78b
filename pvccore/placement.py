"""Placement: choose a node for a VM with its selector, inside its node limit, and say why.

Candidates are nodes whose daemon is ``run`` and domain ``ready``, inside the VM's
node limit, not the VM's current node, and with room for the VM's memory (unless
the cluster allows overcommit). The VM's ``node_selector`` scores them (``default``
means the cluster's ``default_selector``); the highest score wins and ties go to
the name that sorts first. Every node gets a line in the explanation: its score,
or why it was left out.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Mapping

from .errors import ValidationError
from .hookspecs import Selector
from .models import VM, Cluster

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """The outcome of one decision: the chosen node (or None) and every node's line."""

    vm: str
    selector: str
    target: str | None
    scores: Mapping[str, float]
    excluded: Mapping[str, str]

    def explain(self) -> list[dict]:
        """One row per node, in name order: ``{"node", "score"}`` or ``{"node", "excluded"}``."""
        rows = [{"node": n, "score": s} for n, s in self.scores.items()]
        rows += [{"node": n, "excluded": why} for n, why in self.excluded.items()]
        return sorted(rows, key=lambda r: r["node"])

    def to_dict(self) -> dict:
        return {"vm": self.vm, "selector": self.selector, "target": self.target, "nodes": self.explain()}

    @property
    def reason(self) -> str:
        """Why no node was chosen, in one line (empty when one was)."""
        if self.target is not None:
            return ""
        if not self.excluded:
            return f"no node can host VM {self.vm!r}: the cluster has no other node"
        why = "; ".join(f"{n}: {r}" for n, r in sorted(self.excluded.items()))
        return f"no node can host VM {self.vm!r} ({why})"


def resolve_selector(name: str, cluster: Cluster, selectors: Mapping[str, Selector]) -> Selector:
    """Map a VM's ``node_selector`` (or ``default``) to a registered selector."""
    wanted = cluster.config.default_selector if name == "default" else name
    try:
        return selectors[wanted]
    except KeyError:
        known = ", ".join(sorted(selectors)) or "none"
        raise ValidationError(f"unknown selector {wanted!r}; known selectors: {known}", "node_selector") from None


def place(vm: VM, cluster: Cluster, selectors: Mapping[str, Selector]) -> Placement:
    """Choose a target node for ``vm`` from ``cluster`` (a snapshot: no ZooKeeper reads here).

    :raises ValidationError: the VM names a selector that is not registered.
    """
    selector = resolve_selector(vm.meta.node_selector, cluster, selectors)
    score = selector.score
    limit = frozenset(vm.meta.node_limit)
    need = 0 if cluster.config.allow_overcommit else vm.memory_mib
    scores: dict[str, float] = {}
    excluded: dict[str, str] = {}
    best_name, best_score = None, -math.inf
    for name, node in cluster.nodes.items():  # name order: the first of equal scores wins
        if name == vm.node:
            excluded[name] = "current node of the VM"
        elif limit and name not in limit:
            excluded[name] = "outside the VM's node limit"
        elif node.daemon_state != "run":
            excluded[name] = f"daemon state is {node.daemon_state}"
        elif node.domain_state != "ready":
            excluded[name] = f"domain state is {node.domain_state}"
        elif node.memory_free_mib < need:
            excluded[name] = f"not enough free memory ({node.memory_free_mib} MiB free, {need} MiB needed)"
        else:
            try:
                value = score(vm, node, cluster)
            except Exception as exc:  # a faulty plugin must not break placement
                log.exception("selector %s failed on node %s", selector.name, name)
                excluded[name] = f"selector {selector.name} failed: {exc}"
                continue
            if value is None or value != value:  # None or NaN: cannot host
                excluded[name] = f"selector {selector.name} says it cannot host the VM"
                continue
            value = float(value)
            scores[name] = value
            if best_name is None or value > best_score:
                best_name, best_score = name, value
    return Placement(vm=vm.name, selector=selector.name, target=best_name, scores=scores, excluded=excluded)

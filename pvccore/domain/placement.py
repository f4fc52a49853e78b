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
from dataclasses import dataclass, replace
from enum import Enum
from types import MappingProxyType
from typing import Mapping

from pvccore.domain.models import VM, Cluster, Node
from pvccore.domain.states import RUNNING_STATES, DaemonState, DomainState
from pvccore.errors import ConflictError, ValidationError
from pvccore.hookspecs import Selector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """The outcome of one decision: the chosen node (or None) and every node's line."""

    vm: str
    selector: str
    target: str | None
    scores: Mapping[str, float]
    excluded: Mapping[str, str]
    note: str = ""  # e.g. the VM's selector is not registered and the default was used

    def explain(self) -> list[dict]:
        """One row per node, in name order: ``{"node", "score"}`` or ``{"node", "excluded"}``."""
        rows = [{"node": n, "score": s} for n, s in self.scores.items()]
        rows += [{"node": n, "excluded": why} for n, why in self.excluded.items()]
        return sorted(rows, key=lambda r: r["node"])

    def to_dict(self) -> dict:
        out = {"vm": self.vm, "selector": self.selector, "target": self.target, "nodes": self.explain()}
        if self.note:
            out["note"] = self.note
        return out

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

    A VM whose selector is no longer registered (its plugin was removed, or disabled on
    this node) is placed by the cluster's default selector, and the decision says so:
    a flush or a recovery must not stop at it. (New metadata naming an unknown selector
    is refused where it is set, by the API.)

    :raises ValidationError: neither the VM's selector nor the cluster default is registered.
    """
    note = ""
    try:
        selector = resolve_selector(vm.meta.node_selector, cluster, selectors)
    except ValidationError:
        if vm.meta.node_selector == "default":
            raise
        selector = resolve_selector("default", cluster, selectors)
        note = (f"selector {vm.meta.node_selector!r} is not registered (known: {', '.join(sorted(selectors))}); "
                f"placed by the cluster default {selector.name!r}")
        log.warning("VM %s: %s", vm.name, note)
    score = selector.score
    limit = frozenset(vm.meta.node_limit)
    need = 0 if cluster.config.allow_overcommit else vm.memory_mib
    scores: dict[str, float] = {}
    excluded: dict[str, str] = {}
    best_name, best_score = None, -math.inf
    for name, node in cluster.nodes.items():  # name order: the first of equal scores wins
        why = exclusion(vm, node, limit, need)
        if why:
            excluded[name] = why
            continue
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
    return Placement(vm=vm.name, selector=selector.name, target=best_name, scores=scores, excluded=excluded,
                     note=note)


class Excluded(Enum):
    """Why placement leaves a node out (the message says it with the figures)."""

    CURRENT = "current node"
    LIMIT = "node limit"
    DAEMON = "daemon state"
    DOMAIN = "domain state"
    MEMORY = "free memory"


def exclusion(vm: VM, node: Node, limit: frozenset, need: int,
              domains: tuple[DomainState, ...] = (DomainState.READY,)) -> str:
    """Why ``node`` cannot take ``vm`` (empty string when it can).

    ``domains`` are the domain states that accept VMs: ``ready`` for placement;
    a node coming back (``unflush``) also accepts the VMs it calls home.
    """
    return _exclusion(vm, node, limit, need, domains)[1]


def _exclusion(vm: VM, node: Node, limit: frozenset, need: int,
               domains: tuple[DomainState, ...]) -> tuple[Excluded | None, str]:
    if node.name == vm.node:
        return Excluded.CURRENT, "current node of the VM"
    if limit and node.name not in limit:
        return Excluded.LIMIT, "outside the VM's node limit"
    if node.daemon_state != DaemonState.RUN:
        return Excluded.DAEMON, f"daemon state is {node.daemon_state}"
    if node.domain_state not in domains:
        return Excluded.DOMAIN, f"domain state is {node.domain_state}"
    if node.memory_free_mib < need:
        return Excluded.MEMORY, f"not enough free memory ({node.memory_free_mib} MiB free, {need} MiB needed)"
    return None, ""


def check_target(vm: VM, target: str, cluster: Cluster,
                 domains: tuple[DomainState, ...] = (DomainState.READY,)) -> None:
    """Refuse an explicitly given target with the same rules placement applies.

    :raises ValidationError: unknown node, or one that placement would exclude (field ``target``).
    """
    node = cluster.nodes.get(target)
    if node is None:
        raise ValidationError(f"unknown node {target!r}", "target")
    need = 0 if cluster.config.allow_overcommit else vm.memory_mib
    reason, why = _exclusion(vm, node, frozenset(vm.meta.node_limit), need, domains)
    if reason is Excluded.LIMIT:
        why = f"{why} ({', '.join(vm.meta.node_limit)})"
    if why:
        raise ValidationError(f"node {target!r} cannot take VM {vm.name!r}: {why}", "target")


def choose_target(vm: VM, target: str | None, cluster: Cluster, selectors: Mapping[str, Selector],
                  domains: tuple[DomainState, ...] = (DomainState.READY,)) -> tuple[str | None, str]:
    """``(target, "")`` when the given ``target`` may take ``vm`` (else ValidationError), or ``(the placed node,
    "")``, or ``(None, why)`` when no node can take it."""
    if target:
        check_target(vm, target, cluster, domains)
        return target, ""
    decision = place(vm, cluster, selectors)
    return decision.target, decision.reason


def check_size(vm: VM, cluster: Cluster) -> None:
    """Refuse a VM larger than every node it may run on (its node limit, or any node), in vCPUs or memory.

    Nodes that have not reported their figures yet are not counted; with none reported, nothing is refused.
    :raises ValidationError: field ``xml``, naming the largest node's figure.
    """
    limit = frozenset(vm.meta.node_limit)
    nodes = [n for n in cluster.nodes.values() if (not limit or n.name in limit) and n.cpu_count > 0]
    if not nodes:
        return
    cpus = max(n.cpu_count for n in nodes)
    if vm.vcpus > cpus:
        raise ValidationError(f"VM {vm.name!r} has {vm.vcpus} vCPUs; the largest node it may run on has {cpus} CPUs",
                              "xml")
    memory = max(n.memory_total_mib for n in nodes)
    if vm.memory_mib > memory:
        raise ValidationError(f"VM {vm.name!r} has {vm.memory_mib} MiB of memory; the largest node it may run on "
                              f"has {memory} MiB", "xml")


def check_unique_uuid(vm: VM, cluster: Cluster) -> None:
    """Two VMs with one UUID: libvirt refuses the second wherever they meet.

    :raises ConflictError: field ``xml``.
    """
    other = next((o.name for o in cluster.vms.values() if o.uuid == vm.uuid and o.name != vm.name), None)
    if other is not None:
        raise ConflictError(f"UUID {vm.uuid} is already VM {other!r}'s; remove the <uuid> to get a new one", "xml")


def pending_moves(cluster: Cluster) -> dict[str, str]:
    """VMs headed for a node whose published figures do not show them yet: VM name -> node.

    A VM counts against its migration's target, or against its own node when it
    should run there; once the node's keepalive lists it, it is no longer pending.
    """
    nodes = cluster.nodes
    out = {}
    for vm in cluster.vms.values():
        if vm.migration is not None:
            dest = vm.migration.target
        elif vm.state in RUNNING_STATES:
            dest = vm.node
        else:
            continue
        node = nodes.get(dest)
        if node is not None and vm.name not in node.running_vms:
            out[vm.name] = dest
    return out


def current(cluster: Cluster) -> Cluster:
    """The cluster as placement should see it: published figures plus :func:`pending_moves`."""
    return with_pending(cluster, pending_moves(cluster))


def with_pending(cluster: Cluster, moves: Mapping[str, str]) -> Cluster:
    """Count VMs already sent to a node (``moves``: VM name -> target) that its figures do not show yet.

    Keepalives lag behind a burst of placements (a flush, VMs defined one after
    another); without this, every VM of the burst would be placed as if the first
    had not happened.
    """
    nodes = dict(cluster.nodes)
    for vm_name, target in moves.items():
        vm, node = cluster.vms.get(vm_name), nodes.get(target)
        if vm is not None and node is not None:
            nodes[target] = with_vm(node, vm)
    return replace(cluster, nodes=MappingProxyType(nodes))


def with_vm(node: Node, vm: VM) -> Node:
    """``node`` with ``vm`` counted in its figures (unchanged when its figures already show it)."""
    if vm.name in node.running_vms:
        return node
    return replace(
        node,
        memory_free_mib=node.memory_free_mib - vm.memory_mib,
        memory_used_mib=node.memory_used_mib + vm.memory_mib,
        memory_provisioned_mib=node.memory_provisioned_mib + vm.memory_mib,
        vcpus_allocated=node.vcpus_allocated + vm.vcpus,
        vm_count=node.vm_count + 1,
        running_vms=node.running_vms + (vm.name,),
    )

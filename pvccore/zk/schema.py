"""Every ZooKeeper path pvc uses, under one configurable root.

Layout (``<root>`` defaults to ``/pvc``; tests and several clusters can share one
ZooKeeper by using different roots)::

    <root>/config                  ClusterConfig JSON
    <root>/stats                   counters (migrations, fences) for metrics, JSON object of ints
    <root>/primary                 PrimaryRecord JSON: which coordinator is primary
    <root>/handover                Handover JSON: the current or last primary handover and its phase
    <root>/nodes/<node>            Node JSON (states, and figures written when they change)
    <root>/nodes/<node>/keepalive  the node's liveness record, written every keepalive interval (tiny)
    <root>/nodes/<node>/alive      ephemeral, present while the node daemon's session lives
    <root>/nodes/<node>/fence      the node's fence configuration: JSON list of {fencer, params} (secret)
    <root>/nodes/<node>/stop-flush empty: the node is flushed by its own clean stop (ready_on_boot readies it)
    <root>/fencing                 FenceStatus JSON per node: the last fence attempt and its result
    <root>/vms/<vm>                VM JSON (state, node, last node, metadata)
    <root>/vms/<vm>/xml            the VM's libvirt domain XML
    <root>/placed/<node>/<vm>      empty: one per VM that node's daemon acts on (``VM.involved``), written in
                                   the same transaction as the VM document; a daemon watches its own only
    <root>/faults/<kind>.<subject> Fault JSON: something that needs an operator, kept by the primary
    <root>/logs/<node>             the tail of the node daemon's own log (text), written by that daemon
    <root>/consoles/<vm>           the tail of the VM's serial console (text), written by its node's daemon
    <root>/locks/<name>            lock recipes (kazoo Lock / ReadLock / WriteLock)
"""

from __future__ import annotations

import re

from pvccore.errors import ValidationError
from pvccore.domain.fields import check_name
from pvccore.domain.models import check_fault_id

DEFAULT_ROOT = "/pvc"
_ROOT_RE = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")
_LOCK_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class Schema:
    """Path builder for one cluster root."""

    __slots__ = ("root", "config", "stats", "primary", "handover", "fencing", "nodes", "vms", "placed", "faults",
                 "logs", "consoles", "locks")

    def __init__(self, root: str = DEFAULT_ROOT):
        if not isinstance(root, str) or not _ROOT_RE.match(root):
            raise ValidationError(f"invalid ZooKeeper root {root!r}: an absolute path like /pvc", "root")
        self.root = root
        self.config = f"{root}/config"
        self.stats = f"{root}/stats"
        self.primary = f"{root}/primary"
        self.handover = f"{root}/handover"
        self.fencing = f"{root}/fencing"
        self.nodes = f"{root}/nodes"
        self.vms = f"{root}/vms"
        self.placed = f"{root}/placed"
        self.faults = f"{root}/faults"
        self.logs = f"{root}/logs"
        self.consoles = f"{root}/consoles"
        self.locks = f"{root}/locks"

    def node(self, name: str) -> str:
        return f"{self.nodes}/{check_name(name, 'node')}"

    def node_alive(self, name: str) -> str:
        return f"{self.node(name)}/alive"

    def node_keepalive(self, name: str) -> str:
        return f"{self.node(name)}/keepalive"

    def node_stop_flush(self, name: str) -> str:
        """Present while the node is flushed by its own clean stop (flush_on_shutdown): its start readies it."""
        return f"{self.node(name)}/stop-flush"

    def node_fence(self, name: str) -> str:
        return f"{self.node(name)}/fence"

    def vm(self, name: str) -> str:
        return f"{self.vms}/{check_name(name, 'VM')}"

    def vm_xml(self, name: str) -> str:
        return f"{self.vm(name)}/xml"

    def node_placed(self, name: str) -> str:
        return f"{self.placed}/{check_name(name, 'node')}"

    def placed_vm(self, node: str, vm: str) -> str:
        return f"{self.node_placed(node)}/{check_name(vm, 'VM')}"

    def node_log(self, name: str) -> str:
        return f"{self.logs}/{check_name(name, 'node')}"

    def vm_console(self, name: str) -> str:
        return f"{self.consoles}/{check_name(name, 'VM')}"

    def fault(self, fault_id: str) -> str:
        return f"{self.faults}/{check_fault_id(fault_id)}"

    def lock(self, name: str) -> str:
        if not _LOCK_RE.match(name):
            raise ValidationError(f"invalid lock name {name!r}")
        return f"{self.locks}/{name}"

    def containers(self) -> tuple[str, ...]:
        """Paths that must exist before anything else is written."""
        return (self.nodes, self.vms, self.placed, self.faults, self.logs, self.consoles, self.locks)

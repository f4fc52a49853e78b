"""Cluster operations: what the API (and Python callers) ask of the cluster.

Each operation validates against the watched view, then writes the wanted state
to ZooKeeper with a compare-and-set whose update function re-checks the
preconditions on the freshly read document; the node daemons do the work.
Nothing here talks to libvirt. ``wait_*`` helpers block on watches, not sleeps.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Mapping

from pvccore.domain.domainxml import parse_domain_xml, with_name, with_uuid
from pvccore.domain.fields import VM_META_FIELDS, check
from pvccore.domain.models import (VM, Cluster, ClusterConfig, ConfirmedOff, Fault, FenceStatus, Handover, Node,
                                   Timing, VMMeta, check_fault_id, check_name)
from pvccore.domain.placement import (Placement, check_size, check_unique_uuid, choose_target, place,
                                      resolve_selector)
from pvccore.domain.states import (ACCEPTING, RESTING_STATES, RUNNING_STATES, USER_VM_STATES, CoordinatorState, DaemonState,
                                   DomainState, HandoverPhase, MigrationKind, VMState)
from pvccore.domain.transitions import domain_requested, is_active, started_elsewhere
from pvccore.domain.whatif import RecoveryPlan, n_plus_one, plan_recovery
from pvccore.errors import ConflictError, NotFoundError, ValidationError
from pvccore.plugins import PluginSet
from pvccore.zk.placing import placing, request_migration
from pvccore.zk.store import Store
from pvccore.zk.view import ClusterView

log = logging.getLogger(__name__)


class Operations:
    def __init__(self, store: Store, view: ClusterView, plugins: PluginSet):
        self.store = store
        self.view = view
        self.plugins = plugins
        self._n_plus_one = NPlusOneCheck(plugins)

    # -- helpers ---------------------------------------------------------------------

    def _seen(self, kind: str, name: str, written):
        """Return ``written`` once the view shows it (read your own writes)."""
        path, zxid = self.store.last_write
        if path == (self.store.paths.vm(name) if kind == "vm" else self.store.paths.node(name)):
            self.view.wait_seen(kind, name, zxid)
        return written

    def _vm(self, name: str) -> VM:
        check_name(name, "VM")
        return self.store.get_vm(name)

    def _node(self, name: str) -> Node:
        check_name(name, "node")
        return self.store.get_node(name)

    def validate_meta(self, meta: VMMeta, cluster: Cluster) -> None:
        """Names in metadata must exist: the selector is registered, limit nodes are known."""
        resolve_selector(meta.node_selector, cluster, self.plugins.selectors)
        unknown = [n for n in meta.node_limit if n not in cluster.nodes]
        if unknown:
            raise ValidationError(f"unknown node {unknown[0]!r} in node_limit; known nodes: "
                                  f"{', '.join(cluster.nodes) or 'none'}", "node_limit")

    def placement(self, name: str) -> Placement:
        """The placement explanation for a VM as it stands: every node's score or exclusion."""
        return place(self._vm(name), self.view.placement_snapshot(), self.plugins.selectors)

    def what_if_fail(self, name: str) -> RecoveryPlan:
        """Where node ``name``'s VMs would go if it failed now: the plan its recovery would carry out."""
        cluster = self.view.placement_snapshot()
        if check_name(name, "node") not in cluster.nodes:
            raise NotFoundError(f"node {name!r} not found")
        return plan_recovery(cluster, name, self.plugins.selectors)

    # -- faults ---------------------------------------------------------------------------

    def faults(self) -> list[Fault]:
        """Every fault record: active ones first, then the most recently seen."""
        return sorted(self.store.get_faults().values(), key=lambda f: (not f.active, -f.last_seen, f.id))

    def acknowledge_fault(self, fault_id: str, acknowledged: bool = True) -> Fault:
        """An operator has seen it: it no longer counts against the cluster's health, until it comes back."""
        check_fault_id(fault_id)

        def ack(current: Fault | None) -> Fault:
            if current is None:
                raise NotFoundError(f"fault {fault_id!r} not found")
            return replace(current, acknowledged=acknowledged)

        return self.store.update_fault(fault_id, ack)

    def delete_fault(self, fault_id: str) -> None:
        """Forget it and its history (if its condition is still there, the primary raises it again, anew)."""
        self.store.delete_fault(check_fault_id(fault_id))

    def n_plus_one(self) -> "NPlusOne":
        """Every node whose loss would leave a VM with no node to run on (see :class:`NPlusOneCheck`)."""
        return self._n_plus_one.get(self.view.placement_snapshot())

    # -- VMs -----------------------------------------------------------------------------

    def define_vm(self, xml: str, meta: Mapping[str, Any] | None = None, target: str | None = None,
                  start: bool = True) -> VM:
        """Store a VM from libvirt XML with its metadata on ``target`` or a placed node."""
        spec = parse_domain_xml(xml)
        check_name(spec.name, "VM", "xml")
        vm_meta = kept_protected(VMMeta(), VMMeta().updated(meta or {}))
        cluster = self.view.placement_snapshot()
        self.validate_meta(vm_meta, cluster)
        vm = VM(name=spec.name, uuid=spec.uuid, memory_mib=spec.memory_mib, vcpus=spec.vcpus,
                state=VMState.START if start else VMState.STOP, meta=vm_meta)
        if spec.name in cluster.vms:
            raise ConflictError(f"VM {spec.name!r} already exists", "xml")
        check_size(vm, cluster)
        with placing(self.store, self.view) as fresh:  # decided and written with no other placement between
            cluster = fresh()
            check_unique_uuid(vm, cluster)
            created = self.store.create_vm(replace(vm, node=self._target(vm, target, cluster)), spec.xml)
        self.view.wait_for(lambda c: spec.name in c.vms, 10)
        return created

    def _target(self, vm: VM, target: str | None, cluster: Cluster) -> str:
        """``target`` if it may take ``vm`` (else ValidationError), or the placed node (else ConflictError)."""
        chosen, why = choose_target(vm, target, cluster, self.plugins.selectors)
        if chosen is None:
            raise ConflictError(why, "target")
        return chosen

    def set_meta(self, name: str, changes: Mapping[str, Any]) -> VM:
        """Change a VM's metadata; a node limit must leave it a node large enough (400, field ``node_limit``)."""
        current = self._vm(name)
        new_meta = current.meta.updated(changes)
        snapshot = self.view.snapshot()
        self.validate_meta(new_meta, snapshot)
        try:
            check_size(replace(current, meta=new_meta), snapshot)
        except ValidationError as exc:
            raise ValidationError(exc.message, "node_limit") from None
        return self._seen("vm", name, self.store.update_vm(name, lambda vm: replace(
            vm, meta=kept_protected(vm.meta, vm.meta.updated(changes)))))

    def tag_vm(self, name: str, add: Any = (), remove: Any = (), protected: bool = False) -> VM:
        """Add or remove a VM's tags; ``protected`` adds them as protected tags, and is needed to remove one.

        :raises ValidationError: a bad tag name, or a protected tag removed without ``protected``.
        :raises NotFoundError: a tag to remove that the VM does not have.
        """
        field = VM_META_FIELDS["tags"]
        add, remove = check(field, add), check(field, remove)
        if not add and not remove:
            raise ValidationError("give at least one tag to add or remove", "tags")

        def change(vm: VM) -> VM:
            tags, kept = set(vm.meta.tags), set(vm.meta.protected_tags)
            missing = [t for t in remove if t not in tags | kept]
            if missing:
                raise NotFoundError(f"VM {name} has no tag {missing[0]!r}")
            locked = [t for t in remove if t in kept]
            if locked and not protected:
                raise ValidationError(f"tag {locked[0]!r} of VM {name} is protected: remove it with --protected "
                                      "(\"protected\": true) if you mean to", "protected")
            tags, kept = tags - set(remove), kept - set(remove)
            if protected:
                tags, kept = tags - set(add), kept | set(add)
            else:
                tags |= set(add) - kept
            return replace(vm, meta=vm.meta.updated({"tags": sorted(tags), "protected_tags": sorted(kept)}))

        return self._seen("vm", name, self.store.update_vm(check_name(name, "VM"), change))

    def rename_vm(self, name: str, new_name: Any) -> VM:
        """Give a stopped VM another name: its document, XML and index entries move in one transaction.

        :raises ConflictError: it runs or moves (stop it first), or the name is taken.
        """
        check_name(name, "VM")
        new_name = check_name(new_name, "VM", "name")
        if new_name == name:
            raise ValidationError(f"VM {name!r} has that name already", "name")

        def rename(vm: VM, xml: str) -> tuple[VM, str]:
            if is_active(vm) or self._runs(vm):
                raise ConflictError(f"VM {name!r} is {vm.state}{' and moving' if vm.migration else ''}: only a "
                                    "stopped VM is renamed (pvc vm stop first)", "state")
            renamed = with_name(xml, new_name)
            if parse_domain_xml(renamed).name != new_name:  # the XML says the same as the document
                raise ValidationError(f"the XML of VM {name!r} cannot take the name {new_name!r}", "name")
            return replace(vm, name=new_name), renamed

        return self._seen("vm", new_name, self.store.rename_vm(name, rename))

    def replace_xml(self, name: str, xml: str) -> VM:
        """Replace a VM's XML (same name, same UUID); memory and vCPUs follow the new XML.

        The VM must still fit a node it may run on (400). One that runs (or should) takes its new
        memory on its node at its next start: the growth must fit that node's free memory unless the
        cluster allows overcommit (409), decided under the placement lock like every other claim on
        that memory. A stopped VM's size is checked where it starts (:meth:`set_state`). Refused
        during a migration (409): its target was chosen for the old size.
        """
        spec = parse_domain_xml(xml)
        if spec.name != name:
            raise ValidationError(f"the XML names VM {spec.name!r}, not {name!r}", "xml")

        def resized(vm: VM) -> VM:
            if not spec.generated_uuid and spec.uuid != vm.uuid:
                raise ValidationError(f"the XML's UUID {spec.uuid} differs from the VM's {vm.uuid}", "xml")
            return replace(vm, memory_mib=spec.memory_mib, vcpus=spec.vcpus)

        current = self._vm(name)
        check_size(resized(current), self.view.snapshot())
        with placing(self.store, self.view) as fresh:  # memory is placement: no other decision in between
            cluster = fresh()

            def update(vm: VM) -> VM:
                if vm.migration is not None:
                    raise ConflictError(f"VM {name!r} is migrating to {vm.migration.target}; replace its XML once "
                                        "that is done", "xml")
                new = resized(vm)
                _check_growth(vm, new, cluster)
                return new

            new_xml = with_uuid(spec.xml, current.uuid) if spec.generated_uuid else spec.xml
            written = self.store.replace_vm_xml(name, new_xml, update)
        self.view.forget_xml(name)  # read your own write; other processes' caches follow their watches
        return self._seen("vm", name, written)

    def set_state(self, name: str, state: str) -> VM:
        """Ask for a VM state. Starting a VM that is not running goes through :meth:`_start`."""
        if state not in USER_VM_STATES:
            raise ValidationError(f"state must be one of {', '.join(USER_VM_STATES)}; got {state!r}", "state")
        state = VMState(state)
        if state == VMState.START and not is_active(self._vm(name)):
            return self._start(name)

        def change(vm: VM) -> VM:
            if vm.migration is not None:
                raise ConflictError(f"VM {name!r} is migrating to {vm.migration.target}; try again when it is done",
                                    "state")
            if state == VMState.RESTART and vm.state != VMState.START:
                raise ConflictError(f"VM {name!r} is not running (state {vm.state}); start it instead", "state")
            return replace(vm, state=state, reason="")

        return self._seen("vm", name, self.store.update_vm(name, change))

    def _start(self, name: str) -> VM:
        """Start a VM that is not running where it can run now.

        At home when its node's daemon runs, the node accepts VMs (``ready``, or ``unflush``
        coming back) and has room for it (unless the cluster allows overcommit). Otherwise (the
        node is flushed, being flushed or fence-flushed, its daemon is down, or it is full) the
        VM is placed like a flushed VM: on the node its selector picks inside its node limit,
        keeping its home as ``last_node`` so the home's next ready brings it back, with
        ``node_autostart`` cleared (it is running). With no node to take it: 409, nothing changed.
        Decided and written under the placement lock: a start claims memory as a placement does.
        """
        with placing(self.store, self.view) as fresh:
            vm, cluster = self._vm(name), fresh()
            why = _home_refuses(vm, cluster)
            target = vm.node
            if why:
                decision = place(vm, cluster, self.plugins.selectors)
                if decision.target is None:
                    raise ConflictError(f"VM {name!r} cannot start: {why}, and {decision.reason}", "state")
                target = decision.target

            def start(v: VM) -> VM:
                if v.migration is not None:
                    raise ConflictError(f"VM {name!r} is migrating to {v.migration.target}; try again when it is "
                                        "done", "state")
                if v.node != vm.node or v.memory_mib != vm.memory_mib:
                    raise ConflictError(f"VM {name!r} changed meanwhile; try again", "state")
                if target == v.node:
                    return replace(v, state=VMState.START, reason="")
                if is_active(v):
                    raise ConflictError(f"VM {name!r} was started on {v.node} meanwhile", "state")
                return started_elsewhere(v, target, why)

            written = self.store.update_vm(name, start)
        return self._seen("vm", name, written)

    def undefine(self, name: str, force: bool = False, timeout: float = 60.0) -> None:
        """Remove a VM. A running one is refused, or with ``force`` stopped first (waiting up to ``timeout``).

        A VM in the middle of a migration is stopped once the migration has settled (where it
        ended up), within the same ``timeout``: a migration is never cut off half-way, and the
        operator who forced the removal gets it without asking again.
        """
        vm = self._vm(name)
        if is_active(vm):
            if not force:
                raise ConflictError(f"VM {name!r} is running (state {vm.state}); stop it first or force", "state")
            deadline = time.monotonic() + timeout
            self._stop_when_settled(name, deadline, timeout)
            left = max(0.0, deadline - time.monotonic())
            if not self.wait_vm(name, lambda v: v is None or (not is_active(v) and not self._runs(v)), left):
                raise ConflictError(f"VM {name!r} did not stop within {timeout:g}s", "state")

        def still_stopped(v: VM) -> None:
            if is_active(v):
                raise ConflictError(f"VM {name!r} was started again meanwhile", "state")

        self.store.delete_vm(name, still_stopped)

    def _stop_when_settled(self, name: str, deadline: float, timeout: float) -> None:
        """Ask for ``stop`` as soon as no migration is in progress; a new one (a flush) is waited out too."""

        def stop(v: VM) -> VM:
            if v.migration is not None:
                raise _Migrating()
            return replace(v, state=VMState.STOP, reason="") if is_active(v) else v

        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.wait_vm(name, lambda v: v is None or v.migration is None, left):
                raise ConflictError(f"VM {name!r} is still migrating after {timeout:g}s; try again", "state")
            try:
                self._seen("vm", name, self.store.update_vm(name, stop))
                return
            except _Migrating:  # the view had not shown it yet: let it catch up, then wait for it
                self.view.barrier(max(0.1, deadline - time.monotonic()))
            except NotFoundError:
                return

    def _runs(self, vm: VM) -> bool:
        """Whether the VM's node last reported it running."""
        node = self.view.node(vm.node)
        return bool(node and vm.name in node.running_vms)

    # -- migration ---------------------------------------------------------------------------

    def migrate(self, name: str, target: str | None = None, force_live: bool = False) -> VM:
        """Send a VM to ``target`` (or the placed node) for now; ``unmigrate`` brings it back."""
        return self._request_migration(name, MigrationKind.MIGRATE, target, force_live)

    def move(self, name: str, target: str | None = None, force_live: bool = False) -> VM:
        """Send a VM to ``target`` (or the placed node) for good: it forgets its last node.

        A migrated VM moved to the node it is on stays where it is, for good: its last node is forgotten
        (no later ready or unmigrate brings it back).
        """
        vm = self._vm(name)
        if target is not None and target == vm.node and vm.migration is None:
            if not vm.last_node:
                raise ValidationError(f"VM {name!r} is on {target} already (its current node) and has no last node "
                                      "to forget", "target")

            def settle(current: VM) -> VM:
                if current.node != target or current.migration is not None:
                    raise ConflictError(f"VM {name!r} moved meanwhile; look again", "target")
                return replace(current, last_node="", reason=f"moved to {target} for good")

            return self._seen("vm", name, self.store.update_vm(name, settle))
        return self._request_migration(name, MigrationKind.MOVE, target, force_live)

    def unmigrate(self, name: str, force_live: bool = False) -> VM:
        vm = self._vm(name)
        if not vm.last_node:
            raise ConflictError(f"VM {name!r} has no last node to return to", "action")
        return self._request_migration(name, MigrationKind.UNMIGRATE, vm.last_node, force_live, domains=ACCEPTING)

    def _request_migration(self, name: str, kind: MigrationKind, target: str | None, force_live: bool,
                           domains: tuple[DomainState, ...] = (DomainState.READY,)) -> VM:
        self._vm(name)
        written, why = request_migration(self.store, self.view, self.plugins.selectors, name, kind, target,
                                         domains=domains, force_live=force_live)
        if written is None:
            raise ConflictError(why, "target")
        return self._seen("vm", name, written)

    # -- nodes ---------------------------------------------------------------------------------

    def flush(self, node: str) -> Node:
        """Ask ``node`` to move its VMs away; its daemon ends in domain state ``flushed``.

        :raises ConflictError: the node is being recovered after a fence.
        """
        return self._domain_request(node, DomainState.FLUSH)

    def ready(self, node: str) -> Node:
        """Ask ``node`` to take its VMs back; its daemon ends in domain state ``ready``.

        :raises ConflictError: the node is being recovered after a fence.
        """
        return self._domain_request(node, DomainState.UNFLUSH)

    def _domain_request(self, node: str, new: DomainState) -> Node:
        self._node(node)
        return self._seen("node", node, self.store.update_node(node, lambda n: domain_requested(n, new)))

    def request_primary(self, node: str) -> Handover:
        """Start a planned handover of the primary role to coordinator ``node``."""
        snap = self.view.snapshot()
        target = snap.nodes.get(check_name(node, "node"))
        if target is None:
            raise NotFoundError(f"node {node!r} not found")
        if target.coordinator_state == CoordinatorState.CLIENT:
            raise ConflictError(f"node {node!r} is not a coordinator", "state")
        if target.daemon_state != DaemonState.RUN:
            raise ConflictError(f"node {node!r} is not running (daemon {target.daemon_state})", "state")
        record = self.store.get_primary()
        if record is None:
            raise ConflictError("there is no primary yet: one is elected when a coordinator starts", "state")
        if record.node == node:
            raise ConflictError(f"node {node!r} is already primary", "state")
        handover = self.store.start_handover(Handover.new(record.node, node))
        self.view.wait_for(lambda c: c.handover is not None and c.handover.id == handover.id, 10)
        return handover

    def wait_handover(self, handover: Handover, timeout: float) -> Handover | None:
        """Wait until ``handover`` is over, as a whole: failed, or finished with its target primary.

        The view applies each znode's change on its own, so the handover record can read
        ``done`` a moment before the primary record and the node's state do.
        Returns the final record, or None on timeout.
        """

        def over(c: Cluster) -> bool:
            h = c.handover
            if h is None or h.id != handover.id or h.active:
                return False
            target = c.nodes.get(h.target)
            return h.phase == HandoverPhase.FAILED or (c.primary is not None and c.primary.node == h.target
                                                       and target is not None
                                                       and target.coordinator_state == CoordinatorState.PRIMARY)

        if not self.view.wait_for(over, timeout):
            return None
        return self.view.snapshot().handover

    def request_secondary(self, node: str) -> Handover:
        """Hand the primary role away from ``node`` to the first other running coordinator."""
        record = self.store.get_primary()
        check_name(node, "node")
        if record is None or record.node != node:
            raise ConflictError(f"node {node!r} is not primary", "state")
        others = [n.name for n in self.view.snapshot().nodes.values()
                  if n.name != node and n.takes_primary]
        if not others:
            raise ConflictError("no other running coordinator can take over", "state")
        return self.request_primary(others[0])

    # -- fencing -------------------------------------------------------------------------------

    def set_fence_config(self, node: str, entries: Any) -> list[dict]:
        """Replace a node's ordered fence configuration: ``[{"fencer": name, "params": {...}}, ...]``.

        A secret param given as ``***`` (the mask, as in a configuration read back, edited and
        posted again) keeps the value stored for the same entry (same place, same fencer).
        """
        self._node(node)
        stored = self.store.get_fence_config(node)
        if not isinstance(entries, list) or len(entries) > 8:
            raise ValidationError("entries must be a list of at most 8 {fencer, params} objects", "entries")
        clean = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or set(entry) - {"fencer", "params"} or "fencer" not in entry:
                raise ValidationError(f"entries[{i}] must be an object with 'fencer' and 'params'", "entries")
            if entry["fencer"] not in self.plugins.fencers:
                known = ", ".join(sorted(self.plugins.fencers)) or "none"
                raise ValidationError(f"entries[{i}]: unknown fencer {entry['fencer']!r}; known fencers: {known}",
                                      "entries")
            params = entry.get("params", {})
            if not isinstance(params, dict) or len(params) > 64 or not all(
                    isinstance(k, str) and _PARAM.match(k) and isinstance(v, (str, int, float, bool))
                    and (not isinstance(v, float) or math.isfinite(v))
                    and "\n" not in str(v) and len(str(v)) <= 1024 for k, v in params.items()):
                raise ValidationError(f"entries[{i}].params must map names to single-line values", "entries")
            before = stored[i] if i < len(stored) and stored[i].get("fencer") == entry["fencer"] else None
            clean.append({"fencer": entry["fencer"], "params": self._unmasked(i, entry["fencer"], params, before)})
        self.store.set_fence_config(node, clean)
        return self.mask_fence_config(clean)

    def _unmasked(self, i: int, fencer: str, params: dict, before: dict | None) -> dict:
        out = dict(params)
        for key, value in params.items():
            if value != MASK or not self._secret(fencer, key):
                continue
            kept = (before or {}).get("params", {}).get(key)
            if kept is None:
                raise ValidationError(f"entries[{i}].params.{key} is {MASK!r}, the mask of a secret, but no value is "
                                      f"stored for it to keep: give the real value", "entries")
            out[key] = kept
        return out

    def _secret(self, fencer: str, param: str) -> bool:
        known = self.plugins.fencers.get(fencer)
        return known is None or known.is_secret(param)  # a fencer this process lacks: all secret

    def mask_fence_config(self, entries: list[dict]) -> list[dict]:
        """Credentials never leave ZooKeeper through the API: every param its fencer does not call public
        is replaced by the mask."""
        return [{"fencer": e.get("fencer"),
                 "params": {k: (MASK if self._secret(str(e.get("fencer")), k) else v)
                            for k, v in (e.get("params") or {}).items()}} for e in entries]

    def fence_config(self, node: str) -> list[dict]:
        """A node's fence configuration with secrets masked."""
        self._node(node)
        return self.mask_fence_config(self.store.get_fence_config(node))

    def confirm_off(self, node: str) -> Node:
        """Record an operator's word that dead ``node`` is powered off, for when no fencer can say so.

        Taken as a confirmed fence by the primary at its next look (its VMs are recovered), and
        only while the node is ``dead``: a running or stopped node is refused, and the word is
        for this death only (the node's last keepalive): a node that writes again is no longer
        covered by it. With the self-fence disarmed (``failed_fence = none``, the default) this is the
        way on when a node's BMC is gone with its power.
        """
        current = self._node(node)
        if current.daemon_state != DaemonState.DEAD:
            raise ConflictError(f"node {node} is {current.daemon_state}, not dead: only a node the cluster could "
                                "not fence can be confirmed off", "node")
        confirmed = ConfirmedOff(at=time.time(), keepalive=current.keepalive)
        self.store.update_fencing(node, lambda status: replace(status or FenceStatus(), confirmed_off=confirmed))
        return current

    def set_config(self, changes: Mapping[str, Any]):
        """Change cluster settings; refused when the result could fence a healthy node (see ClusterConfig)."""
        if not changes:
            raise ValidationError(f"give at least one setting: {', '.join(f.name for f in fields(ClusterConfig))}")
        timing = Timing.of(self.view.snapshot().nodes.values())
        new = self.view.config.updated(changes)
        new.check_timing(timing, changes)
        if "default_selector" in changes:
            resolve_selector(new.default_selector, Cluster.build([], config=new), self.plugins.selectors)

        def update(current: ClusterConfig) -> ClusterConfig:
            result = current.updated(changes)
            result.check_timing(timing, changes)  # on what is stored now, not what the view held
            return result

        written = self.store.update_config(update)
        self.view.wait_for(lambda c: c.config == written, 10)  # read your own write
        return written

    # -- waiting -------------------------------------------------------------------------------

    def wait_vm(self, name: str, predicate: Callable[[VM | None], bool], timeout: float) -> bool:
        return self.view.wait_for(lambda c: predicate(c.vms.get(name)), timeout)

    def state_reached(self, name: str, state: str) -> Callable[[Cluster], bool]:
        """A predicate on the cluster: the VM's ``state`` request has been carried out (or has failed)."""
        running = state in (VMState.START, VMState.RESTART)

        def reached(c: Cluster) -> bool:
            vm = c.vms.get(name)
            if vm is None or vm.state == VMState.FAIL:
                return True
            node = c.nodes.get(vm.node)
            runs = bool(node and name in node.running_vms)
            want = VMState.START if running else (VMState.DISABLE if state == VMState.DISABLE else VMState.STOP)
            return vm.migration is None and vm.state == want and runs == running

        return reached

    def wait_settled(self, name: str, timeout: float = 60.0) -> bool:
        """Wait until the VM has no migration in progress and is in a resting state."""
        return self.wait_vm(name, lambda v: v is None or (v.migration is None and v.state in RESTING_STATES),
                            timeout)

    def wait_node(self, name: str, predicate: Callable[[Node | None], bool], timeout: float) -> bool:
        return self.view.wait_for(lambda c: predicate(c.nodes.get(name)), timeout)


_PARAM = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
MASK = "***"


class _Migrating(Exception):
    """A compare-and-set found a migration in progress (internal: the caller waits and tries again)."""


def _home_refuses(vm: VM, cluster: Cluster) -> str:
    """Why the VM's own node cannot start it now, as ``its node ... is ...`` (empty when it can)."""
    node = cluster.nodes.get(vm.node)
    if node is None:
        return f"its node {vm.node or '(none)'} is not in the cluster"
    if node.daemon_state != DaemonState.RUN:
        return f"its node {node.name} is {node.daemon_state}"
    if node.domain_state not in ACCEPTING:
        return f"its node {node.name} is {node.domain_state}"
    need = 0 if cluster.config.allow_overcommit or vm.name in node.running_vms else vm.memory_mib
    if node.memory_free_mib < need:
        return f"its node {node.name} has {node.memory_free_mib} MiB free, {need} MiB needed"
    return ""


def _check_growth(old: VM, new: VM, cluster: Cluster) -> None:
    """A VM that runs (or should) on its node takes its new memory there at its next start: it must fit."""
    node = cluster.nodes.get(old.node)
    grow = new.memory_mib - old.memory_mib
    if grow <= 0 or node is None or cluster.config.allow_overcommit or old.state not in RUNNING_STATES:
        return
    if node.memory_free_mib < grow:
        raise ConflictError(f"VM {old.name!r} runs on {node.name}, which has {node.memory_free_mib} MiB free: "
                            f"{grow} MiB more does not fit (move it first, or allow overcommit)", "xml")


def kept_protected(old: VMMeta, new: VMMeta) -> VMMeta:
    """``new``, unless it drops a protected tag of ``old`` (only :meth:`Operations.tag_vm` with ``protected`` does)."""
    dropped = sorted(set(old.protected_tags) - set(new.protected_tags))
    if dropped:
        raise ValidationError(f"tag {dropped[0]!r} is protected: remove it with pvc vm tag remove --protected "
                              "(POST /vm/<vm>/tags with \"protected\": true)", "protected_tags")
    return replace(new, tags=tuple(t for t in new.tags if t not in new.protected_tags))


@dataclass(frozen=True)
class NPlusOne:
    """The N+1 check's answer: node -> plan for each node whose loss strands a VM; ``None`` while the first check
    of a large cluster is still running. ``age``: 0 when computed on the current snapshot, else the seconds
    since it was computed (on one the cluster has moved on from)."""

    at_risk: dict[str, RecoveryPlan] | None
    age: float = 0.0


class NPlusOneCheck:
    """:func:`pvccore.domain.whatif.n_plus_one`, cached per placement snapshot (a change of a node, a VM or the
    settings; keepalives do not count).

    It places every VM of the cluster once per node (``bench/placement.py``: 2 ms at 10 nodes, 92 ms at 100,
    11 s at 1,000 with 20 VMs each). A check expected to take longer than :attr:`SYNC_BUDGET` runs in a
    thread of its own, and the answer is the last one with its age, renewed at most every :attr:`REFRESH`
    seconds (or five times what it takes), so that a status page polled at scale does not keep a core busy.
    """

    SYNC_BUDGET = 0.25  # seconds
    REFRESH = 60.0  # seconds
    COST_PER_PAIR = 0.6e-6  # seconds per (node, VM): the first estimate, before a check was timed

    def __init__(self, plugins: PluginSet):
        self._plugins = plugins
        self._lock = threading.Lock()
        self._done: tuple[Cluster, dict[str, RecoveryPlan], float] | None = None  # snapshot, answer, when
        self._took: float | None = None
        self._running = False
        self._tried = -math.inf  # when the last background check started

    def get(self, cluster: Cluster) -> NPlusOne:
        with self._lock:
            done, took = self._done, self._took
        if done is not None and done[0] is cluster:
            return NPlusOne(done[1])
        if (took if took is not None else len(cluster.nodes) * len(cluster.vms) * self.COST_PER_PAIR) \
                <= self.SYNC_BUDGET:
            return NPlusOne(self._check(cluster))
        now = time.monotonic()
        with self._lock:
            due = now - self._tried >= max(self.REFRESH, 5 * (took or 0.0))
            if due and not self._running:
                self._running, self._tried = True, now
                threading.Thread(target=self._background, args=(cluster,), name="n-plus-one", daemon=True).start()
        return NPlusOne(None) if done is None else NPlusOne(done[1], now - done[2])

    def _check(self, cluster: Cluster) -> dict[str, RecoveryPlan]:
        t0 = time.monotonic()
        answer = n_plus_one(cluster, self._plugins.selectors)
        end = time.monotonic()
        with self._lock:
            self._done, self._took = (cluster, answer, end), end - t0
        return answer

    def _background(self, cluster: Cluster) -> None:
        try:
            self._check(cluster)
        except Exception as exc:  # noqa: BLE001 - e.g. the default selector is not registered here: tried again
            log.warning("N+1 check failed: %s", getattr(exc, "message", exc))
        finally:
            with self._lock:
                self._running = False

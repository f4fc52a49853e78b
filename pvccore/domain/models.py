"""Typed models of what lives in ZooKeeper: nodes, VMs, their metadata, cluster settings.

Every model is immutable; changes are made with :func:`dataclasses.replace` inside a
compare-and-set update. ``to_json``/``from_json`` are the only (de)serialisers, and
``from_json`` rejects values outside the documented states, so a bad write is caught
where it is read.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid as uuidlib
from dataclasses import asdict, dataclass, field, fields, make_dataclass, replace
from types import MappingProxyType
from typing import Any, Mapping

from pvccore.domain.fields import (CLUSTER_SETTINGS, VM_META_FIELDS, Field, Kind, check, check_name,
                                   dataclass_fields)
from pvccore.domain.states import (CoordinatorState, DaemonState, DomainState, FaultKind, FenceAction, FenceOutcome,
                                   HandoverPhase, MigrationKind, MigrationPhase, VMState, parse)
from pvccore.errors import ValidationError


def _updates(changes: Mapping[str, Any], table: Mapping[str, Field], what: str) -> dict[str, Any]:
    """``changes`` checked against ``table``: each value through :func:`check`; an unknown key is named."""
    unknown = sorted(set(changes) - set(table))
    if unknown:
        raise ValidationError(f"unknown {what} {unknown[0]!r}", unknown[0])
    return {name: check(table[name], value) for name, value in changes.items()}


class _JSONModel:
    """Shared JSON round trip for the frozen dataclasses below."""

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes):
        try:
            raw = json.loads(data.decode() if isinstance(data, bytes) else data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValidationError(f"{cls.__name__}: not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise ValidationError(f"{cls.__name__}: expected a JSON object")
        return cls.from_dict(raw)

    @classmethod
    def _known(cls, raw: Mapping) -> dict:
        if not isinstance(raw, Mapping):
            raise ValidationError(f"{cls.__name__}: expected an object, got {type(raw).__name__}")
        names = {f.name for f in fields(cls)}  # unknown keys: written by a newer version, ignored
        return {k: v for k, v in raw.items() if k in names}

    @classmethod
    def _construct(cls, raw: Mapping, **overrides):
        """Build from the known keys of ``raw``; a missing or unexpected field is a ValidationError."""
        try:
            return cls(**{**cls._known(raw), **overrides})
        except TypeError as exc:
            raise ValidationError(f"{cls.__name__}: {exc}") from exc


# --------------------------------------------------------------------------
# VM metadata
# --------------------------------------------------------------------------


#: the fields of :class:`VMMeta`, one per entry of :data:`VM_META_FIELDS` (defined there, once)
_MetaFields = make_dataclass("_MetaFields", dataclass_fields(VM_META_FIELDS), frozen=True, slots=True)


@dataclass(frozen=True, slots=True)
class VMMeta(_MetaFields, _JSONModel):
    """Per-VM placement metadata (docs/reference/config.md): ``node_limit``, ``node_selector``,
    ``node_autostart``, ``migration_method``, each defined in :data:`pvccore.domain.fields.VM_META_FIELDS`."""

    @classmethod
    def from_dict(cls, raw: Mapping) -> "VMMeta":
        return cls().updated(cls._known(raw))

    def updated(self, changes: Mapping[str, Any]) -> "VMMeta":
        """Return a copy with ``changes`` applied, each checked for type and form.

        Whether a selector or node exists is checked against the live cluster by
        :meth:`pvccore.operations.Operations.validate_meta`, not here.
        """
        if "node_limit" in changes:  # the one field with a second form: a comma-separated string
            changes = {**changes, "node_limit": _limit_list(changes["node_limit"])}
        values = _updates(changes, VM_META_FIELDS, "metadata field")
        if values.get("node_selector") == "":
            raise ValidationError("node_selector must not be empty (use 'default')", "node_selector")
        return replace(self, **values)


def parse_node_limit(value: Any) -> tuple[str, ...]:
    """A node limit is a list of node names, or a comma-separated string; empty means any node."""
    return check(VM_META_FIELDS["node_limit"], _limit_list(value))


def _limit_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# --------------------------------------------------------------------------
# VMs
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration(_JSONModel):
    """A migration in progress, written into the VM document so both nodes see one record.

    ``kind`` decides what ``last_node`` becomes: ``migrate`` remembers the VM's home
    (the first node it left) for ``unmigrate``; ``move`` and ``unmigrate`` clear it.
    ``method`` is empty until the source picks ``live`` or ``shutdown``.
    """

    kind: MigrationKind
    source: str
    target: str
    phase: MigrationPhase = MigrationPhase.REQUESTED
    method: str = ""
    live_only: bool = False
    started: float = 0.0
    reason: str = ""

    @classmethod
    def from_dict(cls, raw: Mapping) -> "Migration":
        m = cls._construct(raw)
        return replace(m, kind=parse(MigrationKind, m.kind, "kind"), phase=parse(MigrationPhase, m.phase, "phase"))


_MEMORY_MIB, _VCPUS = Field("memory_mib", Kind.INT), Field("vcpus", Kind.INT)


@dataclass(frozen=True, slots=True)
class VM(_JSONModel):
    """A VM as stored at ``vms/<name>`` (its libvirt XML lives beside it).

    ``state`` is the one state field of a VM: the API writes the wanted
    state, the node daemon acts and writes back what it observed (``fail`` with
    ``reason`` when it could not). ``node`` is where the VM runs or will start,
    and changes only once the VM runs on a migration's target; ``last_node`` is
    the VM's home while a ``migrate`` has taken it away, for ``unmigrate``.
    """

    name: str
    uuid: str
    memory_mib: int
    vcpus: int
    state: VMState = VMState.STOP
    reason: str = ""
    node: str = ""
    last_node: str = ""
    migration: Migration | None = None
    meta: VMMeta = field(default_factory=VMMeta)

    @classmethod
    def from_dict(cls, raw: Mapping) -> "VM":
        mig = raw.get("migration")
        vm = cls._construct(raw, meta=VMMeta.from_dict(raw.get("meta") or {}),
                            migration=Migration.from_dict(mig) if mig else None)
        check_name(vm.name, "VM")
        check(_MEMORY_MIB, vm.memory_mib)
        check(_VCPUS, vm.vcpus)
        return replace(vm, state=parse(VMState, vm.state, "state"))

    @property
    def involved(self) -> frozenset[str]:
        """The nodes whose daemons act on this VM: where it is (or starts), and both ends of its migration."""
        nodes = {self.node} if self.node else set()
        if self.migration is not None:
            nodes.update(n for n in (self.migration.source, self.migration.target) if n)
        return frozenset(nodes)

    def to_dict(self) -> dict:
        # Written out by hand: asdict() is too slow for listing thousands of VMs.
        m, mig = self.meta, self.migration
        return {
            "name": self.name, "uuid": self.uuid, "memory_mib": self.memory_mib, "vcpus": self.vcpus,
            "state": self.state, "reason": self.reason, "node": self.node, "last_node": self.last_node,
            "migration": None if mig is None else {
                "kind": mig.kind, "source": mig.source, "target": mig.target, "phase": mig.phase,
                "method": mig.method, "live_only": mig.live_only, "started": mig.started, "reason": mig.reason},
            "meta": {name: list(v) if isinstance(v := getattr(m, name), tuple) else v for name in VM_META_FIELDS},
        }


# --------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node(_JSONModel):
    """A hypervisor as stored at ``nodes/<name>``: its states and its last published figures."""

    name: str
    daemon_state: DaemonState = DaemonState.INIT
    coordinator_state: CoordinatorState = CoordinatorState.CLIENT
    domain_state: DomainState = DomainState.READY
    memory_total_mib: int = 0
    memory_used_mib: int = 0
    memory_free_mib: int = 0
    memory_provisioned_mib: int = 0
    cpu_count: int = 0
    load_1m: float = 0.0
    vcpus_allocated: int = 0
    vm_count: int = 0
    running_vms: tuple[str, ...] = ()
    keepalive: float = 0.0
    live_migration: bool = False
    migration_uri: str = ""
    #: this node's timing, for the cluster's checks (:class:`Timing`): 0 when never published
    keepalive_interval: float = 0.0
    session_timeout: float = 0.0
    #: the self-fence deadline this node last armed itself with (0: it keeps its VMs when cut off);
    #: the cluster trusts a silent node to have stopped its VMs only on this value
    self_fence_deadline: float = 0.0
    #: migrations at a time when this node is flushed (its daemon's setting; 0: never published)
    flush_parallel: int = 0

    @classmethod
    def from_dict(cls, raw: Mapping) -> "Node":
        node = cls._construct(raw, running_vms=tuple(raw.get("running_vms", ())))
        check_name(node.name, "node")
        return replace(node, daemon_state=parse(DaemonState, node.daemon_state, "daemon_state"),
                       coordinator_state=parse(CoordinatorState, node.coordinator_state, "coordinator_state"),
                       domain_state=parse(DomainState, node.domain_state, "domain_state"))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["running_vms"] = list(self.running_vms)
        return d

    @property
    def takes_primary(self) -> bool:
        """A running coordinator that is not primary: one the primary role can be handed to."""
        return self.coordinator_state == CoordinatorState.SECONDARY and self.daemon_state == DaemonState.RUN


def encode_keepalive(at: float) -> bytes:
    """A node's liveness record (``nodes/<node>/keepalive``): when it last wrote, by its own clock."""
    return json.dumps({"keepalive": at}, separators=(",", ":")).encode()


def decode_keepalive(data: bytes | None) -> float | None:
    """The time in a liveness record; None for an absent or unreadable one (the node document's value stands)."""
    try:
        value = json.loads(data)["keepalive"] if data else None
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and value > 0 else None


def with_keepalive(node: "Node", keepalive: float | None) -> "Node":
    """``node`` dated by its liveness record (None: it has none, as a node of an older version: its document's
    date stands). The node writes the record with every keepalive, its document included, so the record is
    always its latest; another writer's change to the document carries an older date and must not count."""
    return node if keepalive is None else replace(node, keepalive=keepalive)


# --------------------------------------------------------------------------
# Primary coordinator
# --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PrimaryRecord(_JSONModel):
    """Which coordinator is primary; ``epoch`` grows with every change of primary."""

    node: str
    epoch: int = 0
    since: float = 0.0

    @classmethod
    def from_dict(cls, raw: Mapping) -> "PrimaryRecord":
        return cls._construct(raw)


@dataclass(frozen=True, slots=True)
class Handover(_JSONModel):
    """A planned move of the primary role from ``source`` to ``target``, phase by phase."""

    id: str
    source: str
    target: str
    phase: HandoverPhase = HandoverPhase.REQUESTED
    reason: str = ""
    started: float = 0.0
    finished: float = 0.0

    @classmethod
    def from_dict(cls, raw: Mapping) -> "Handover":
        h = cls._construct(raw)
        return replace(h, phase=parse(HandoverPhase, h.phase, "phase"))

    @classmethod
    def new(cls, source: str, target: str) -> "Handover":
        return cls(id=uuidlib.uuid4().hex[:12], source=source, target=target, started=time.time())

    @property
    def active(self) -> bool:
        return self.phase not in (HandoverPhase.DONE, HandoverPhase.FAILED)


# --------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------

FAULT_ID_RE = re.compile(r"[a-z-]{1,32}\.[A-Za-z0-9_.:\[\]-]{1,200}")


@dataclass(frozen=True, slots=True)
class Fault(_JSONModel):
    """Something that needs an operator, as the primary saw it (``faults/<id>``; pvccore.domain.faults).

    ``id`` is ``<kind>.<subject>`` (``node-dead.hv3``): one record per condition, whose ``count``
    grows each time it comes back after it cleared. ``active`` is false once it cleared; an
    acknowledged fault is no longer counted as unacknowledged, until it comes back.
    """

    id: str
    kind: FaultKind
    subject: str
    message: str
    first_seen: float
    last_seen: float
    count: int = 1
    active: bool = True
    acknowledged: bool = False

    @classmethod
    def from_dict(cls, raw: Mapping) -> "Fault":
        fault = cls._construct(raw)
        check_fault_id(fault.id)
        return replace(fault, kind=parse(FaultKind, fault.kind, "kind"))


def check_fault_id(value: Any) -> str:
    if not isinstance(value, str) or not FAULT_ID_RE.fullmatch(value):
        raise ValidationError(f"invalid fault id {value!r}: <kind>.<subject>, as pvc cluster faults lists them",
                              "fault")
    return value


# --------------------------------------------------------------------------
# Fencing
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfirmedOff(_JSONModel):
    """An operator's word that a dead node is off (``pvc node confirm-off``), for the death seen at ``keepalive``."""

    at: float
    keepalive: float

    @classmethod
    def from_dict(cls, raw: Mapping) -> "ConfirmedOff":
        return cls._construct(raw)


@dataclass(frozen=True, slots=True)
class FenceStatus(_JSONModel):
    """A node's entry in the ``fencing`` document: its last fence outcome, and any operator confirmation."""

    state: FenceOutcome | None = None  # None: only a confirmation is recorded
    message: str = ""
    attempts: int = 0
    at: float = 0.0
    retry_in: float = 0.0
    confirmed_off: ConfirmedOff | None = None

    @classmethod
    def from_dict(cls, raw: Mapping) -> "FenceStatus":
        known = cls._known(raw)
        state = known.get("state")
        confirmed = known.get("confirmed_off")
        return cls._construct(known, state=None if state is None else parse(FenceOutcome, state, "state"),
                              confirmed_off=ConfirmedOff.from_dict(confirmed) if confirmed else None)

    def confirms(self, node: "Node") -> bool:
        """The operator confirmed this death of ``node`` (its last keepalive), not an earlier one."""
        return self.confirmed_off is not None and self.confirmed_off.keepalive == node.keepalive


def decode_fencing(data: bytes | None) -> dict[str, FenceStatus] | None:
    """The ``fencing`` document (node -> status); an unreadable entry is left out, an unreadable document is None."""
    try:
        raw = json.loads(data or b"{}")
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    out = {}
    for node, entry in raw.items():
        try:
            out[node] = FenceStatus.from_dict(entry)
        except ValidationError:
            continue
    return out


def encode_fencing(statuses: Mapping[str, FenceStatus]) -> bytes:
    return json.dumps({k: v.to_dict() for k, v in sorted(statuses.items())}, sort_keys=True).encode()


# --------------------------------------------------------------------------
# Cluster-wide settings and the read-only cluster picture
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timing:
    """How quickly nodes write keepalives and how long their ZooKeeper sessions last (the largest in the cluster).

    The defaults are pvcnoded's, for a cluster with no node yet, or a node that never published its own.
    """

    keepalive_interval: float = 1.0
    session_timeout: float = 4.0

    @classmethod
    def of_node(cls, node: "Node") -> "Timing":
        return cls(node.keepalive_interval or 1.0, node.session_timeout or 4.0)

    @classmethod
    def of(cls, nodes) -> "Timing":
        """The slowest figures of ``nodes`` (the defaults when there is none)."""
        timings = [cls.of_node(n) for n in nodes] or [cls()]
        return cls(max(t.keepalive_interval for t in timings), max(t.session_timeout for t in timings))

    def suspect_after(self) -> float:
        """No node may be suspect before it missed two keepalives, with jitter: three intervals."""
        return 3 * self.keepalive_interval

    def dead_after(self) -> float:
        """A healthy node whose ZooKeeper server fails reconnects to another within its session
        timeout and writes a keepalive within one interval: no healthy node is silent longer."""
        return self.session_timeout + self.keepalive_interval

    def self_fence_after(self) -> float:
        """A node stops its own VMs only after it could have reconnected and written twice."""
        return self.session_timeout + 2 * self.keepalive_interval


#: the fields of :class:`ClusterConfig`, one per entry of :data:`CLUSTER_SETTINGS` (defined there, once)
_SettingFields = make_dataclass("_SettingFields", dataclass_fields(CLUSTER_SETTINGS), frozen=True, slots=True)


@dataclass(frozen=True, slots=True)
class ClusterConfig(_SettingFields, _JSONModel):
    """Cluster-wide settings stored at ``config``.

    Failure detection defaults aim at VMs running elsewhere within 10 s of a node's
    death with keepalives every second: a node is suspect once its keepalive is
    ``keepalive_limit`` (3 s: two missed beats and jitter) old (a daemon whose
    ZooKeeper session ended writes none), and declared dead after staying suspect for ``fence_grace``
    (2 s, its saving throw: a daemon that stalls briefly is not fenced). IPMI
    fencing takes about 0.1 s and a restart on another node under 1 s, so the
    total is about 6 s.

    ``self_fence_deadline`` (seconds without a written keepalive after which a node
    stops its own VMs) applies only with ``failed_fence = recover``: only then may the
    cluster start a silent node's VMs elsewhere without a confirmed power-off, so only
    then does a node stopping its own VMs protect anything. With ``failed_fence = none``
    a node cut off from ZooKeeper (the whole ensemble down, say) keeps its VMs running.

    Every value is checked twice: for its type and static bounds here (finite numbers
    only; a stored value that fails is replaced by its default when read, so a bad
    write cannot turn the cluster against itself), and against the nodes' keepalive
    interval and ZooKeeper session timeout by :meth:`check_timing`.

    The fields (``default_selector``, ``allow_overcommit``, ``keepalive_limit``, ``fence_grace``,
    ``successful_fence``, ``failed_fence``, ``self_fence_deadline``, ``fence_retry_max``, ``maintenance``), their kinds,
    bounds and meaning are defined once, in :data:`pvccore.domain.fields.CLUSTER_SETTINGS`.
    """

    @classmethod
    def from_dict(cls, raw: Mapping) -> "ClusterConfig":
        """Read a stored config; a field that fails its checks falls back to its default."""
        config = cls()
        for name, value in cls._known(raw).items():
            try:
                config = config.updated({name: value})
            except ValidationError:
                continue
        return config

    @property
    def self_fence_armed(self) -> bool:
        """Whether nodes stop their own VMs when cut off (see the class docstring); never in maintenance mode."""
        return self.failed_fence == FenceAction.RECOVER and not self.maintenance

    def updated(self, changes: Mapping[str, Any]) -> "ClusterConfig":
        """Return a copy with ``changes`` applied, each checked against :data:`CLUSTER_SETTINGS`
        (its type and static bounds; the bounds that depend on the nodes: :meth:`check_timing`)."""
        values = _updates(changes, CLUSTER_SETTINGS, "cluster setting")
        if values.get("default_selector") in ("", "default"):
            raise ValidationError("default_selector must name a selector", "default_selector")
        return replace(self, **values)

    def check_timing(self, timing: Timing, changed: Any = ()) -> None:
        """Refuse settings under which a healthy node could be fenced or stop its VMs.

        ``changed`` names the settings being changed, to name the right field in the error.
        """
        def field_of(*names: str) -> str:
            return next((n for n in names if n in changed), names[0])

        i, s = timing.keepalive_interval, timing.session_timeout
        if self.keepalive_limit < timing.suspect_after():
            raise ValidationError(
                f"keepalive_limit must be at least 3 keepalive intervals (3 x {i:g}s = {timing.suspect_after():g}s): "
                f"a node is suspect only once it missed two keepalives; got {self.keepalive_limit:g}",
                "keepalive_limit")
        if self.keepalive_limit + self.fence_grace < timing.dead_after():
            raise ValidationError(
                f"keepalive_limit + fence_grace must be at least the nodes' ZooKeeper session timeout plus one "
                f"keepalive interval ({s:g}s + {i:g}s = {timing.dead_after():g}s): a healthy node whose ZooKeeper "
                f"server fails reconnects within its session timeout; got "
                f"{self.keepalive_limit:g}s + {self.fence_grace:g}s", field_of("fence_grace", "keepalive_limit"))
        if self.self_fence_deadline < timing.self_fence_after():
            raise ValidationError(
                f"self_fence_deadline must be at least the nodes' ZooKeeper session timeout plus two keepalive "
                f"intervals ({s:g}s + 2 x {i:g}s = {timing.self_fence_after():g}s): a node cut off only for a "
                f"reconnect must not stop its VMs; got {self.self_fence_deadline:g}", "self_fence_deadline")


@dataclass(frozen=True)
class Cluster:
    """What a selector sees of the whole cluster: nodes (sorted by name) and VMs, read-only."""

    nodes: Mapping[str, Node]
    vms: Mapping[str, VM]
    config: ClusterConfig = ClusterConfig()
    primary: PrimaryRecord | None = None
    handover: Handover | None = None

    @classmethod
    def build(cls, nodes, vms=(), config: ClusterConfig | None = None) -> "Cluster":
        """Build from iterables of models (tests, benchmarks, the ZooKeeper-read path)."""
        return cls(
            nodes=MappingProxyType({n.name: n for n in sorted(nodes, key=lambda n: n.name)}),
            vms=MappingProxyType({v.name: v for v in vms}),
            config=config or ClusterConfig(),
        )

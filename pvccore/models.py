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
from dataclasses import asdict, dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Mapping

from .errors import ValidationError

# --------------------------------------------------------------------------
# States (design.md, "States")
# --------------------------------------------------------------------------

DAEMON_STATES = ("init", "run", "stop", "dead", "fenced")
COORDINATOR_STATES = ("client", "secondary", "takeover", "primary", "relinquish")
DOMAIN_STATES = ("ready", "flush", "flushed", "unflush", "fence-flush")
VM_STATES = ("start", "shutdown", "stop", "restart", "migrate", "migrate-live", "unmigrate", "disable", "fail")
MIGRATION_METHODS = ("live", "shutdown", "default")
MIGRATION_KINDS = ("migrate", "move", "unmigrate")
#: migration phases, in order; see pvccore.migration for who writes which
MIGRATION_PHASES = ("requested", "prepare", "ready", "sent", "stopped", "failed")
#: VM states in which the VM should be running on its node
RUNNING_STATES = ("start", "restart", "migrate", "migrate-live", "unmigrate")
DEFAULT_SELECTOR = "mem"

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(name: Any, what: str, field_name: str = "name") -> str:
    """Node and VM names become ZooKeeper path components: keep them plain."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValidationError(
            f"invalid {what} name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            field_name,
        )
    return name


def _check_choice(value: Any, choices: tuple[str, ...], field_name: str) -> str:
    if value not in choices:
        raise ValidationError(f"{field_name} must be one of {', '.join(choices)}; got {value!r}", field_name)
    return value


def _check_type(value: Any, types: type | tuple[type, ...], field_name: str, what: str) -> Any:
    # bool is an int in Python; never accept it where a number is meant, or the reverse.
    if isinstance(value, bool) != (types is bool) or not isinstance(value, types):
        raise ValidationError(f"{field_name} must be {what}; got {value!r}", field_name)
    return value


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


@dataclass(frozen=True, slots=True)
class VMMeta(_JSONModel):
    """Per-VM placement metadata (design.md, "VM metadata")."""

    node_limit: tuple[str, ...] = ()
    node_selector: str = "default"
    node_autostart: bool = False
    migration_method: str = "default"

    @classmethod
    def from_dict(cls, raw: Mapping) -> "VMMeta":
        return cls().updated(cls._known(raw))

    def updated(self, changes: Mapping[str, Any]) -> "VMMeta":
        """Return a copy with ``changes`` applied, each checked for type and form.

        Whether a selector or node exists is checked against the live cluster by
        :func:`pvccore.operations.validate_meta`, not here.
        """
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            name = sorted(unknown)[0]
            raise ValidationError(f"unknown metadata field {name!r}", name)
        values: dict[str, Any] = {}
        if "node_limit" in changes:
            values["node_limit"] = parse_node_limit(changes["node_limit"])
        if "node_selector" in changes:
            sel = _check_type(changes["node_selector"], str, "node_selector", "a selector name")
            if not sel:
                raise ValidationError("node_selector must not be empty (use 'default')", "node_selector")
            values["node_selector"] = sel
        if "node_autostart" in changes:
            values["node_autostart"] = _check_type(changes["node_autostart"], bool, "node_autostart", "true or false")
        if "migration_method" in changes:
            values["migration_method"] = _check_choice(changes["migration_method"], MIGRATION_METHODS, "migration_method")
        return replace(self, **values)


def parse_node_limit(value: Any) -> tuple[str, ...]:
    """A node limit is a list of node names, or a comma-separated string; empty means any node."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValidationError(f"node_limit must be a list of node names; got {value!r}", "node_limit")
    names = [check_name(v, "node", "node_limit") for v in value]
    return tuple(sorted(set(names)))


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

    kind: str
    source: str
    target: str
    phase: str = "requested"
    method: str = ""
    live_only: bool = False
    started: float = 0.0
    reason: str = ""

    @classmethod
    def from_dict(cls, raw: Mapping) -> "Migration":
        m = cls._construct(raw)
        _check_choice(m.kind, MIGRATION_KINDS, "kind")
        _check_choice(m.phase, MIGRATION_PHASES, "phase")
        return m


@dataclass(frozen=True, slots=True)
class VM(_JSONModel):
    """A VM as stored at ``vms/<name>`` (its libvirt XML lives beside it).

    ``state`` is the one state field of design.md: the API writes the wanted
    state, the node daemon acts and writes back what it observed (``fail`` with
    ``reason`` when it could not). ``node`` is where the VM runs or will start,
    and changes only once the VM runs on a migration's target; ``last_node`` is
    the VM's home while a ``migrate`` has taken it away, for ``unmigrate``.
    """

    name: str
    uuid: str
    memory_mib: int
    vcpus: int
    state: str = "stop"
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
        _check_choice(vm.state, VM_STATES, "state")
        _check_type(vm.memory_mib, int, "memory_mib", "an integer")
        _check_type(vm.vcpus, int, "vcpus", "an integer")
        return vm

    def to_dict(self) -> dict:
        # Written out by hand: asdict() is too slow for listing thousands of VMs.
        m, mig = self.meta, self.migration
        return {
            "name": self.name, "uuid": self.uuid, "memory_mib": self.memory_mib, "vcpus": self.vcpus,
            "state": self.state, "reason": self.reason, "node": self.node, "last_node": self.last_node,
            "migration": None if mig is None else {
                "kind": mig.kind, "source": mig.source, "target": mig.target, "phase": mig.phase,
                "method": mig.method, "live_only": mig.live_only, "started": mig.started, "reason": mig.reason},
            "meta": {"node_limit": list(m.node_limit), "node_selector": m.node_selector,
                     "node_autostart": m.node_autostart, "migration_method": m.migration_method},
        }


# --------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node(_JSONModel):
    """A hypervisor as stored at ``nodes/<name>``: its states and its last published figures."""

    name: str
    daemon_state: str = "init"
    coordinator_state: str = "client"
    domain_state: str = "ready"
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

    @classmethod
    def from_dict(cls, raw: Mapping) -> "Node":
        node = cls._construct(raw, running_vms=tuple(raw.get("running_vms", ())))
        check_name(node.name, "node")
        _check_choice(node.daemon_state, DAEMON_STATES, "daemon_state")
        _check_choice(node.coordinator_state, COORDINATOR_STATES, "coordinator_state")
        _check_choice(node.domain_state, DOMAIN_STATES, "domain_state")
        return node

    def to_dict(self) -> dict:
        d = asdict(self)
        d["running_vms"] = list(self.running_vms)
        return d


# --------------------------------------------------------------------------
# Primary coordinator
# --------------------------------------------------------------------------

#: handover phases in order; see pvccore.coordinator for who writes which
HANDOVER_PHASES = ("requested", "relinquish-ready", "takeover-ready", "services-stopped", "ips-added",
                   "ips-released", "done", "failed")


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
    phase: str = "requested"
    reason: str = ""
    started: float = 0.0
    finished: float = 0.0

    @classmethod
    def from_dict(cls, raw: Mapping) -> "Handover":
        h = cls._construct(raw)
        _check_choice(h.phase, HANDOVER_PHASES, "phase")
        return h

    @property
    def active(self) -> bool:
        return self.phase not in ("done", "failed")


# --------------------------------------------------------------------------
# Cluster-wide settings and the read-only cluster picture
# --------------------------------------------------------------------------


FENCE_ACTIONS = ("recover", "none")

#: Seconds settings and their static bounds (low, high). The low bounds that protect a healthy node
#: depend on how often nodes write keepalives and how long their ZooKeeper sessions last: they are
#: checked against the cluster's nodes by :meth:`ClusterConfig.check_timing`.
SECONDS_BOUNDS = {
    "keepalive_limit": (0.3, 300.0),
    "fence_grace": (0.0, 300.0),
    "self_fence_deadline": (1.0, 3600.0),
    "fence_retry_max": (1.0, 3600.0),
}


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


@dataclass(frozen=True, slots=True)
class ClusterConfig(_JSONModel):
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
    """

    default_selector: str = DEFAULT_SELECTOR
    allow_overcommit: bool = False
    keepalive_limit: float = 3.0
    fence_grace: float = 2.0
    successful_fence: str = "recover"
    failed_fence: str = "none"
    self_fence_deadline: float = 10.0
    fence_retry_max: float = 60.0

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
        """Whether nodes stop their own VMs when cut off (see the class docstring)."""
        return self.failed_fence == "recover"

    def updated(self, changes: Mapping[str, Any]) -> "ClusterConfig":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            name = sorted(unknown)[0]
            raise ValidationError(f"unknown cluster setting {name!r}", name)
        values: dict[str, Any] = {}
        if "default_selector" in changes:
            sel = _check_type(changes["default_selector"], str, "default_selector", "a selector name")
            if not sel or sel == "default":
                raise ValidationError("default_selector must name a selector", "default_selector")
            values["default_selector"] = sel
        if "allow_overcommit" in changes:
            values["allow_overcommit"] = _check_type(changes["allow_overcommit"], bool, "allow_overcommit", "true or false")
        for name in ("successful_fence", "failed_fence"):
            if name in changes:
                values[name] = _check_choice(changes[name], FENCE_ACTIONS, name)
        for name, (low, high) in SECONDS_BOUNDS.items():
            if name in changes:
                values[name] = check_seconds(changes[name], name, low, high)
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


def check_seconds(value: Any, name: str, low: float, high: float) -> float:
    """A finite number of seconds within ``[low, high]`` (never NaN, infinity or a bool)."""
    try:
        finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite or not low <= value <= high:
        raise ValidationError(f"{name} must be a number of seconds from {low:g} to {high:g}; got {value!r}", name)
    return float(value)


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

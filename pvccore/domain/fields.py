"""Every user-settable value, described once: cluster settings and VM metadata.

A :class:`Field` says what a value is (its kind, default, bounds or choices) and what it
means (its help text). From these tables come the checks of :class:`ClusterConfig` and
:class:`VMMeta` (:mod:`pvccore.domain.models`), the request bodies of the OpenAPI document,
the options of ``pvc cluster set`` and ``pvc vm define|meta``, and the reference docs.
Adding a setting is one entry in :data:`CLUSTER_SETTINGS` (and its dataclass field).

:func:`check` is the one value checker: the models, the daemon and API config files
(:mod:`pvccore.config`) and the API's request fields all use it. Pure Python: nothing
here talks to ZooKeeper, libvirt, HTTP or a terminal.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from enum import Enum, StrEnum
from types import MappingProxyType
from typing import Any, Mapping

from pvccore.domain.states import FenceAction, MigrationMethod
from pvccore.errors import ValidationError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_TAGS = 64  # a VM's tags (and as many protected ones): labels, not a database


def check_name(name: Any, what: str, field_name: str = "name") -> str:
    """Node and VM names become ZooKeeper path components: keep them plain."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValidationError(
            f"invalid {what} name {_show(name)}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit", field_name)
    return name


class Kind(StrEnum):
    BOOL = "bool"
    STR = "str"
    INT = "int"
    FLOAT = "float"  # finite; an int is taken (as a float) when a float can hold it
    ENUM = "enum"  # one of ``choices``
    NAMES = "names"  # a list of node names (a set: sorted, each once)
    TAGS = "tags"  # a list of tag names (a set: sorted, each once), named like nodes
    STRINGS = "strings"  # a list of non-empty strings
    LIST = "list"  # a JSON list, items unchecked


@dataclass(frozen=True)
class Field:
    """One value a user sets: what it is, its default, and what it means."""

    name: str
    kind: Kind
    default: Any = None
    #: one or two sentences, plain text: the CLI option's help, the docs, the OpenAPI description
    help: str = ""
    #: more for the reference docs and the OpenAPI description (why a bound is what it is)
    detail: str = ""
    low: float | None = None
    high: float | None = None
    #: the choices of an ENUM: a StrEnum (the value read back is its member) or plain strings
    choices: type[Enum] | tuple[str, ...] = ()
    unit: str = ""  # of a number, e.g. "seconds"
    #: the CLI option's name when it is not the field's name with dashes (``limit`` for ``--limit``)
    flag: str | None = None
    #: what a value is, for errors ("a selector name"); defaults follow from the kind
    noun: str = ""
    #: the column header in listings (``pvc vm list``); default: the option's name in capitals
    column: str = ""

    def __post_init__(self):
        if (self.kind is Kind.ENUM) != bool(self.choice_values):
            raise ValueError(f"{self.name}: choices go with kind enum, and only with it")
        if (self.low is not None or self.high is not None) and self.kind not in (Kind.INT, Kind.FLOAT):
            raise ValueError(f"{self.name}: bounds go with numbers only")

    @property
    def choice_values(self) -> tuple[str, ...]:
        return tuple(str(c.value) if isinstance(c, Enum) else c for c in self.choices)

    @property
    def option(self) -> str:
        """The CLI option's name, without dashes in front."""
        return self.flag or self.name.replace("_", "-")

    @property
    def header(self) -> str:
        return self.column or self.option.upper()

    @property
    def text(self) -> str:
        """Help and detail together."""
        return f"{self.help} {self.detail}".strip()

    def expects(self) -> str:
        """What a value must be, to finish "<name> must be ...": one rule per kind, stated once."""
        if self.kind is Kind.ENUM:
            return "one of " + ", ".join(self.choice_values)
        if self.noun:
            return self.noun + self._span()
        return {
            Kind.BOOL: "true or false",
            Kind.STR: "a string",
            Kind.INT: "an integer",
            Kind.FLOAT: f"a number of {self.unit}" if self.unit else
                        "a number" if self.low is not None or self.high is not None else "a finite number",
            Kind.NAMES: "a list of node names",
            Kind.TAGS: f"a list of at most {MAX_TAGS} tag names",
            Kind.STRINGS: "a list of non-empty strings",
            Kind.LIST: "a list",
        }[self.kind] + self._span()

    def _span(self) -> str:
        if self.low is not None and self.high is not None:
            return f" from {self.low:g} to {self.high:g}"
        if self.low is not None:
            return f" of at least {self.low:g}"
        if self.high is not None:
            return f" of at most {self.high:g}"
        return ""


def check(field: Field, value: Any) -> Any:
    """``value`` as ``field`` holds it (a float for a FLOAT, a tuple for a list, the enum member of a
    StrEnum choice), or a :class:`ValidationError` naming the field and what it must be.

    A bool is never a number and a number never a bool (Python counts True as 1); NaN, the
    infinities and integers too large for a float are not numbers here.
    """
    kind = field.kind
    out: Any = _BAD
    if kind is Kind.BOOL:
        out = value if isinstance(value, bool) else _BAD
    elif kind is Kind.STR:
        out = value if isinstance(value, str) else _BAD
    elif kind is Kind.ENUM:
        if isinstance(value, str) and value in field.choice_values:
            out = field.choices(value) if isinstance(field.choices, type) else value
    elif kind in (Kind.INT, Kind.FLOAT):
        out = _number(value, kind is Kind.INT)
        if out is not _BAD and ((field.low is not None and out < field.low)
                                or (field.high is not None and out > field.high)):
            out = _BAD
    elif kind in (Kind.NAMES, Kind.TAGS):
        if isinstance(value, (list, tuple)) and (kind is Kind.NAMES or len(value) <= MAX_TAGS):
            out = tuple(sorted({check_name(v, "node" if kind is Kind.NAMES else "tag", field.name) for v in value}))
    elif kind is Kind.STRINGS:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value):
            out = tuple(value)
    elif kind is Kind.LIST:
        out = value if isinstance(value, list) else _BAD
    if out is _BAD:
        raise ValidationError(f"{field.name} must be {field.expects()}; got {_show(value)}", field.name)
    return out


_BAD = object()


def _number(value: Any, integer: bool) -> Any:
    if isinstance(value, bool) or not isinstance(value, (float, int)) or (integer and not isinstance(value, int)):
        return _BAD
    if integer:
        return int(value)
    try:
        value = float(value)  # an int too large for a float raises
    except OverflowError:
        return _BAD
    return value if math.isfinite(value) else _BAD


def _show(value: Any) -> str:
    """``repr(value)`` cut short: an error message must stay a line whatever was sent."""
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than Python converts to text
        return f"an integer of {value.bit_length()} bits"
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"


_PYTHON_TYPES = {Kind.BOOL: bool, Kind.STR: str, Kind.INT: int, Kind.FLOAT: float, Kind.ENUM: str,
                 Kind.NAMES: tuple, Kind.TAGS: tuple, Kind.STRINGS: tuple, Kind.LIST: list}


def dataclass_fields(fields: Mapping[str, Field]) -> list[tuple[str, type, Any]]:
    """``(name, type, dataclasses.field)`` for each field, for :func:`dataclasses.make_dataclass`: the models
    holding these values take their fields from the tables, so a field is defined once."""
    out = []
    for f in fields.values():
        kind = f.choices if f.kind is Kind.ENUM and isinstance(f.choices, type) else _PYTHON_TYPES[f.kind]
        default = dataclasses.field(default_factory=list) if f.kind is Kind.LIST else dataclasses.field(default=f.default)
        out.append((f.name, kind, default))
    return out


def table(*entries: Field) -> Mapping[str, Field]:
    """Fields by name, in the order given (the order of the docs and the CLI options)."""
    out = {f.name: f for f in entries}
    if len(out) != len(entries):
        raise ValueError("a field name is given twice")
    return MappingProxyType(out)


DEFAULT_SELECTOR = "mem"

#: Cluster-wide settings (``ClusterConfig``). The seconds bounds here are static; the low bounds
#: that protect a healthy node depend on the nodes' keepalive interval and ZooKeeper session
#: timeout and are checked against the nodes by ``ClusterConfig.check_timing``.
CLUSTER_SETTINGS = table(
    Field("default_selector", Kind.STR, DEFAULT_SELECTOR, noun="a selector name",
          help="Selector for VMs whose node_selector is 'default'."),
    Field("allow_overcommit", Kind.BOOL, False, help="Place VMs even where free memory is short."),
    Field("keepalive_limit", Kind.FLOAT, 3.0, low=0.3, high=300.0, unit="seconds",
          help="Seconds without a keepalive before a node is suspect.",
          detail="At least 3 keepalive intervals of the slowest node."),
    Field("fence_grace", Kind.FLOAT, 2.0, low=0.0, high=300.0, unit="seconds",
          help="Seconds a suspect node has to come back before it is declared dead and fenced.",
          detail="keepalive_limit + fence_grace is at least the nodes' ZooKeeper session timeout plus one keepalive "
                 "interval."),
    Field("successful_fence", Kind.ENUM, FenceAction.RECOVER, choices=FenceAction,
          help="After a confirmed fence: recover the node's VMs elsewhere, or none."),
    Field("failed_fence", Kind.ENUM, FenceAction.NONE, choices=FenceAction,
          help="After every fencer failed: recover once the self-fence deadline has passed, or none."),
    Field("self_fence_deadline", Kind.FLOAT, 10.0, low=1.0, high=3600.0, unit="seconds",
          help="Seconds without a written keepalive (cut off from ZooKeeper, say) after which a node stops its own "
               "VMs; with failed_fence = recover only.",
          detail="At least the nodes' ZooKeeper session timeout plus two keepalive intervals."),
    Field("fence_retry_max", Kind.FLOAT, 60.0, low=1.0, high=3600.0, unit="seconds",
          help="Longest back-off between fence attempts, seconds."),
    Field("maintenance", Kind.BOOL, False,
          help="Maintenance mode: silent nodes are reported but neither fenced nor recovered, and no node "
               "self-fences.",
          detail="Turned off, every node's silence is timed afresh: a node that died meanwhile is fenced then."),
)

#: Per-VM placement metadata (``VMMeta``).
VM_META_FIELDS = table(
    Field("node_limit", Kind.NAMES, (), flag="limit", help="Nodes the VM may run on (empty: any node)."),
    Field("node_selector", Kind.STR, "default", noun="a selector name", column="SELECTOR",
          help="Selector for this VM, or 'default' (the cluster's default_selector)."),
    Field("node_autostart", Kind.BOOL, False, flag="autostart", help="Start on its home node's next ready."),
    Field("migration_method", Kind.ENUM, MigrationMethod.DEFAULT, choices=MigrationMethod, flag="method",
          help="How the VM migrates: live, shutdown, or default (live, falling back to shutdown)."),
    Field("migration_max_downtime", Kind.INT, 0, low=0, high=60000, unit="milliseconds", flag="max-downtime",
          column="DOWNTIME",
          help="Longest pause of the VM, in milliseconds, at the end of a live migration (0: libvirt's default, "
               "300 ms).",
          detail="A guest that dirties memory faster than the link copies it is slowed down (auto-converge) until "
                 "the rest fits in this pause."),
    Field("tags", Kind.TAGS, (), flag="tag",
          help="Free-form labels: a filter for pvc vm list, and an input selector plugins may read."),
    Field("protected_tags", Kind.TAGS, (), flag="protected-tag", column="PROTECTED",
          help="Tags that are removed only on purpose (pvc vm tag remove --protected).",
          detail="A change of metadata that would drop one is refused unless it says so."),
)

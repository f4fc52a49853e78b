"""Configuration schemas: one table of options drives a TOML file, the flags and the docs.

Each program (``pvcnoded``, ``pvcapid``) has a :class:`ConfigSchema`: its options,
the dataclass they fill, and any cross-field checks. A config file is TOML with
the option keys at top level; flags override the file. Any error is one readable
line, raised as :class:`ValidationError` (the programs exit 2).
"""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass, fields
from typing import Any, Callable

from pvccore.errors import ValidationError
from pvccore.domain.fields import Field, Kind, check
from pvccore.domain.fields import check_name
from pvccore.domain.models import Timing
from pvccore.zk.schema import Schema
from pvccore.zk.auth import parse_auth


@dataclass(frozen=True)
class Option:
    key: str
    type: type
    default: Any
    help: str
    flag: str | None = None  # command-line flag, when it has one
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def field(self) -> Field:
        """The option as a :class:`~pvccore.domain.fields.Field`, for the one value checker."""
        kind = Kind.ENUM if self.choices else _KINDS[self.type]
        return Field(self.key, kind, self.default, self.help, low=self.minimum, high=self.maximum,
                     choices=self.choices)


_KINDS = {bool: Kind.BOOL, str: Kind.STR, int: Kind.INT, float: Kind.FLOAT, list: Kind.STRINGS}


class ConfigSchema:
    def __init__(self, program: str, options: tuple[Option, ...], cls: type,
                 check: Callable[[dict[str, Any]], None] | None = None):
        assert [o.key for o in options] == [f.name for f in fields(cls)], f"{program}: options and {cls} disagree"
        self.program, self.options, self.cls, self._check = program, options, cls, check
        self._by_key = {o.key: o for o in options}

    def build(self, values: dict[str, Any]):
        """Check every value against the options and build the config."""
        out = {}
        for key, value in values.items():
            opt = self._by_key.get(key)
            if opt is None:
                raise ValidationError(f"unknown configuration key {key!r}", key)
            out[key] = _coerce(opt, value)
        for opt in self.options:
            if opt.default is None and opt.key not in out:
                raise ValidationError(f"{opt.key}: required ({opt.help})", opt.key)
        if self._check:
            self._check({**{o.key: o.default for o in self.options}, **out})
        return self.cls(**out)

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", "-c", help="TOML configuration file")
        for opt in self.options:
            if not opt.flag:
                continue
            if opt.type is bool:
                parser.add_argument(opt.flag, dest=opt.key, action=argparse.BooleanOptionalAction, default=None,
                                    help=opt.help)
            elif opt.type is list:
                parser.add_argument(opt.flag, dest=opt.key, action="append", default=None, help=opt.help)
            else:
                parser.add_argument(opt.flag, dest=opt.key, type=opt.type, default=None, help=opt.help)

    def from_args(self, args: argparse.Namespace):
        values = load_file(args.config) if args.config else {}
        for opt in self.options:
            flag_value = getattr(args, opt.key, None)
            if opt.flag and flag_value is not None:
                values[opt.key] = flag_value
        return self.build(values)

    def from_file(self, path: str | None, **overrides):
        return self.build({**(load_file(path) if path else {}), **overrides})


def _coerce(opt: Option, value: Any) -> Any:
    return check(opt.field, value)


def load_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ValidationError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError(f"config file {path} is not valid TOML: {exc}") from exc


# -- options shared by every program that talks to the cluster ------------------------------

LOG_LEVELS = ("debug", "info", "warning", "error")

ZOOKEEPER_OPTIONS = (
    Option("zookeeper_hosts", str, "127.0.0.1:2181", "ZooKeeper connection string, host:port[,host:port...].",
           "--zookeeper"),
    Option("zookeeper_root", str, "/pvc", "Root path of this cluster in ZooKeeper.", "--root"),
    Option("zookeeper_auth", str, "",
           "ZooKeeper identity as digest:USER:PASSWORD: the session authenticates with it and every znode pvc "
           "creates is readable by it only. Empty: $PVC_ZOOKEEPER_AUTH, or none (world-readable znodes).",
           "--zookeeper-auth"),
    Option("zookeeper_session_timeout", float, 4.0,
           "ZooKeeper session timeout in seconds: how long a silent client keeps its session (the server may "
           "raise it to its own minimum, 2 ticks). The cluster's failure detection is bounded by it.",
           "--zookeeper-session-timeout", 1.0, 60.0),
)
LOG_OPTION = Option("log_level", str, "info", "Log level: debug, info, warning or error.", "--log-level",
                    choices=LOG_LEVELS)
LOG_FORMAT_OPTION = Option("log_format", str, "text",
                           "Log lines as `text` (time level node=NAME logger: message) or `json` (one object a line).",
                           "--log-format", choices=("text", "json"))


def check_root(values: dict[str, Any]) -> None:
    """The ZooKeeper options every program shares: a valid root, and an identity in the right form."""
    Schema(values["zookeeper_root"])
    if values["zookeeper_auth"]:
        parse_auth(values["zookeeper_auth"])


# -- pvcnoded ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonConfig:
    node: str
    zookeeper_hosts: str = "127.0.0.1:2181"
    zookeeper_root: str = "/pvc"
    zookeeper_auth: str = ""
    zookeeper_session_timeout: float = 4.0
    libvirt_uri: str = "qemu:///system"
    migration_address: str = ""
    migration_uri_template: str = "qemu+tcp://{address}/system"
    coordinator: bool = False
    keepalive_interval: float = 1.0
    shutdown_timeout: float = 180.0
    migration_timeout: float = 120.0
    flush_parallel: int = 2
    flush_on_shutdown: bool = False
    ready_on_boot: bool = False
    flush_timeout: float = 600.0
    floating_ips: tuple[str, ...] = ()
    arp_count: int = 2
    arp_interval: float = 0.02
    handover_timeout: float = 30.0
    api_config: str = ""
    self_fence_command: str = ""
    log_level: str = "info"
    log_format: str = "text"

    @property
    def timing(self) -> Timing:
        """What this node publishes of its timing, for the cluster's failure detection."""
        return Timing(self.keepalive_interval, self.zookeeper_session_timeout)

    @property
    def migration_uri(self) -> str:
        """The URI other nodes use to live-migrate VMs here (empty: no live migration in)."""
        if not self.migration_address:
            return ""
        return self.migration_uri_template.format(address=self.migration_address)


def _check_daemon(values: dict[str, Any]) -> None:
    check_name(values["node"], "node", "node")
    check_root(values)
    if "{address}" not in values["migration_uri_template"]:
        raise ValidationError("migration_uri_template: must contain {address}", "migration_uri_template")
    from pvccore.node.network import FloatingIP

    for text in values["floating_ips"]:
        FloatingIP.parse(text)
    if values["floating_ips"] and not values["coordinator"]:
        raise ValidationError("floating_ips: only coordinators carry floating IPs", "floating_ips")


DAEMON = ConfigSchema("pvcnoded", (
    Option("node", str, None, "This node's name, unique in the cluster", "--node"),
    *ZOOKEEPER_OPTIONS,
    Option("libvirt_uri", str, "qemu:///system", "libvirt URI of this node's hypervisor.", "--libvirt"),
    Option("migration_address", str, "", "Address other nodes use to reach this node's libvirt for live migration.",
           "--migration-address"),
    Option("migration_uri_template", str, "qemu+tcp://{address}/system",
           "libvirt URI of a live-migration target; {address} is the target's migration_address."),
    Option("coordinator", bool, False, "Whether this node may become primary coordinator.", "--coordinator"),
    Option("keepalive_interval", float, 1.0, "Seconds between keepalives (node figures published to ZooKeeper).",
           "--keepalive-interval", 0.1, 10.0),
    Option("shutdown_timeout", float, 180.0,
           "Seconds a graceful VM shutdown may take before the VM is stopped (destroyed).", "--shutdown-timeout", 0.0, 3600.0),
    Option("migration_timeout", float, 120.0,
           "Seconds either side of a migration waits for the other before giving up.", "--migration-timeout", 1.0, 3600.0),
    Option("flush_parallel", int, 2, "VMs migrated at a time when this node is flushed.", "--flush-parallel", 1, 64),
    Option("flush_on_shutdown", bool, False,
           "A clean stop (SIGTERM, systemctl stop) flushes this node first and waits until it is flushed (at most "
           "flush_timeout): its VMs move to other nodes; one no other node can take is shut down, as in any flush.",
           "--flush-on-shutdown"),
    Option("ready_on_boot", bool, False,
           "Once started, ready this node if its last clean stop flushed it (flush_on_shutdown): its VMs come back. "
           "A node flushed by an operator, or fenced, stays flushed.",
           "--ready-on-boot"),
    Option("flush_timeout", float, 600.0, "Seconds a flush on shutdown waits at most before the daemon stops anyway "
           "(the shipped unit's TimeoutStopSec, 720 s, covers the largest value).", "--flush-timeout", 1.0, 600.0),
    Option("floating_ips", list, (), "Addresses the primary carries, as ADDRESS/PREFIX@INTERFACE (coordinators).",
           "--floating-ip"),
    Option("arp_count", int, 2, "Gratuitous ARP announcements sent for each floating IP taken over.", None, 0, 20),
    Option("arp_interval", float, 0.02, "Seconds between those announcements.", None, 0.001, 1.0),
    Option("handover_timeout", float, 30.0, "Seconds each side of a primary handover waits for the other.",
           "--handover-timeout", 1.0, 600.0),
    Option("api_config", str, "", "pvcapid config file: when set, the primary runs the API (it moves with it).",
           "--api-config"),
    Option("self_fence_command", str, "",
           "Shell command the self-fence runs once it has stopped this node's VMs, to reset the host so that no "
           "write they left queued in its kernel (to network storage, say) leaves it later: e.g. "
           "`echo b > /proc/sysrq-trigger`. Empty: the VMs are stopped and the host keeps running.",
           "--self-fence-command"),
    LOG_OPTION,
    LOG_FORMAT_OPTION,
), DaemonConfig, _check_daemon)

"""Node daemon configuration: one table of options drives the TOML file, the flags and the docs.

A config file is TOML with the keys below at top level (see
``docs/pvcnoded.example.toml``). Flags override the file. Any error is one
readable line, raised as :class:`ValidationError` (``pvcnoded`` exits 2).
"""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass, fields
from typing import Any

from .errors import ValidationError
from .models import check_name
from .schema import Schema


@dataclass(frozen=True)
class Option:
    key: str
    type: type
    default: Any
    help: str
    flag: str | None = None  # command-line flag, when it has one
    minimum: float | None = None


OPTIONS: tuple[Option, ...] = (
    Option("node", str, None, "This node's name (required); unique in the cluster.", "--node"),
    Option("zookeeper_hosts", str, "127.0.0.1:2181", "ZooKeeper connection string, host:port[,host:port...].",
           "--zookeeper"),
    Option("zookeeper_root", str, "/pvc", "Root path of this cluster in ZooKeeper.", "--root"),
    Option("zookeeper_session_timeout", float, 6.0,
           "ZooKeeper session timeout in seconds: how long a silent daemon keeps its session.", None, 1.0),
    Option("libvirt_uri", str, "qemu:///system", "libvirt URI of this node's hypervisor.", "--libvirt"),
    Option("migration_address", str, "", "Address other nodes use to reach this node's libvirt for live migration.",
           "--migration-address"),
    Option("migration_uri_template", str, "qemu+tcp://{address}/system",
           "libvirt URI of a live-migration target; {address} is the target's migration_address."),
    Option("coordinator", bool, False, "Whether this node may become primary coordinator.", "--coordinator"),
    Option("keepalive_interval", float, 1.0, "Seconds between keepalives (node figures published to ZooKeeper).",
           "--keepalive-interval", 0.1),
    Option("shutdown_timeout", float, 180.0,
           "Seconds a graceful VM shutdown may take before the VM is stopped (destroyed).", "--shutdown-timeout", 0.0),
    Option("migration_timeout", float, 120.0,
           "Seconds either side of a migration waits for the other before giving up.", "--migration-timeout", 1.0),
    Option("flush_parallel", int, 2, "VMs migrated at a time when this node is flushed.", "--flush-parallel", 1),
    Option("log_level", str, "info", "Log level: debug, info, warning or error.", "--log-level"),
)

_LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class DaemonConfig:
    node: str
    zookeeper_hosts: str = "127.0.0.1:2181"
    zookeeper_root: str = "/pvc"
    zookeeper_session_timeout: float = 6.0
    libvirt_uri: str = "qemu:///system"
    migration_address: str = ""
    migration_uri_template: str = "qemu+tcp://{address}/system"
    coordinator: bool = False
    keepalive_interval: float = 1.0
    shutdown_timeout: float = 180.0
    migration_timeout: float = 120.0
    flush_parallel: int = 2
    log_level: str = "info"

    @property
    def migration_uri(self) -> str:
        """The URI other nodes use to live-migrate VMs here (empty: no live migration in)."""
        if not self.migration_address:
            return ""
        return self.migration_uri_template.format(address=self.migration_address)


assert [o.key for o in OPTIONS] == [f.name for f in fields(DaemonConfig)], "OPTIONS and DaemonConfig disagree"


def _coerce(opt: Option, value: Any) -> Any:
    if opt.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, opt.type) or (opt.type is not bool and isinstance(value, bool)):
        raise ValidationError(f"{opt.key}: expected {opt.type.__name__}, got {value!r}", opt.key)
    if opt.minimum is not None and value < opt.minimum:
        raise ValidationError(f"{opt.key}: must be at least {opt.minimum:g}, got {value!r}", opt.key)
    return value


def build_config(values: dict[str, Any]) -> DaemonConfig:
    """Check every value against :data:`OPTIONS` and build the config."""
    known = {o.key: o for o in OPTIONS}
    for key in values:
        if key not in known:
            raise ValidationError(f"unknown configuration key {key!r}", key)
    out = {}
    for key, value in values.items():
        out[key] = _coerce(known[key], value)
    if "node" not in out:
        raise ValidationError("node: required (the node's name), in the config file or --node", "node")
    check_name(out["node"], "node", "node")
    Schema(out.get("zookeeper_root", "/pvc"))
    if out.get("log_level", "info") not in _LOG_LEVELS:
        raise ValidationError(f"log_level: one of {', '.join(_LOG_LEVELS)}", "log_level")
    template = out.get("migration_uri_template", DaemonConfig.migration_uri_template)
    if "{address}" not in template:
        raise ValidationError("migration_uri_template: must contain {address}", "migration_uri_template")
    return DaemonConfig(**out)


def load_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ValidationError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError(f"config file {path} is not valid TOML: {exc}") from exc


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="TOML configuration file")
    for opt in OPTIONS:
        if not opt.flag:
            continue
        if opt.type is bool:
            parser.add_argument(opt.flag, dest=opt.key, action=argparse.BooleanOptionalAction, default=None,
                                help=opt.help)
        else:
            parser.add_argument(opt.flag, dest=opt.key, type=opt.type, default=None, help=opt.help)


def from_args(args: argparse.Namespace) -> DaemonConfig:
    values = load_file(args.config) if args.config else {}
    for opt in OPTIONS:
        flag_value = getattr(args, opt.key, None)
        if opt.flag and flag_value is not None:
            values[opt.key] = flag_value
    return build_config(values)

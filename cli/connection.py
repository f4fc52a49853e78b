"""Where the CLI finds its API, first found wins: ``--api``/``--key``/``--ca``; the connection named
by ``-c NAME``; ``PVC_API_URL``/``PVC_API_KEY``/``PVC_API_CA``; the config file's default connection.

The config file (``$PVC_CONFIG``, default ``~/.config/pvc/cli.toml``) holds named connections::

    default = "demo"
    [connections.demo]
    api = "http://127.0.0.1:7370"
    key = "..."
    ca = "/etc/pvc/ca.pem"      # optional: the CA of an HTTPS API's certificate
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import NamedTuple

import tomli_w

DEFAULT_URL = "http://127.0.0.1:7370"


def config_path() -> Path:
    return Path(os.environ.get("PVC_CONFIG") or Path.home() / ".config" / "pvc" / "cli.toml")


def read_config(path: Path | None = None) -> dict:
    path = path or config_path()
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc


class Connection(NamedTuple):
    url: str
    key: str | None
    ca: str | None = None


def resolve(api: str | None, key: str | None, name: str | None, ca: str | None = None) -> Connection:
    """The API URL, key and CA to use, by precedence; raises ValueError for an unknown connection name."""
    cfg = read_config()
    connections = cfg.get("connections", {})
    if name and name not in connections:
        raise ValueError(f"no connection named {name!r} in {config_path()}")
    named = connections[name] if name else {}  # asked for by name: above the environment
    default = connections.get(cfg.get("default"), {}) if not name else {}
    env = {"api": os.environ.get("PVC_API_URL"), "key": os.environ.get("PVC_API_KEY"),
           "ca": os.environ.get("PVC_API_CA")}

    def pick(flag: str | None, field: str) -> str | None:
        return flag or named.get(field) or env[field] or default.get(field)

    return Connection(pick(api, "api") or DEFAULT_URL, pick(key, "key"), pick(ca, "ca"))


def save_connection(name: str, api: str, key: str | None, make_default: bool = False) -> Path:
    """Add or replace a named connection in the config file (the demo uses this)."""
    path = config_path()
    cfg = read_config(path)
    cfg.setdefault("connections", {})[name] = {"api": api, **({"key": key} if key else {})}
    if make_default or "default" not in cfg:
        cfg["default"] = name
    text = tomli_w.dumps(cfg)  # quoted and escaped: any name, URL or key reads back as written
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)  # a new file is never readable by others, not even for a moment
    path.chmod(0o600)
    path.write_text(text)
    return path

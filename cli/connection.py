"""Where the CLI finds its API: ``--api``/``--key``, then ``PVC_API_URL``/``PVC_API_KEY``, then a config file.

The config file (``$PVC_CONFIG``, default ``~/.config/pvc/cli.toml``) holds named connections::

    default = "demo"
    [connections.demo]
    api = "http://127.0.0.1:7370"
    key = "..."
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

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


def resolve(api: str | None, key: str | None, name: str | None) -> tuple[str, str | None]:
    """The API URL and key to use, by precedence; raises ValueError for an unknown connection name."""
    cfg = read_config()
    connections = cfg.get("connections", {})
    chosen = name or cfg.get("default")
    if name and name not in connections:
        raise ValueError(f"no connection named {name!r} in {config_path()}")
    entry = connections.get(chosen, {}) if chosen else {}
    url = api or os.environ.get("PVC_API_URL") or entry.get("api") or DEFAULT_URL
    key = key or os.environ.get("PVC_API_KEY") or entry.get("key")
    return url, key


def save_connection(name: str, api: str, key: str | None, make_default: bool = False) -> Path:
    """Add or replace a named connection in the config file (the demo uses this)."""
    path = config_path()
    cfg = read_config(path)
    cfg.setdefault("connections", {})[name] = {"api": api, **({"key": key} if key else {})}
    if make_default or "default" not in cfg:
        cfg["default"] = name
    lines = [f'default = "{cfg["default"]}"', ""]
    for cname, entry in cfg["connections"].items():
        lines.append(f"[connections.{cname}]")
        lines.extend(f'{k} = "{v}"' for k, v in entry.items())
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    return path

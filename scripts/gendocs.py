"""Generate docs/reference/*.md from the code: config schemas, the CLI's help, the OpenAPI document.

    make docs        (a test fails when the committed files differ from what this writes)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Mapping

import click

from pvcapi.config import API
from pvcapi.openapi import document
from pvccli.main import cli
from pvccli.options import option_name
from pvccore import __version__
from pvccore.config import DAEMON, ConfigSchema
from pvccore.domain.fields import CLUSTER_SETTINGS, VM_META_FIELDS, Field, Kind

OUT = Path(__file__).resolve().parent.parent / "docs" / "reference"


def _default(value) -> str:
    if value is None:
        return "(required)"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return f"{value:g}" if isinstance(value, float) else str(value)


def _schema_table(schema: ConfigSchema) -> list[str]:
    lines = ["| key | type | default | flag | meaning |", "|---|---|---|---|---|"]
    for o in schema.options:
        lines.append(f"| `{o.key}` | {o.type.__name__} | `{_default(o.default)}` | {f'`{o.flag}`' if o.flag else '-'} "
                     f"| {o.help} |")
    return lines


def _values(f: Field) -> str:
    """A field's range or choices, for the tables below."""
    if f.low is not None and f.high is not None:
        return f"{f.low:g}–{f.high:g}" + (" s" if f.unit == "seconds" else f" {f.unit}" if f.unit else "")
    if f.kind is Kind.ENUM:
        return ", ".join(f"`{c}`" for c in f.choice_values)
    if f.kind is Kind.NAMES:
        return "node names"
    return "-"


def fields_table(table: Mapping[str, Field]) -> list[str]:
    """The reference table of a field table (pvccore.domain.fields): one row a field."""
    lines = ["| field | default | values | `pvc` option | meaning |", "|---|---|---|---|---|"]
    for f in table.values():
        lines.append(f"| `{f.name}` | `{_default(f.default)}` | {_values(f)} | `{option_name(f)}` | {f.text} |")
    return lines


def config_md(settings: Mapping[str, Field] = CLUSTER_SETTINGS, meta: Mapping[str, Field] = VM_META_FIELDS) -> str:
    """``settings``, ``meta``: the tables documented (a test passes others)."""
    lines = [
        "# Configuration reference", "",
        "Generated from the code (`make docs`); a test fails when it drifts.", "",
        "## pvcnoded", "",
        "TOML file (`pvcnoded -c FILE`), keys at top level; flags override the file. "
        "Example: [pvcnoded.example.toml](../pvcnoded.example.toml).", "",
        *_schema_table(DAEMON), "",
        "## pvcapid", "",
        "TOML file (`pvcapid -c FILE`); flags override the file. `--api-key` may be repeated.", "",
        *_schema_table(API), "",
        "## Cluster settings", "",
        "Stored in ZooKeeper; set with `pvc cluster set` or `POST /api/v1/cluster/status`.", "",
        "Why each bound is what it is: [operator guide](../operator.md#reliability-settings-and-their-bounds).", "",
        *fields_table(settings), "",
        "## VM metadata", "",
        "Stored with each VM; set with `pvc vm define` or `pvc vm meta`, `POST /api/v1/vm` or "
        "`POST /api/v1/vm/{vm}`.", "",
        *fields_table(meta),
    ]
    return "\n".join(lines) + "\n"


def cli_md() -> str:
    lines = ["# CLI reference", "", "Generated from `pvc --help` of every command (`make docs`).", ""]

    def walk(cmd: click.Command, path: list[str], parent: click.Context | None) -> None:
        # Contexts chained as at run time, so settings such as -h/--help are inherited.
        ctx = click.Context(cmd, info_name=path[-1], parent=parent, terminal_width=100, max_content_width=100,
                            **(cmd.context_settings if parent is None else {}))
        lines.extend([f"## `{' '.join(path)}`", "", "```", cmd.get_help(ctx).rstrip(), "```", ""])
        if isinstance(cmd, click.Group):
            for name in sorted(cmd.commands):
                walk(cmd.commands[name], path + [name], ctx)

    walk(cli, ["pvc"], None)
    return "\n".join(lines)


def api_md() -> str:
    doc = document(__version__)
    lines = ["# API reference", "",
             "Generated from the OpenAPI document served at `GET /api/v1/openapi.json` (`make docs`). "
             "Every route but `GET /api/v1` needs the `X-Api-Key` header; errors are "
             "`{\"message\", \"field\"}`.", "",
             "| method | path | what | body fields | answers |", "|---|---|---|---|---|"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            props = ", ".join(f"`{k}`" for k in body.get("properties", {}))
            codes = ", ".join(op["responses"])
            lines.append(f"| {method.upper()} | `{path}` | {op['summary']} | {props or '-'} | {codes} |")
    return "\n".join(lines) + "\n"


PAGES = {"config.md": config_md, "cli.md": cli_md, "api.md": api_md}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, make in PAGES.items():
        (OUT / name).write_text(make())
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

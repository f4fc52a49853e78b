"""Generate docs/reference/*.md from the code: config schemas, the CLI's help, the OpenAPI document.

    make docs        (a test fails when the committed files differ from what this writes)
"""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

import click

from pvcapi.config import API
from pvcapi.openapi import document
from pvccli.main import cli
from pvccore import __version__
from pvccore.config import DAEMON, ConfigSchema
from pvccore.models import SECONDS_BOUNDS, ClusterConfig

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


def config_md() -> str:
    cluster_help = {
        "default_selector": "Selector for VMs whose `node_selector` is `default`.",
        "allow_overcommit": "Place VMs even where free memory is short.",
        "keepalive_limit": "Seconds without a keepalive before a node is suspect. At least 3 keepalive intervals "
                           "of the slowest node.",
        "fence_grace": "Seconds a suspect node has to come back before it is declared dead and fenced. "
                       "`keepalive_limit + fence_grace` is at least the nodes' ZooKeeper session timeout plus one "
                       "keepalive interval.",
        "successful_fence": "After a confirmed fence: `recover` the node's VMs elsewhere, or `none`.",
        "failed_fence": "After every fencer failed: `recover` once the self-fence deadline has passed, or `none`.",
        "self_fence_deadline": "With `failed_fence = recover` only: seconds without a written keepalive (cut off "
                               "from ZooKeeper, say) after which a node stops its own VMs. At least the nodes' "
                               "ZooKeeper session timeout plus two keepalive intervals.",
        "fence_retry_max": "Longest back-off between fence attempts, seconds.",
    }
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
        "| setting | default | range | meaning |", "|---|---|---|---|",
    ]
    for f in fields(ClusterConfig):
        bounds = SECONDS_BOUNDS.get(f.name)
        span = f"{bounds[0]:g}–{bounds[1]:g} s" if bounds else "-"
        lines.append(f"| `{f.name}` | `{_default(f.default)}` | {span} | {cluster_help[f.name]} |")
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

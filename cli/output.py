"""Printing results: ``table`` (for people), ``json`` or ``yaml`` (for programs)."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Sequence

import click
import yaml

FORMATS = ("table", "json", "yaml")
format_option = click.option("-f", "--format", "fmt", type=click.Choice(FORMATS), default="table",
                             show_default=True, help="Output format.")


class Failure(click.ClickException):
    """One readable line on stderr, exit code 1."""

    def show(self, file=None) -> None:
        click.echo(f"pvc: error: {self.message}", err=True, file=file or sys.stderr)


def report_action(status: int, answer: dict, wait: bool) -> None:
    """Print an action's answer; a wait that timed out is a failure."""
    if wait and status == 202:
        raise Failure(answer.get("message", "not finished in time"))
    click.echo(answer.get("message", "done"))


def emit(data: Any, fmt: str, table: Callable[[Any], str]) -> None:
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    elif fmt == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True).rstrip("\n"))
    else:
        click.echo(table(data))


def columns(rows: Sequence[dict], spec: Sequence[tuple[str, Callable[[dict], Any]]]) -> str:
    """A plain text table: ``spec`` is (heading, value-of-row) pairs."""
    cells = [[h for h, _ in spec]] + [[_text(get(r)) for _, get in spec] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(spec))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def pairs(items: Sequence[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in items)
    return "\n".join(f"{k + ':':<{width + 1}} {_text(v)}" for k, v in items)


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)

"""``pvc selector``: the placement selectors the cluster knows."""

from __future__ import annotations

import click

from .output import columns, emit, format_option


@click.group("selector")
def group() -> None:
    """Placement selectors."""


@group.command("list")
@format_option
@click.pass_obj
def list_(client, fmt: str) -> None:
    """Registered selectors, with the plugin that provides each."""
    emit(client.selectors(), fmt, lambda rows: columns(rows, (
        ("SELECTOR", lambda s: s["name"]), ("PLUGIN", lambda s: s["plugin"]),
        ("DESCRIPTION", lambda s: s["description"]))))

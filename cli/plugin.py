"""``pvc plugin``: the plugins loaded by the API."""

from __future__ import annotations

import click

from .output import columns, emit, format_option


@click.group("plugin")
def group() -> None:
    """Plugins."""


@group.command("list")
@format_option
@click.pass_obj
def list_(client, fmt: str) -> None:
    """Loaded plugins: what they provide, from which distribution."""
    emit(client.plugins(), fmt, lambda rows: columns(rows, (
        ("PLUGIN", lambda p: p["name"]), ("PROVIDES", lambda p: p["kinds"]),
        ("DISTRIBUTION", lambda p: p["distribution"]), ("VERSION", lambda p: p["version"]))))

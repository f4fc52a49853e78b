"""``pvc cluster``: status and cluster-wide settings."""

from __future__ import annotations

import time

import click

from pvccore.domain.fields import CLUSTER_SETTINGS

from .options import field_options, given
from .output import columns, emit, format_option, pairs


@click.group("cluster")
def group() -> None:
    """The cluster as a whole."""


@group.command("status")
@format_option
@click.pass_obj
def status(client, fmt: str) -> None:
    """Health, primary coordinator, node and VM counts, settings."""
    emit(client.cluster_status(), fmt, _table)


@group.command("set")
@field_options(CLUSTER_SETTINGS)
@click.pass_obj
def set_(client, **options) -> None:
    """Change cluster-wide settings."""
    settings = given(CLUSTER_SETTINGS, options)
    if not settings:
        raise click.UsageError("give at least one setting")
    click.echo(client.set_cluster(**settings)["message"])


@group.command("maintenance")
@click.argument("mode", type=click.Choice(("on", "off")), metavar="on|off")
@click.pass_obj
def maintenance(client, mode: str) -> None:
    """Maintenance mode on or off. While on, silent nodes are reported but neither fenced nor recovered, and no
    node self-fences; turned off, every node's silence is timed afresh (a node that died meanwhile is fenced
    then)."""
    client.set_cluster(maintenance=mode == "on")
    click.echo(f"maintenance mode {mode}" + (": nobody is fenced until it is turned off" if mode == "on" else
                                              ": failed nodes are fenced and recovered again"))


FAULT_COLUMNS = (
    ("ID", lambda f: f["id"]),
    ("STATE", lambda f: ("active" if f["active"] else "cleared") + (", acked" if f["acknowledged"] else "")),
    ("COUNT", lambda f: f["count"]), ("FIRST SEEN", lambda f: _when(f["first_seen"])),
    ("LAST SEEN", lambda f: _when(f["last_seen"])), ("MESSAGE", lambda f: f["message"]),
)


@group.group("faults", invoke_without_command=True)
@format_option
@click.pass_context
def faults(ctx, fmt: str) -> None:
    """What needs an operator: nodes dead or fenced, failed fences, failed VMs, VMs stopped for want of a node,
    ZooKeeper servers down. Active ones first; acknowledge or delete them by ID."""
    if ctx.invoked_subcommand is None:
        emit(ctx.obj.faults(), fmt, lambda rows: columns(rows, FAULT_COLUMNS) if rows else "no faults")


def _chosen(client, ids: tuple[str, ...], every: bool) -> list[str]:
    if bool(ids) == every:
        raise click.UsageError("give fault IDs or --all, not both")
    return [f["id"] for f in client.faults()] if every else list(ids)


@faults.command("ack")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "every", is_flag=True, help="Every fault listed.")
@click.option("--undo", is_flag=True, help="Take the acknowledgement back.")
@click.pass_obj
def ack(client, ids: tuple[str, ...], every: bool, undo: bool) -> None:
    """Acknowledge faults: they no longer count until they come back."""
    for fault_id in _chosen(client, ids, every):
        click.echo(client.acknowledge_fault(fault_id, not undo)["message"])


@faults.command("delete")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--all", "every", is_flag=True, help="Every fault listed.")
@click.pass_obj
def delete(client, ids: tuple[str, ...], every: bool) -> None:
    """Forget faults and their history (one still there is raised again, anew)."""
    for fault_id in _chosen(client, ids, every):
        click.echo(client.delete_fault(fault_id)["message"])


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _table(s: dict) -> str:
    def counts(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "-"

    lines = [pairs([
        ("maintenance", "ON: nobody is fenced" if s.get("maintenance") else "off"),
        ("health", "healthy" if s["healthy"] else "DEGRADED"),
        ("primary", s["primary"]),
        ("last handover", f"{s['handover']['source']} -> {s['handover']['target']}: {s['handover']['phase']}"
         if s.get("handover") else None),
        ("nodes", f"{s['nodes']['total']} (daemon: {counts(s['nodes']['daemon_state'])}; "
                  f"domain: {counts(s['nodes']['domain_state'])})"),
        ("vms", f"{s['vms']['total']} ({counts(s['vms']['state'])}; migrating {s['vms']['migrating']})"),
        ("faults", f"{s['faults']['active']} active, {s['faults']['unacknowledged']} unacknowledged "
                   "(pvc cluster faults)" if s.get("faults") else None),
        ("default selector", s["config"]["default_selector"]),
        ("overcommit", s["config"]["allow_overcommit"]),
        ("fencing", ", ".join(f"{n} {f.get('state') or 'confirmed off'}" for n, f in sorted(s.get("fencing", {}).items()))
         or None),
    ])]
    lines += [f"problem: {p}" for p in s["problems"]]
    lines += [f"warning: {w}" for w in s.get("warnings", ())]
    return "\n".join(lines)

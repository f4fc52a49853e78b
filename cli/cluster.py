"""``pvc cluster``: status and cluster-wide settings."""

from __future__ import annotations

import click

from .output import emit, format_option, pairs


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
@click.option("--default-selector", help="Selector for VMs whose node_selector is 'default'.")
@click.option("--allow-overcommit/--no-allow-overcommit", default=None, help="Place VMs beyond free memory.")
@click.option("--keepalive-limit", type=float, help="Seconds without keepalive before a node is suspect.")
@click.option("--fence-grace", type=float, help="Seconds a suspect node has to come back before it is fenced.")
@click.option("--successful-fence", type=click.Choice(("recover", "none")), help="After a confirmed fence.")
@click.option("--failed-fence", type=click.Choice(("recover", "none")),
              help="After every fencer failed (recover only once the self-fence deadline has passed).")
@click.option("--self-fence-deadline", type=float, help="Seconds without ZooKeeper before a node stops its VMs.")
@click.option("--fence-retry-max", type=float, help="Longest back-off between fence attempts, seconds.")
@click.pass_obj
def set_(client, **options) -> None:
    """Change cluster-wide settings."""
    settings = {k: v for k, v in options.items() if v is not None}
    if not settings:
        raise click.UsageError("give at least one setting")
    click.echo(client.set_cluster(**settings)["message"])


def _table(s: dict) -> str:
    def counts(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "-"

    lines = [pairs([
        ("health", "healthy" if s["healthy"] else "DEGRADED"),
        ("primary", s["primary"]),
        ("last handover", f"{s['handover']['source']} -> {s['handover']['target']}: {s['handover']['phase']}"
         if s.get("handover") else None),
        ("nodes", f"{s['nodes']['total']} (daemon: {counts(s['nodes']['daemon_state'])}; "
                  f"domain: {counts(s['nodes']['domain_state'])})"),
        ("vms", f"{s['vms']['total']} ({counts(s['vms']['state'])}; migrating {s['vms']['migrating']})"),
        ("default selector", s["config"]["default_selector"]),
        ("overcommit", s["config"]["allow_overcommit"]),
        ("fencing", ", ".join(f"{n} {f['state']}" for n, f in sorted(s.get("fencing", {}).items())) or None),
    ])]
    lines += [f"problem: {p}" for p in s["problems"]]
    return "\n".join(lines)

"""``pvc node``: list, info, flush, ready."""

from __future__ import annotations

import json
import time

import click

from .output import Failure, columns, emit, finish, format_option, pairs

NODE_COLUMNS = (
    ("NODE", lambda n: n["name"]), ("DAEMON", lambda n: n["daemon_state"]),
    ("COORDINATOR", lambda n: n["coordinator_state"]), ("DOMAIN", lambda n: n["domain_state"]),
    ("VMS", lambda n: n["vm_count"]), ("VCPUS", lambda n: f"{n['vcpus_allocated']}/{n['cpu_count']}"),
    ("FREE MIB", lambda n: n["memory_free_mib"]), ("PROV MIB", lambda n: n["memory_provisioned_mib"]),
    ("TOTAL MIB", lambda n: n["memory_total_mib"]), ("LOAD", lambda n: n["load_1m"]),
)


@click.group("node")
def group() -> None:
    """Hypervisor nodes."""


@group.command("list")
@format_option
@click.pass_obj
def list_(client, fmt: str) -> None:
    """All nodes with their states and figures."""
    emit(client.nodes(), fmt, lambda rows: columns(rows, NODE_COLUMNS))


@group.command("info")
@click.argument("node")
@format_option
@click.pass_obj
def info(client, node: str, fmt: str) -> None:
    """One node in full, with the VMs assigned to it."""
    emit(client.node(node), fmt, lambda n: pairs([(h.lower(), get(n)) for h, get in NODE_COLUMNS]
                                                 + [("running", n["running_vms"]), ("vms", n["vms"])]))


def _domain(client, node: str, state: str, wait: bool, timeout: float) -> None:
    status, answer = client.node_domain_state(node, state)
    if not wait:
        click.echo(answer["message"])
        return
    goal = "flushed" if state == "flush" else "ready"
    deadline = time.monotonic() + timeout
    last = None
    while True:
        info = client.node(node)
        if state == "flush":
            left = [v for v in client.vms(node=node) if v["running"]]
            line = f"{node}: {info['domain_state']}, {len(left)} running VM(s) left"
        else:
            line = f"{node}: {info['domain_state']}"
        if line != last:
            click.echo(line)
            last = line
        if info["domain_state"] == goal:
            click.echo(f"node {node} is {goal}")
            return
        if info["domain_state"] != (state if state == "flush" else "unflush"):
            raise Failure(f"node {node} went to {info['domain_state']} before it was {goal}")
        if time.monotonic() > deadline:
            raise Failure(f"node {node} not {goal} within {timeout:g}s; still in progress")
        time.sleep(0.5)  # progress display: polling the API, under the deadline above


@group.command("flush")
@click.argument("node")
@click.option("--wait/--no-wait", default=False, help="Show progress until the node is flushed.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait at most.")
@click.pass_obj
def flush(client, node: str, wait: bool, timeout: float) -> None:
    """Move every VM off NODE (by placement, inside each VM's limit)."""
    _domain(client, node, "flush", wait, timeout)


@group.command("ready")
@click.argument("node")
@click.option("--wait/--no-wait", default=False, help="Show progress until the node is ready.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait at most.")
@click.pass_obj
def ready(client, node: str, wait: bool, timeout: float) -> None:
    """Take NODE's VMs back and start its autostart VMs."""
    _domain(client, node, "ready", wait, timeout)


@group.command("primary")
@click.argument("node")
@click.option("--wait/--no-wait", default=False, help="Return once the handover is over.")
@click.pass_obj
def primary(client, node: str, wait: bool) -> None:
    """Make coordinator NODE the primary (a planned, phased handover)."""
    finish(*client.node_coordinator_state(node, "primary", wait), wait)


@group.command("secondary")
@click.argument("node")
@click.option("--wait/--no-wait", default=False, help="Return once the handover is over.")
@click.pass_obj
def secondary(client, node: str, wait: bool) -> None:
    """Hand the primary role away from NODE to another coordinator."""
    finish(*client.node_coordinator_state(node, "secondary", wait), wait)


@group.command("fence-config")
@click.argument("node")
@click.option("--set", "source", type=click.File("r"),
              help="Replace it with the JSON list in this file (- for stdin): [{\"fencer\": ..., \"params\": {...}}].")
@format_option
@click.pass_obj
def fence_config(client, node: str, source, fmt: str) -> None:
    """Show (secrets masked) or set NODE's ordered fence configuration."""
    if source is not None:
        try:
            entries = json.load(source)
        except ValueError as exc:
            raise Failure(f"{source.name}: not valid JSON: {exc}") from None
        answer = client.set_fence_config(node, entries)
    else:
        answer = client.fence_config(node)
    emit(answer, fmt, lambda a: columns(a["entries"], (
        ("#", lambda e: a["entries"].index(e) + 1), ("FENCER", lambda e: e["fencer"]),
        ("PARAMS", lambda e: " ".join(f"{k}={v}" for k, v in sorted(e["params"].items())))))
         if a["entries"] else f"node {node}: no fence configuration")

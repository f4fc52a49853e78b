"""``pvc node``: list, info, flush, ready, handover, fencing, what-if-fail."""

from __future__ import annotations

import json
import time

import click

from .client import ApiError
from . import logs
from .complete import node_argument
from .output import Failure, columns, emit, format_option, pairs
from .progress import Progress

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
@node_argument
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
    goal, working = ("flushed", "flush") if state == "flush" else ("ready", "unflush")
    # What the node was in before our request: a read that still shows it is stale (a ZooKeeper
    # server behind the one that took the write), not a step backwards.
    before = ("ready", "unflush") if state == "flush" else ("flushed", "flush")
    deadline = time.monotonic() + timeout
    progress = Progress()
    total = None
    try:
        while True:
            info = client.node(node)
            if state == "flush":  # a bar: the VMs that were running on it, and those still there
                left = len([v for v in client.vms(node=node) if v["running"]])
                total = max(total or 0, left)
                progress.show(f"{node}: {info['domain_state']}, {left} running VM(s) left", total - left, total)
            else:  # the VMs coming home are not known ahead (a listing of every VM each time would cost)
                progress.show(f"{node}: {info['domain_state']}, {len(info['vms'])} VM(s) assigned")
            if info["domain_state"] == goal:
                progress.done(f"node {node} is {goal}")
                return
            if info["domain_state"] not in (working, *before):
                raise Failure(f"node {node} went to {info['domain_state']} before it was {goal}")
            if time.monotonic() > deadline:
                raise Failure(f"node {node} not {goal} within {timeout:g}s; still in progress")
            time.sleep(0.5)  # progress display: polling the API, under the deadline above
    finally:
        progress.close()


@group.command("flush")
@node_argument
@click.option("--wait/--no-wait", default=False, help="Show progress until the node is flushed.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait at most.")
@click.pass_obj
def flush(client, node: str, wait: bool, timeout: float) -> None:
    """Move every VM off NODE (by placement, inside each VM's limit)."""
    _domain(client, node, "flush", wait, timeout)


@group.command("ready")
@node_argument
@click.option("--wait/--no-wait", default=False, help="Show progress until the node is ready.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait at most.")
@click.pass_obj
def ready(client, node: str, wait: bool, timeout: float) -> None:
    """Take NODE's VMs back and start its autostart VMs."""
    _domain(client, node, "ready", wait, timeout)


@group.command("primary")
@node_argument
@click.option("--wait/--no-wait", default=False, help="Return once the handover is over.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait at most.")
@click.pass_obj
def primary(client, node: str, wait: bool, timeout: float) -> None:
    """Make coordinator NODE the primary (a planned, phased handover)."""
    _handover(client, node, "primary", wait, timeout)


@group.command("secondary")
@node_argument
@click.option("--wait/--no-wait", default=False, help="Return once the handover is over.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait at most.")
@click.pass_obj
def secondary(client, node: str, wait: bool, timeout: float) -> None:
    """Hand the primary role away from NODE to another coordinator."""
    _handover(client, node, "secondary", wait, timeout)


def _handover(client, node: str, state: str, wait: bool, timeout: float) -> None:
    """Request a handover; with ``wait``, follow it through the cluster status until it is over.

    The request itself does not wait: the API moves with the primary role, so the process that
    took it stops half-way. While it moves, the API cannot be reached for a moment: we retry.
    """
    _status, answer = client.node_coordinator_state(node, state)
    if not wait:
        click.echo(answer["message"])
        return
    h = answer["handover"]
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = client.cluster_status()
        except ApiError as exc:
            if exc.status != 0:  # an answer (a refusal): not the API moving
                raise
            status = None
        current = (status or {}).get("handover") or {}
        if current.get("id") == h["id"]:
            if current["phase"] == "failed":
                raise Failure(f"handover from {h['source']} to {h['target']} failed: {current['reason']}")
            if current["phase"] == "done" and status["primary"] == h["target"]:
                click.echo(f"{h['target']} is primary")
                return
        if time.monotonic() > deadline:
            raise Failure(f"handover from {h['source']} to {h['target']} not finished within {timeout:g}s")
        time.sleep(0.1)  # following the handover through the API, under the deadline above


@group.command("fence-config")
@node_argument
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


@group.command("confirm-off")
@node_argument
@click.option("--yes", is_flag=True, help="Do not ask: the node is off, checked with my own eyes.")
@click.pass_obj
def confirm_off(client, node: str, yes: bool) -> None:
    """Tell the cluster that dead NODE is powered off, when no fencer can confirm it.

    Its VMs are then recovered elsewhere. Use it only when you have seen the node off (pulled
    power, a dead chassis): a node that is in fact running would run its VMs twice.
    """
    if not yes:
        click.confirm(f"Is {node} powered off? Its VMs will be started elsewhere", abort=True)
    emit(client.confirm_off(node), "table", lambda d: d["message"])


@group.command("what-if-fail")
@node_argument
@format_option
@click.pass_obj
def what_if_fail(client, node: str, fmt: str) -> None:
    """Where NODE's VMs would go if it failed now (the plan its recovery would carry out), and which would
    stay stopped for want of a node. Nothing is changed."""
    emit(client.what_if_fail(node), fmt, _plan_table)


def _plan_table(plan: dict) -> str:
    if not (plan["moves"] or plan["parked"] or plan["stays"]):
        return f"{plan['node']} runs no VMs: its loss moves nothing"
    rows = [{"vm": m["vm"], "outcome": f"-> {m['target']}", "why": f"{m['selector']} score {m['score']:.2f}"}
            for m in plan["moves"]]
    rows += [{"vm": p["vm"], "outcome": "STOPPED (autostart on its return)", "why": p["reason"]}
             for p in plan["parked"]]
    rows += [{"vm": vm, "outcome": "stays where it is", "why": f"was migrating to {plan['node']}"}
             for vm in plan["stays"]]
    head = (f"if {plan['node']} failed now: {len(plan['moves'])} VM(s) recovered elsewhere, "
            f"{len(plan['parked'])} left stopped")
    return head + "\n" + columns(rows, (("VM", lambda r: r["vm"]), ("OUTCOME", lambda r: r["outcome"]),
                                        ("WHY", lambda r: r["why"])))


@group.command("log")
@node_argument
@click.option("-n", "--lines", default=100, show_default=True, type=click.IntRange(1, 10000), help="How many lines.")
@click.option("-f", "--follow", is_flag=True, help="Then print new lines as they come, until Ctrl-C.")
@click.pass_obj
def log(client, node: str, lines: int, follow: bool) -> None:
    """The node daemon's own log: its last lines, as the node last published them (every 2 s)."""
    logs.show(lambda n: client.node_log(node, n), lines, follow, f"node {node}")

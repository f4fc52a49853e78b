"""``pvc vm``: define, metadata, list/info, lifecycle, migration, undefine, placement."""

from __future__ import annotations

import difflib
import time

import click

from pvccore.domain.fields import VM_META_FIELDS

from . import logs
from .complete import complete_nodes, vm_argument
from .options import field_options, given, option_name
from .output import Failure, columns, emit, format_option, pairs, report_action
from .progress import Progress

VM_COLUMNS = (
    ("VM", lambda v: v["name"]), ("STATE", lambda v: v["state"]), ("RUNNING", lambda v: v["running"]),
    ("NODE", lambda v: v["node"]), ("LAST", lambda v: v["last_node"]), ("MIB", lambda v: v["memory_mib"]),
    ("VCPUS", lambda v: v["vcpus"]),
    # one column per metadata field, in the table's order
    *((f.header, lambda v, name=f.name: v["meta"][name] if v["meta"][name] or name != "node_limit" else "any")
      for f in VM_META_FIELDS.values()),
)


#: the metadata options shared by ``define`` and ``meta``
meta_options = field_options(VM_META_FIELDS)


@click.group("vm")
def group() -> None:
    """Virtual machines."""


@group.command("define")
@click.argument("xml_file", type=click.File("r"))
@click.option("--target", shell_complete=complete_nodes, help="Node to define it on (default: chosen by placement).")
@click.option("--start/--no-start", default=True, show_default=True, help="Start it once defined.")
@meta_options
@click.pass_obj
def define(client, xml_file, target, start, **meta) -> None:
    """Define a VM from a libvirt domain XML file (- for stdin)."""
    answer = client.define_vm(xml_file.read(), target=target, start=start, **given(VM_META_FIELDS, meta))
    click.echo(answer["message"])


@group.command("meta")
@vm_argument
@meta_options
@click.pass_obj
def meta(client, vm, **meta) -> None:
    """Change a VM's metadata (only the options given)."""
    changes = given(VM_META_FIELDS, meta)
    if not changes:
        raise click.UsageError("give at least one of " + ", ".join(option_name(f) for f in VM_META_FIELDS.values()))
    click.echo(client.set_meta(vm, **changes)["message"])


@group.command("list")
@click.argument("pattern", required=False)
@click.option("--node", multiple=True, shell_complete=complete_nodes, help="Only VMs on this node (repeat for any of several).")
@click.option("--state", multiple=True, help="Only VMs in this state (repeat for any of several).")
@click.option("--tag", multiple=True, help="Only VMs with this tag (repeat for any of several).")
@click.option("--negate", is_flag=True, help="The VMs that do not pass the filters.")
@format_option
@click.pass_obj
def list_(client, pattern, node, state, tag, negate, fmt) -> None:
    """VMs, optionally those whose name matches PATTERN: a glob (web*, db-[0-9]?) when it has * ? or [, or else
    a part of the name (case-sensitive) or the first 8 or more characters of the UUID. At most 128 characters,
    never a regular expression.
    A VM is listed when it passes every filter given."""
    emit(client.vms(node=list(node) or None, state=list(state) or None, limit=pattern, tag=list(tag) or None,
                    negate=negate), fmt, lambda rows: columns(rows, VM_COLUMNS))


@group.command("info")
@vm_argument
@click.option("--xml", "show_xml", is_flag=True, help="Print the libvirt XML too.")
@format_option
@click.pass_obj
def info(client, vm, show_xml, fmt) -> None:
    """One VM: state, node, metadata."""

    def table(v: dict) -> str:
        rows = [(h.lower(), get(v)) for h, get in VM_COLUMNS] + [("uuid", v["uuid"]), ("reason", v["reason"])]
        if v["migration"]:
            m = v["migration"]
            rows.append(("migration", f"{m['kind']} {m['source']} -> {m['target']} ({m['phase']})"))
        found = v.get("devices") or {"disks": [], "networks": []}
        rows += [(f"disk {d['target'] or '?'}", f"{d['device']} {d['source'] or '-'}"
                  + "".join(f" {k}={d[k]}" for k in ("bus", "format") if d[k])) for d in found["disks"]]
        rows += [(f"net {i}", f"{n['type']} {n['source'] or '-'}" + "".join(f" {k}={n[k]}" for k in ("mac", "model")
                                                                          if n[k]))
                 for i, n in enumerate(found["networks"])]
        return pairs(rows) + (f"\n\n{v['xml']}" if show_xml else "")

    emit(client.vm(vm), fmt, table)


@group.command("modify")
@vm_argument
@click.argument("xml_file", type=click.File("r"), required=False, metavar="[FILE]")
@click.option("--restart", is_flag=True, help="Restart the VM to apply it now (otherwise at its next start).")
@click.option("-y", "--yes", is_flag=True, help="Save without asking (the diff is still shown).")
@click.pass_obj
def modify(client, vm, xml_file, restart, yes) -> None:
    """Replace a VM's libvirt XML with FILE (- for stdin), or edit it in $EDITOR when no FILE is given.

    The change is shown as a diff and saved once confirmed; the name and UUID must stay.
    """
    old = client.vm(vm)["xml"]
    new = xml_file.read() if xml_file is not None else click.edit(old, extension=".xml")
    if new is None or new.strip() == old.strip():
        click.echo(f"VM {vm}: no change")
        return
    click.echo("\n".join(difflib.unified_diff(old.splitlines(), new.splitlines(), f"{vm} (saved)", f"{vm} (new)",
                                              lineterm="")))
    if not yes and not click.confirm(f"Save this XML for VM {vm}?", default=False):
        raise Failure(f"VM {vm}: nothing saved")
    click.echo(client.replace_xml(vm, new)["message"])
    if restart:
        report_action(*client.vm_state(vm, "restart", True), True)


def _state_command(state: str, doc: str):
    @vm_argument
    @click.option("--wait/--no-wait", default=False, help="Return once the change is observed.")
    @click.pass_obj
    def command(client, vm, wait) -> None:
        report_action(*client.vm_state(vm, state, wait), wait)

    command.__doc__ = doc
    return group.command(state)(command)


for _state, _doc in (("start", "Start a VM."), ("shutdown", "Shut a VM down gracefully (stopped after a timeout)."),
                     ("stop", "Stop a VM at once (power off)."), ("restart", "Restart a running VM."),
                     ("disable", "Shut a VM down and keep it down.")):
    _state_command(_state, _doc)


@group.command("migrate")
@vm_argument
@click.option("--target", shell_complete=complete_nodes, help="Node to migrate to (default: chosen by placement).")
@click.option("--force-live", is_flag=True, help="Live migration only; fail rather than shut down.")
@click.option("--wait/--no-wait", default=False, help="Return once the migration is over.")
@click.pass_obj
def migrate(client, vm, target, force_live, wait) -> None:
    """Move a VM for now; unmigrate brings it back."""
    _node_action(client, vm, "migrate", target, force_live, wait)


@group.command("unmigrate")
@vm_argument
@click.option("--force-live", is_flag=True, help="Live migration only.")
@click.option("--wait/--no-wait", default=False, help="Return once the migration is over.")
@click.pass_obj
def unmigrate(client, vm, force_live, wait) -> None:
    """Send a migrated VM back to its last node."""
    _node_action(client, vm, "unmigrate", None, force_live, wait)


@group.command("move")
@vm_argument
@click.option("--target", shell_complete=complete_nodes, help="Node to move to (default: chosen by placement).")
@click.option("--force-live", is_flag=True, help="Live migration only.")
@click.option("--wait/--no-wait", default=False, help="Return once the migration is over.")
@click.pass_obj
def move(client, vm, target, force_live, wait) -> None:
    """Move a VM for good (it forgets its last node)."""
    _node_action(client, vm, "move", target, force_live, wait)


MIGRATION_TIMEOUT = 600.0  # seconds a terminal follows a migration at most


def _node_action(client, vm: str, action: str, target: str | None, force_live: bool, wait: bool) -> None:
    """Request the migration. ``--wait`` on a terminal follows it here (phase and time elapsed); elsewhere the API
    waits and answers once."""
    progress = Progress()
    if not (wait and progress.tty):
        report_action(*client.vm_node(vm, action, target, force_live, wait), wait)
        return
    _status, answer = client.vm_node(vm, action, target, force_live, False)
    where = (answer["vm"].get("migration") or {}).get("target") or answer["vm"]["node"]
    deadline = time.monotonic() + MIGRATION_TIMEOUT
    try:
        while True:
            current = client.vm(vm)
            mig = current["migration"]
            if mig is None and not (current["node"] == where and current["state"] == "start"
                                    and not current["running"]):
                break  # over (a VM started on the target is over once its node lists it running)
            progress.show(f"{vm}: {mig['kind']} {mig['source']} -> {mig['target']}, {mig['phase'] or 'requested'}"
                          if mig else f"{vm}: starting on {where}")
            if time.monotonic() > deadline:
                raise Failure(f"{action} of {vm} to {where} not finished within {MIGRATION_TIMEOUT:g}s; still in "
                              "progress")
            time.sleep(0.2)  # progress display: polling the API, under the deadline above
    finally:
        progress.close()
    if current["node"] != where or current["state"] == "fail":
        raise Failure(f"{action} of {vm} to {where} failed: {current['reason'] or 'it stayed on ' + current['node']}")
    progress.done(f"VM {vm} is on {where}")


@group.group("tag")
def tag() -> None:
    """A VM's tags: labels for pvc vm list --tag and for selector plugins. Protected ones are removed only with
    --protected."""


@tag.command("get")
@vm_argument
@format_option
@click.pass_obj
def tag_get(client, vm, fmt) -> None:
    """The VM's tags and protected tags."""
    emit(client.vm_tags(vm), fmt, lambda t: pairs([("tags", t["tags"]), ("protected", t["protected_tags"])]))


def _tag_command(verb: str, protected_help: str, doc: str):
    @vm_argument
    @click.argument("tags", nargs=-1, required=True)
    @click.option("--protected", is_flag=True, help=protected_help)
    @click.pass_obj
    def command(client, vm, tags, protected) -> None:
        click.echo(client.tag_vm(vm, protected=protected, **{verb: tags})["message"])

    command.__doc__ = doc
    return tag.command(verb)(command)


_tag_command("add", "Add them as protected tags.", "Add TAGS to a VM.")
_tag_command("remove", "Needed to remove a protected tag.", "Remove TAGS from a VM.")


@group.command("rename")
@vm_argument
@click.argument("new_name")
@click.pass_obj
def rename(client, vm, new_name) -> None:
    """Give a stopped VM the name NEW_NAME (in its XML too)."""
    click.echo(client.rename_vm(vm, new_name)["message"])


@group.command("log")
@vm_argument
@click.option("-n", "--lines", default=100, show_default=True, type=click.IntRange(1, 10000), help="How many lines.")
@click.option("-f", "--follow", is_flag=True, help="Then print new lines as they come, until Ctrl-C.")
@click.pass_obj
def log(client, vm, lines: int, follow: bool) -> None:
    """The VM's serial console: its last lines, as its node last published them (every 2 s). Only a console
    libvirt writes to a file: <serial type='file'><source path=.../></serial>, or a <log file=.../>."""
    logs.show(lambda n: client.vm_log(vm, n), lines, follow, f"VM {vm}")


@group.command("undefine")
@vm_argument
@click.option("--force", is_flag=True, help="Stop it first if it runs.")
@click.pass_obj
def undefine(client, vm, force) -> None:
    """Remove a VM from the cluster."""
    click.echo(client.undefine(vm, force)["message"])


@group.command("placement")
@vm_argument
@format_option
@click.pass_obj
def placement(client, vm, fmt) -> None:
    """Where placement would send the VM now, with every node's score or why it is left out."""

    def table(p: dict) -> str:
        head = f"VM {p['vm']}, selector {p['selector']}: {'-> ' + p['target'] if p['target'] else 'no node can take it'}"
        if p.get("note"):
            head += f"\nnote: {p['note']}"
        return head + "\n" + columns(p["nodes"], (("NODE", lambda r: r["node"]),
                                                  ("SCORE", lambda r: r.get("score")),
                                                  ("EXCLUDED", lambda r: r.get("excluded"))))

    emit(client.placement(vm), fmt, table)

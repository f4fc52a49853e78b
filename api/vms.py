"""``/vm``: define, inspect, change metadata, start/stop, migrate, undefine, explain placement."""

from __future__ import annotations

import fnmatch
import json
import threading
from typing import Callable

import falcon

from pvccore.domain.states import USER_VM_STATES, MigrationKind
from pvccore.errors import NotFoundError
from pvccore.domain.domainxml import devices
from pvccore.domain.fields import VM_META_FIELDS
from pvccore.domain.models import Cluster, VM
from pvccore.domain.placement import place

from .errors import BadRequest
from .guards import MAX_XML, caught_up, fresh, not_kept
from .inputs import body, field, flag, log_answer

META_FIELDS = frozenset(VM_META_FIELDS)
ACTIONS = tuple(str(k) for k in MigrationKind)


def vm_out(vm: VM, cluster: Cluster) -> dict:
    data = vm.to_dict()
    data["running"] = runs(vm, cluster)
    return data


def runs(vm: VM, cluster: Cluster) -> bool:
    """Whether ``vm`` runs on its node, as that node last reported."""
    node = cluster.nodes.get(vm.node)
    return bool(node and vm.name in node.running_vms)


MAX_LIMIT = 128  # characters of a name filter


UUID_PREFIX = 8  # characters of a UUID that find a VM by it (fewer would match hex in many UUIDs)


def name_filter(limit: str | None):
    """``limit`` as a test on a VM: a glob on its name when it has ``*``, ``?`` or ``[``; else a part of its name,
    or the start of its UUID (at least :data:`UUID_PREFIX` characters, any case).

    Never a regular expression: a user's pattern must not cost more than a scan of the names
    (Python's fnmatch compiles globs without catastrophic backtracking).
    """
    if not limit:
        return lambda vm: True
    if len(limit) > MAX_LIMIT:
        raise BadRequest(f"limit must be at most {MAX_LIMIT} characters; got {len(limit)}", "limit")
    if any(c in limit for c in "*?["):
        return lambda vm: fnmatch.fnmatchcase(vm.name, limit)
    prefix = limit.lower() if len(limit) >= UUID_PREFIX else None
    return lambda vm: limit in vm.name or (prefix is not None and vm.uuid.lower().startswith(prefix))


def vm_filter(req) -> Callable[[VM], bool]:
    """The listing's filters (``node``, ``state``, ``tag`` — each may be given more than once, any matches —
    and ``limit``), all of which a VM must pass; ``negate=true``: the VMs that do not."""
    nodes, states, tags = ({v for value in req.get_param_as_list(p) or () for v in value.split(",") if v}
                           for p in ("node", "state", "tag"))
    matches = name_filter(req.get_param("limit"))
    negate = flag(req, "negate")

    def test(v: VM) -> bool:
        passed = ((not nodes or v.node in nodes) and (not states or v.state in states)
                  and (not tags or not tags.isdisjoint(v.meta.tags + v.meta.protected_tags)) and matches(v))
        return passed != negate

    return test


def xml_field(data: dict) -> str:
    """The ``xml`` field: a non-empty string no longer than ZooKeeper stores with room to spare."""
    xml = field(data, "xml", str)
    size = len(xml.encode())
    if size > MAX_XML:
        raise BadRequest(f"xml is {size} bytes; the limit is {MAX_XML} bytes ({MAX_XML // 1024} KiB)", "xml")
    if not xml.strip():
        raise BadRequest("xml must not be empty: give the VM's libvirt domain XML", "xml")
    return xml


class EncodedVMs:
    """Each VM's JSON, encoded once per (immutable) VM object: listing 10,000 VMs joins bytes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[VM, bytes]] = {}

    def listing(self, vms: list[VM], cluster: Cluster) -> bytes:
        parts = []
        running = {(n.name, vm) for n in cluster.nodes.values() for vm in n.running_vms}
        with self._lock:
            cache = self._cache
            for vm in vms:
                hit = cache.get(vm.name)
                if hit is None or hit[0] is not vm:
                    hit = cache[vm.name] = (vm, json.dumps(vm.to_dict(), separators=(",", ":"))[1:].encode())
                runs = (vm.node, vm.name) in running
                parts.append((b'{"running":true,' if runs else b'{"running":false,') + hit[1])
            if len(cache) > 2 * len(cluster.vms) + 100:  # forget deleted VMs now and then
                self._cache = {n: e for n, e in cache.items() if n in cluster.vms}
        return b"[" + b",".join(parts) + b"]"


class VMs:
    def __init__(self, deps):
        self.deps = deps
        self._encoded = EncodedVMs()

    # -- collection --------------------------------------------------------------------

    def on_get(self, req, resp):
        """Filters: ``node``, ``state``, ``tag``, ``limit`` (a glob such as ``web*``, or else a substring of the name
        or UUID), ``negate`` (see :func:`vm_filter`)."""
        test = vm_filter(req)
        caught_up(self.deps)
        snap = self.deps.ops.view.snapshot()
        chosen = [v for _name, v in sorted(snap.vms.items()) if test(v)]
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._encoded.listing(chosen, snap)

    def on_post(self, req, resp):
        """Define a VM: ``{"xml", metadata fields..., "target", "start"}``."""
        data = body(req, META_FIELDS | {"xml", "target", "start"})
        xml = xml_field(data)
        target = field(data, "target", str, None)
        start = field(data, "start", bool, True)
        ops = self.deps.ops
        vm = ops.define_vm(xml, {k: data[k] for k in META_FIELDS & data.keys()}, target=target, start=start)
        resp.status = falcon.HTTP_201
        resp.media = {"message": f"VM {vm.name} defined on {vm.node}", "vm": vm_out(vm, ops.view.snapshot())}

    # -- one VM --------------------------------------------------------------------------

    def on_get_one(self, req, resp, vm):
        ops = self.deps.ops
        snap = ops.view.snapshot()

        def seen() -> VM:
            if vm not in snap.vms:
                raise NotFoundError(f"VM {vm!r} not found")
            return snap.vms[vm]

        # From the watched view; a VM this worker has not seen yet is read from ZooKeeper (while it answers).
        current = snap.vms.get(vm) or fresh(self.deps.guards, lambda: ops.store.get_vm(vm), seen)
        # The XML as cached by the view, or read; None while ZooKeeper is away and it was never read.
        xml = fresh(self.deps.guards, lambda: ops.view.vm_xml(vm, timeout=self.deps.op_timeout),
                    lambda: ops.view.cached_xml(vm))
        if xml is None and self.deps.guards.stale_for() is None:
            raise NotFoundError(f"VM {vm!r} not found")
        data = vm_out(current, snap)
        data["xml"] = xml
        data["devices"] = devices(xml) if xml is not None else None
        resp.media = data

    def on_post_one(self, req, resp, vm):
        """Set metadata (any of :data:`pvccore.domain.fields.VM_META_FIELDS`)."""
        changes = body(req, META_FIELDS)
        if not changes:
            raise BadRequest(f"give at least one of: {', '.join(sorted(META_FIELDS))}")
        ops = self.deps.ops
        updated = ops.set_meta(vm, changes)
        message = f"VM {vm} metadata updated"
        if updated.meta.node_limit and updated.node and updated.node not in updated.meta.node_limit:
            message += (f"; it is on {updated.node}, outside its new limit, and stays there until it moves "
                        f"(pvc vm migrate {vm})")
        resp.media = {"message": message, "vm": vm_out(updated, ops.view.snapshot())}

    def on_put_one(self, req, resp, vm):
        """Replace the libvirt XML: ``{"xml": ...}`` (same name and UUID)."""
        xml = xml_field(body(req, {"xml"}))
        ops = self.deps.ops
        updated = ops.replace_xml(vm, xml)
        resp.media = {"message": f"VM {vm} XML replaced; it applies at the next start",
                      "vm": vm_out(updated, ops.view.snapshot())}

    def on_delete_one(self, req, resp, vm):
        """Undefine; refused while running unless ``?force=true`` (then stopped first)."""
        self.deps.ops.undefine(vm, force=flag(req, "force"), timeout=self.deps.wait_timeout)
        resp.media = {"message": f"VM {vm} undefined"}

    def on_get_log(self, req, resp, vm):
        """The last lines of the VM's serial console (``?lines=N``, default 100), as its node last published them
        (only a console libvirt writes to a file: ``<serial type='file'>`` or a ``<log file=...>``)."""
        ops = self.deps.ops

        def read() -> dict:
            ops.store.get_vm(vm)  # NotFoundError for an unknown VM
            return log_answer(req, ops.store, ops.store.paths.vm_console(vm), "vm", vm)

        resp.media = fresh(self.deps.guards, read, not_kept("consoles"))

    def on_post_rename(self, req, resp, vm):
        """``{"name": NEW}``: a stopped VM's new name (its document, XML and index move together)."""
        new = field(body(req, {"name"}), "name", str)
        ops = self.deps.ops
        renamed = ops.rename_vm(vm, new)
        resp.media = {"message": f"VM {vm} renamed to {renamed.name}", "vm": vm_out(renamed, ops.view.snapshot())}

    def on_get_tags(self, req, resp, vm):
        """``/vm/{vm}/tags``: ``{"tags", "protected_tags"}``."""
        meta = self._current(vm).meta
        resp.media = {"vm": vm, "tags": list(meta.tags), "protected_tags": list(meta.protected_tags)}

    def on_post_tags(self, req, resp, vm):
        """``{"add": [...], "remove": [...], "protected": bool}``: ``protected`` adds them as protected tags, and is
        needed to remove one."""
        data = body(req, {"add", "remove", "protected"})
        updated = self.deps.ops.tag_vm(vm, field(data, "add", list, []), field(data, "remove", list, []),
                                       field(data, "protected", bool, False))
        meta = updated.meta
        resp.media = {"message": f"VM {vm} tags updated", "vm": vm, "tags": list(meta.tags),
                      "protected_tags": list(meta.protected_tags)}

    def on_get_meta(self, req, resp, vm):
        """``/vm/{vm}/meta``: just the metadata."""
        ops = self.deps.ops

        def seen() -> VM:
            if vm not in ops.view.snapshot().vms:
                raise NotFoundError(f"VM {vm!r} not found")
            return ops.view.snapshot().vms[vm]

        resp.media = self._current(vm).to_dict()["meta"]

    def _current(self, vm: str) -> VM:
        """The VM read from ZooKeeper, or as the view last saw it while ZooKeeper is away."""
        ops = self.deps.ops

        def seen() -> VM:
            if vm not in ops.view.snapshot().vms:
                raise NotFoundError(f"VM {vm!r} not found")
            return ops.view.snapshot().vms[vm]

        return fresh(self.deps.guards, lambda: ops.store.get_vm(vm), seen)

    def on_post_meta(self, req, resp, vm):
        """Alias of ``POST /vm/{vm}``."""
        self.on_post_one(req, resp, vm)

    def on_post_state(self, req, resp, vm):
        """``{"state": start|shutdown|stop|restart|disable, "wait": bool}``."""
        data = body(req, {"state", "wait"})
        state = field(data, "state", str, choices=tuple(str(s) for s in USER_VM_STATES))
        wait = field(data, "wait", bool, False)
        ops = self.deps.ops
        ops.set_state(vm, state)
        self._answer(resp, vm, wait, ops.state_reached(vm, state), f"{state} requested",
                     succeeded=lambda v: v.state != "fail", field="state")

    def on_post_node(self, req, resp, vm):
        """``{"action": migrate|unmigrate|move, "target", "force_live", "wait"}``."""
        data = body(req, {"action", "target", "force_live", "wait"})
        action = field(data, "action", str, choices=ACTIONS)
        target = field(data, "target", str, None)
        force_live = field(data, "force_live", bool, False)
        wait = field(data, "wait", bool, False)
        ops = self.deps.ops
        if action == "unmigrate":
            if target is not None:
                raise BadRequest("unmigrate takes no target: the VM returns to its last node", "target")
            requested = ops.unmigrate(vm, force_live=force_live)
        else:
            requested = getattr(ops, action)(vm, target, force_live=force_live)
        where = requested.migration.target if requested.migration else requested.node
        # Done when the migration is over and the VM is where its state says (running or not).
        reached = ops.state_reached(vm, requested.state if requested.migration is None else "start")
        self._answer(resp, vm, wait, reached, f"{action} to {where} requested",
                     succeeded=lambda v: v.node == where and v.state != "fail", field="action")

    def on_get_placement(self, req, resp, vm):
        ops = self.deps.ops

        def from_view():
            current = ops.view.snapshot().vms.get(vm)
            if current is None:
                raise NotFoundError(f"VM {vm!r} not found")
            return place(current, ops.view.placement_snapshot(), ops.plugins.selectors)

        caught_up(self.deps)  # every node and VM as the change just made through another worker left them
        resp.media = fresh(self.deps.guards, lambda: ops.placement(vm), from_view).to_dict()

    def _answer(self, resp, vm: str, wait: bool, reached, requested: str, succeeded, field: str) -> None:
        """200 once the change is observed; 202 while it is not (yet); 409 when it ended and failed."""
        ops = self.deps.ops
        observed = wait and self.deps.wait(lambda timeout: ops.view.wait_for(reached, timeout))
        busy = wait and observed is None
        snap = ops.view.snapshot()
        current = snap.vms.get(vm)
        if observed and current is not None and not succeeded(current):
            resp.status = falcon.HTTP_409
            resp.media = {"message": f"VM {vm}: {current.reason or 'failed'}", "field": field}
            return
        if observed:
            message = f"VM {vm}: done" if current is None or not current.reason else f"VM {vm}: {current.reason}"
        elif busy:
            message = f"VM {vm}: {requested}; not waiting for it (too many requests wait already)"
        elif wait:
            message = f"VM {vm}: not finished within {self.deps.wait_timeout:g}s; still in progress"
        else:
            message = f"VM {vm}: {requested}"
        resp.status = falcon.HTTP_200 if observed else falcon.HTTP_202
        resp.media = {"message": message, "vm": vm_out(current, snap) if current else None}

"""``/node``: nodes, and their domain state (flush / ready)."""

from __future__ import annotations

import falcon

from pvccore.errors import NotFoundError, Unavailable
from pvccore.zk.store import decode_fence_config

from .errors import BadRequest
from .guards import caught_up, fresh, not_kept
from .inputs import body, field, log_answer


class Nodes:
    def __init__(self, deps):
        self.deps = deps

    def on_get(self, req, resp):
        caught_up(self.deps)
        resp.media = [n.to_dict() for n in self.deps.ops.view.snapshot().nodes.values()]

    def on_get_one(self, req, resp, node):
        ops = self.deps.ops
        snap = ops.view.snapshot()

        def seen():
            if node not in snap.nodes:
                raise NotFoundError(f"node {node!r} not found")
            return snap.nodes[node]

        data = fresh(self.deps.guards, lambda: ops.store.get_node(node), seen).to_dict()
        data["vms"] = sorted(v.name for v in snap.vms.values() if v.node == node)
        resp.media = data

    def on_get_fence(self, req, resp, node):
        """The node's fence configuration, secrets masked: read from ZooKeeper, and kept by the view
        (with a watch) so that it can still be shown while ZooKeeper is away."""
        ops = self.deps.ops
        path = ops.store.paths.node_fence(node)

        def read() -> list:
            ops.store.get_node(node)  # NotFoundError for an unknown node
            return decode_fence_config(ops.view.document(path, self.deps.op_timeout, reread=True, keep_absent=True))

        def seen() -> list:
            if node not in ops.view.snapshot().nodes:
                raise NotFoundError(f"node {node!r} not found")
            if not ops.view.holds(path):
                raise Unavailable(f"ZooKeeper is unreachable, and node {node}'s fence configuration was not read "
                                  "before it went away: try again once it is back")
            return decode_fence_config(ops.view.cached(path))

        resp.media = {"node": node, "entries": ops.mask_fence_config(fresh(self.deps.guards, read, seen))}

    def on_post_fence(self, req, resp, node):
        """Replace it: ``{"entries": [{"fencer": name, "params": {...}}, ...]}``, tried in order."""
        entries = field(body(req, {"entries"}), "entries", list)
        ops = self.deps.ops
        try:
            resp.media = {"node": node, "entries": ops.set_fence_config(node, entries)}
        finally:  # what the view kept is no longer known to be current (its watch follows, but not at once)
            ops.view.forget(ops.store.paths.node_fence(node))

    def on_post_confirm(self, req, resp, node):
        """``{"node": NAME}`` (the name again, as a check): an operator's word that dead ``node`` is off."""
        if field(body(req, {"node"}), "node", str) != node:
            raise BadRequest(f"node must repeat the node's name ({node!r}) to confirm it is off", "node")
        self.deps.ops.confirm_off(node)
        resp.status = falcon.HTTP_202
        resp.media = {"message": f"node {node} confirmed off: the primary takes it as fenced and recovers its VMs",
                      "node": node}

    def on_get_log(self, req, resp, node):
        """The last lines of the node daemon's own log (``?lines=N``, default 100), as it last published them."""
        ops = self.deps.ops

        def read() -> dict:
            ops.store.get_node(node)  # NotFoundError for an unknown node
            return log_answer(req, ops.store, ops.store.paths.node_log(node), "node", node)

        resp.media = fresh(self.deps.guards, read, not_kept("logs"))

    def on_get_whatif(self, req, resp, node):
        """Where the node's VMs would go if it failed now (the plan its recovery would carry out), and which
        would stay stopped for want of a node, and why."""
        caught_up(self.deps)  # a VM just defined through another worker is in the plan
        resp.media = self.deps.ops.what_if_fail(node).to_dict()

    def on_post_coordinator(self, req, resp, node):
        """``{"state": "primary" | "secondary", "wait": bool}``: a planned primary handover."""
        ops = self.deps.ops
        data = body(req, {"state", "wait"})
        state = field(data, "state", str, choices=("primary", "secondary"))
        wait = field(data, "wait", bool, False)
        h = ops.request_primary(node) if state == "primary" else ops.request_secondary(node)
        final = self.deps.wait(lambda timeout: ops.wait_handover(h, timeout)) if wait else None
        observed = final is not None
        done = final or h
        if observed and done.phase == "failed":
            resp.status = falcon.HTTP_409
            resp.media = {"message": f"handover from {h.source} to {h.target} failed: {done.reason}", "field": "state"}
            return
        resp.status = falcon.HTTP_200 if observed else falcon.HTTP_202
        resp.media = {"message": f"{h.target} is primary" if observed else
                      f"handover from {h.source} to {h.target} requested" if not wait else
                      f"handover from {h.source} to {h.target} not finished within {self.deps.wait_timeout:g}s",
                      "handover": done.to_dict()}

    def on_post_domain(self, req, resp, node):
        """``{"state": "flush" | "ready", "wait": bool}``."""
        ops = self.deps.ops
        data = body(req, {"state", "wait"})
        state = field(data, "state", str, choices=("flush", "ready"))
        wait = field(data, "wait", bool, False)
        (ops.flush if state == "flush" else ops.ready)(node)
        done = "flushed" if state == "flush" else "ready"
        observed = wait and bool(self.deps.wait(
            lambda timeout: ops.wait_node(node, lambda n: n is None or n.domain_state == done, timeout)))
        current = ops.view.node(node)
        resp.status = falcon.HTTP_200 if observed else falcon.HTTP_202
        resp.media = {
            "message": f"node {node} is {done}" if observed else
            (f"node {node}: {state} requested" if not wait else
             f"node {node}: {state} not finished within {self.deps.wait_timeout:g}s; still in progress"),
            "node": current.to_dict() if current else None,
        }

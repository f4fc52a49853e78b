"""Health, the OpenAPI document, Prometheus metrics, selectors and plugins."""

from __future__ import annotations

from collections import Counter

import falcon

from pvccore.domain.states import DaemonState, DomainState, FaultKind, VMState
from pvccore.errors import PVCError

from . import openapi
from .guards import fresh


class Info:
    def __init__(self, deps, app: falcon.App):
        self.deps = deps
        self.app = app
        self._openapi = None

    def on_get(self, req, resp):
        """Health and version; answers without an API key. 503 while the ZooKeeper session is down;
        ``stale`` also while ZooKeeper is connected but did not answer in time (the API then answers
        from the watched view for a moment)."""
        connected = self.deps.ops.store.client.connected
        guards = self.deps.guards
        resp.status = falcon.HTTP_200 if connected else falcon.HTTP_503
        resp.media = {"name": "pvc", "version": self.deps.version,
                      "zookeeper": "connected" if connected else "disconnected",
                      "stale": not connected or (guards is not None and guards.stale_for() is not None)}

    def on_get_openapi(self, req, resp):
        if self._openapi is None:
            self._openapi = openapi.document(self.deps.version, tuple(sorted(self.deps.ops.plugins.fencers)))
        resp.media = self._openapi

    def on_get_selectors(self, req, resp):
        plugins = self.deps.ops.plugins
        resp.media = [{"name": s.name, "description": s.description, "plugin": plugins.owners[("selector", s.name)]}
                      for s in sorted(plugins.selectors.values(), key=lambda s: s.name)]

    def on_get_plugins(self, req, resp):
        resp.media = self.deps.ops.plugins.describe()

    def on_get_metrics(self, req, resp):
        resp.content_type = "text/plain; version=0.0.4"
        ops = self.deps.ops
        resp.text = metrics_text(ops, fresh(self.deps.guards, ops.faults, lambda: None))


def metrics_text(ops, faults: list | None = None) -> str:
    """The metrics; ``faults`` (read from ZooKeeper by the caller, None while it is away) as ``pvc_faults``."""
    snap = ops.view.snapshot()
    stats = ops.view.shown("stats")  # watched: metrics never wait on ZooKeeper
    lines: list[str] = []

    def family(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

    daemon = Counter(n.daemon_state for n in snap.nodes.values())
    domain = Counter(n.domain_state for n in snap.nodes.values())
    states = Counter(v.state for v in snap.vms.values())
    family("pvc_nodes", "gauge", "Nodes by daemon state.", [(f'{{state="{s}"}}', daemon[s]) for s in DaemonState])
    family("pvc_nodes_domain", "gauge", "Nodes by domain state.",
           [(f'{{state="{s}"}}', domain[s]) for s in DomainState])
    family("pvc_vms", "gauge", "VMs by state.", [(f'{{state="{s}"}}', states[s]) for s in VMState])
    family("pvc_vms_migrating", "gauge", "VMs with a migration in progress.",
           [("", sum(1 for v in snap.vms.values() if v.migration is not None))])
    for counter, help_ in (("migrations", "Migrations finished."), ("migrations_failed", "Migrations that failed."),
                           ("fences", "Nodes fenced (confirmed off)."), ("fences_failed", "Fence attempts that failed.")):
        family(f"pvc_{counter}_total", "counter", help_, [("", stats.get(counter, 0))])
    try:
        at_risk = ops.n_plus_one().at_risk
    except PVCError:
        at_risk = None
    if at_risk is not None:  # (not checked yet, or the check failed: no sample rather than a wrong one)
        family("pvc_n_plus_one_ok", "gauge", "1 when the loss of any one node leaves every VM a node to run on.",
               [("", 0 if at_risk else 1)])
        family("pvc_n_plus_one_stranded_vms", "gauge", "VMs that would stay stopped if this node failed now.",
               [(f'{{node="{n.name}"}}', len(at_risk[n.name].parked) if n.name in at_risk else 0)
                for n in snap.nodes.values() if n.daemon_state == DaemonState.RUN])
    if faults is not None:  # (ZooKeeper away: no sample rather than a wrong one)
        held = Counter((f.kind, "cleared" if not f.active else "acknowledged" if f.acknowledged else "active")
                       for f in faults)
        family("pvc_faults", "gauge", "Fault records by kind and state (active, acknowledged, cleared).",
               [(f'{{kind="{k}",state="{s}"}}', held[(k, s)]) for k in FaultKind
                for s in ("active", "acknowledged", "cleared")])
    family("pvc_node_memory_free_mib", "gauge", "Free memory per node.",
           [(f'{{node="{n.name}"}}', n.memory_free_mib) for n in snap.nodes.values()])
    family("pvc_node_load", "gauge", "1-minute load per node.",
           [(f'{{node="{n.name}"}}', n.load_1m) for n in snap.nodes.values()])
    return "\n".join(lines) + "\n"

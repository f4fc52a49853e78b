"""Every route of the API, listed once: ``api/app.py`` serves these, a test checks the OpenAPI document
lists exactly these, and the CLI's client builds its URLs from them.

Pure Python (no falcon): ``pvccli`` imports this module.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

PREFIX = "/api/v1"


@dataclass(frozen=True)
class Route:
    name: str  # what the client calls it
    path: str  # under PREFIX, with {param} templates
    resource: str  # which resource object of api/app.py serves it
    suffix: str | None  # falcon's responder suffix: on_<method>_<suffix>
    methods: tuple[str, ...]

    @property
    def template(self) -> str:
        """The full path template, as falcon and the OpenAPI document write it."""
        return PREFIX + self.path

    def params(self) -> tuple[str, ...]:
        return tuple(re.findall(r"\{(\w+)\}", self.path))

    def url(self, **params: str) -> str:
        """The path under PREFIX with each parameter quoted (a name can hold no '/' of its own)."""
        if set(params) != set(self.params()):
            raise TypeError(f"route {self.name} takes {', '.join(self.params()) or 'no parameters'}")
        return re.sub(r"\{(\w+)\}", lambda m: urllib.parse.quote(params[m.group(1)], safe=""), self.path)


ROUTES = (
    Route("health", "", "info", None, ("GET",)),
    Route("openapi", "/openapi.json", "info", "openapi", ("GET",)),
    Route("metrics", "/metrics", "info", "metrics", ("GET",)),
    Route("selectors", "/selectors", "info", "selectors", ("GET",)),
    Route("plugins", "/plugins", "info", "plugins", ("GET",)),
    Route("events", "/events", "events", None, ("GET",)),
    Route("cluster_status", "/cluster/status", "cluster", None, ("GET", "POST")),
    Route("faults", "/cluster/faults", "cluster", "faults", ("GET",)),
    Route("fault", "/cluster/faults/{fault}", "cluster", "fault", ("POST", "DELETE")),
    Route("nodes", "/node", "node", None, ("GET",)),
    Route("node", "/node/{node}", "node", "one", ("GET",)),
    Route("node_domain_state", "/node/{node}/domain-state", "node", "domain", ("POST",)),
    Route("node_coordinator_state", "/node/{node}/coordinator-state", "node", "coordinator", ("POST",)),
    Route("node_fence_config", "/node/{node}/fence-config", "node", "fence", ("GET", "POST")),
    Route("node_confirm_off", "/node/{node}/confirm-off", "node", "confirm", ("POST",)),
    Route("node_what_if_fail", "/node/{node}/what-if-fail", "node", "whatif", ("GET",)),
    Route("node_log", "/node/{node}/log", "node", "log", ("GET",)),
    Route("vms", "/vm", "vm", None, ("GET", "POST")),
    Route("vm", "/vm/{vm}", "vm", "one", ("GET", "POST", "PUT", "DELETE")),
    Route("vm_meta", "/vm/{vm}/meta", "vm", "meta", ("GET", "POST")),
    Route("vm_tags", "/vm/{vm}/tags", "vm", "tags", ("GET", "POST")),
    Route("vm_log", "/vm/{vm}/log", "vm", "log", ("GET",)),
    Route("vm_rename", "/vm/{vm}/rename", "vm", "rename", ("POST",)),
    Route("vm_state", "/vm/{vm}/state", "vm", "state", ("POST",)),
    Route("vm_node", "/vm/{vm}/node", "vm", "node", ("POST",)),
    Route("vm_placement", "/vm/{vm}/placement", "vm", "placement", ("GET",)),
)

BY_NAME = {r.name: r for r in ROUTES}


def url(name: str, **params: str) -> str:
    """The path (under PREFIX) of route ``name``: ``url("vm_state", vm="web1")`` is ``/vm/web1/state``."""
    return BY_NAME[name].url(**params)

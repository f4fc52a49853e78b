"""The OpenAPI 3 document of the API. A test checks it lists exactly the routes of :mod:`pvcapi.routes`.

The bodies of the cluster settings and of VM metadata are built from the tables of
:mod:`pvccore.domain.fields`, as their checks are.
"""

from __future__ import annotations

from typing import Mapping

from pvccore.domain.fields import CLUSTER_SETTINGS, VM_META_FIELDS, Field, Kind
from pvccore.domain.models import FAULT_ID_RE
from pvccore.domain.states import USER_VM_STATES, DaemonState, DomainState, FaultKind, MigrationKind, VMState

from .guards import MAX_BODY, MAX_DEPTH, MAX_XML, STALE_HEADER
from .vms import MAX_LIMIT

NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
ERRORS = {400: "Bad input", 401: "No or unknown API key", 403: "A read-only API key, on a route that changes something",
          404: "Not found", 409: "Conflict with the current state",
          413: f"Request body over {MAX_BODY} bytes (1 MiB), refused before it is read",
          415: "Request body not application/json",
          503: "ZooKeeper unreachable, or silent for 0.8 s: nothing was changed"}
#: on every answer given while ZooKeeper is unreachable: reads then come from the last known state
STALE = {STALE_HEADER: {"description": "Seconds since ZooKeeper became unreachable; the answer is the last known "
                                       "state. Absent while ZooKeeper is reachable.",
                        "schema": {"type": "number", "minimum": 0}}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _op(summary: str, ok: str | None = None, body: dict | None = None, params: list | None = None,
        codes: tuple[int, ...] = (400, 401), secure: bool = True, accepted: bool = False) -> dict:
    op: dict = {"summary": summary, "responses": {}}
    if ok:
        op["responses"]["200"] = {"description": "OK", "headers": STALE, **_json(_ref(ok))}
    if accepted:
        op["responses"]["202"] = {"description": "Accepted, not (yet) observed", "headers": STALE,
                                  **_json(_ref(ok or "Message"))}
    op["responses"].update(_errors(codes, body is not None))
    if body:
        op["requestBody"] = {"required": True, **_json(body)}
    if params:
        op["parameters"] = params
    if not secure:
        op["security"] = []
    return op


def _errors(codes: tuple[int, ...], body: bool = False) -> dict:
    """The error answers of an operation: ``codes``, plus for one with a body (a write) 413, 415 and 503
    (refused while ZooKeeper is away; reads answer from the last known state then)."""
    every = (*codes, *((413, 415, 503) if body else ()))
    return {str(code): {"description": ERRORS[code], "headers": STALE, **_json(_ref("Error"))}
            for code in sorted(set(every))}


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": NAME}


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _obj(props: dict, required: tuple[str, ...] = (), at_least_one: bool = False) -> dict:
    out = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    if at_least_one:
        out["minProperties"] = 1
    return out


def field_schema(f: Field) -> dict:
    """The JSON schema of one :class:`~pvccore.domain.fields.Field`: its type, bounds or choices, and meaning.

    No ``default``: in a change of settings or metadata, a field left out keeps its value."""
    schema: dict = {
        Kind.BOOL: {"type": "boolean"}, Kind.STR: {"type": "string"}, Kind.INT: {"type": "integer"},
        Kind.FLOAT: {"type": "number"}, Kind.ENUM: {"type": "string", "enum": list(f.choice_values)},
        Kind.NAMES: {"type": "array", "items": NAME}, Kind.TAGS: {"type": "array", "items": NAME},
        Kind.STRINGS: {"type": "array", "items": {"type": "string", "minLength": 1}}, Kind.LIST: {"type": "array"},
    }[f.kind]
    if f.low is not None:
        schema["minimum"] = f.low
    if f.high is not None:
        schema["maximum"] = f.high
    if f.text:
        schema["description"] = f.text
    return schema


def properties(table: Mapping[str, Field]) -> dict:
    return {name: field_schema(f) for name, f in table.items()}


XML = {"type": "string", "minLength": 1, "maxLength": MAX_XML, "description": "libvirt domain XML"}


def document(version: str, fencers: tuple[str, ...] = (), settings: Mapping[str, Field] = CLUSTER_SETTINGS,
             meta: Mapping[str, Field] = VM_META_FIELDS) -> dict:
    """The document; ``fencers``: the fencer names this API knows (a fence configuration may name only these).

    ``settings`` and ``meta``: the tables the bodies are built from (a test passes others).
    """
    meta_props = properties(meta)
    vm_p, node_p = [_path_param("vm")], [_path_param("node")]
    fault_p = [{"name": "fault", "in": "path", "required": True, "description": "<kind>.<subject>, as listed",
                "schema": {"type": "string", "pattern": FAULT_ID_RE.pattern, "maxLength": 233}}]
    schemas = {
        "Error": _obj({"message": {"type": "string"}, "field": {"type": ["string", "null"]}}, ("message",)),
        "Message": {"type": "object", "properties": {"message": {"type": "string"}}},
        "Health": {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                                    "zookeeper": {"type": "string",
                                                                  "enum": ["connected", "disconnected"]},
                                                    "stale": {"type": "boolean"}}},
        "Meta": {"type": "object", "properties": meta_props},
        "VM": {"type": "object", "properties": {
            "name": {"type": "string"}, "uuid": {"type": "string"}, "memory_mib": {"type": "integer"},
            "vcpus": {"type": "integer"}, "state": {"type": "string", "enum": [s.value for s in VMState]},
            "reason": {"type": "string"}, "node": {"type": "string"}, "last_node": {"type": "string"},
            "running": {"type": "boolean"}, "migration": {"type": ["object", "null"]}, "meta": _ref("Meta"),
            "xml": {"type": "string"},
            "devices": {"type": ["object", "null"], "description": "GET /vm/{vm} only: the disks and networks "
                        "its XML declares", "properties": {"disks": {"type": "array"}, "networks": {"type": "array"}}}}},
        "VMList": {"type": "array", "items": _ref("VM")},
        "Tags": {"type": "object", "properties": {
            "vm": {"type": "string"}, "tags": {"type": "array", "items": NAME},
            "protected_tags": {"type": "array", "items": NAME}}},
        "VMResult": {"type": "object", "properties": {"message": {"type": "string"},
                                                      "vm": {"oneOf": [_ref("VM"), {"type": "null"}]}}},
        "Node": {"type": "object", "properties": {
            "name": {"type": "string"}, "daemon_state": {"type": "string", "enum": [s.value for s in DaemonState]},
            "coordinator_state": {"type": "string"}, "domain_state": {"type": "string", "enum": [s.value for s in DomainState]},
            "memory_total_mib": {"type": "integer"}, "memory_free_mib": {"type": "integer"},
            "memory_used_mib": {"type": "integer"}, "memory_provisioned_mib": {"type": "integer"},
            "cpu_count": {"type": "integer"}, "load_1m": {"type": "number"}, "vcpus_allocated": {"type": "integer"},
            "vm_count": {"type": "integer"}, "running_vms": {"type": "array", "items": {"type": "string"}},
            "vms": {"type": "array", "items": {"type": "string"}}}},
        "NodeList": {"type": "array", "items": _ref("Node")},
        "NodeResult": {"type": "object", "properties": {"message": {"type": "string"},
                                                        "node": {"oneOf": [_ref("Node"), {"type": "null"}]}}},
        "HandoverResult": {"type": "object", "properties": {"message": {"type": "string"},
                                                            "handover": {"type": "object"}}},
        "FenceConfig": {"type": "object", "properties": {"node": {"type": "string"},
                                                         "entries": {"type": "array", "items": {"type": "object"}}}},
        "ClusterStatus": {"type": "object", "properties": {
            "maintenance": {"type": "boolean", "description": "Maintenance mode: nobody is fenced"},
            "healthy": {"type": "boolean"}, "problems": {"type": "array", "items": {"type": "string"}},
            "warnings": {"type": "array", "items": {"type": "string"},
                         "description": "Not failures yet: e.g. a node whose loss would leave VMs stopped (N+1)"},
            "n_plus_one": {"type": "object", "description": "ok, and per node the VMs its loss would leave stopped"},
            "faults": {"type": ["object", "null"], "description": "Counts of active and unacknowledged faults"},
            "stale": {"type": "boolean", "description": "ZooKeeper is unreachable: this is the last known state"},
            "primary": {"type": ["string", "null"]}, "handover": {"type": ["object", "null"]},
            "fencing": {"type": "object"},
            "nodes": {"type": "object"}, "vms": {"type": "object"},
            "config": {"type": "object"}}},
        "Placement": {"type": "object", "properties": {
            "vm": {"type": "string"}, "selector": {"type": "string"}, "target": {"type": ["string", "null"]},
            "nodes": {"type": "array", "items": {"type": "object"}}}},
        "RecoveryPlan": {"type": "object", "properties": {
            "node": {"type": "string"},
            "moves": {"type": "array", "items": {"type": "object", "properties": {
                "vm": {"type": "string"}, "target": {"type": "string"}, "selector": {"type": "string"},
                "score": {"type": "number"}}}},
            "parked": {"type": "array", "items": {"type": "object", "properties": {
                "vm": {"type": "string"}, "selector": {"type": "string"}, "reason": {"type": "string"}}}},
            "stays": {"type": "array", "items": {"type": "string"}}}},
        "Fault": {"type": "object", "properties": {
            "id": {"type": "string"}, "kind": {"type": "string", "enum": [str(k) for k in FaultKind]},
            "subject": {"type": "string"}, "message": {"type": "string"}, "first_seen": {"type": "number"},
            "last_seen": {"type": "number"}, "count": {"type": "integer"}, "active": {"type": "boolean"},
            "acknowledged": {"type": "boolean"}}},
        "Faults": {"type": "array", "items": _ref("Fault")},
        "Log": {"type": "object", "properties": {
            "node": {"type": "string"}, "vm": {"type": "string"},
            "lines": {"type": "array", "items": {"type": "string"}},
            "updated": {"type": ["number", "null"], "description": "When its node last published it (epoch s)"}}},
        "FaultResult": {"type": "object", "properties": {"message": {"type": "string"}, "fault": _ref("Fault")}},
        "Selectors": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "description": {"type": "string"}, "plugin": {"type": "string"}}}},
        "Plugins": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "kinds": {"type": "array", "items": {"type": "string"}},
            "distribution": {"type": ["string", "null"]}, "version": {"type": ["string", "null"]}}}},
    }
    wait = {"type": "boolean", "description": "Answer once the change is observed (or after the wait timeout)"}
    paths = {
        "/api/v1": {"get": _op("Health and version (no API key needed)", "Health", codes=(503,), secure=False)},
        "/api/v1/openapi.json": {"get": _op("This document", codes=(401,))},
        "/api/v1/metrics": {"get": {**_op("Prometheus metrics", codes=(401,)),
                                    "responses": {"200": {"description": "Prometheus text format",
                                                          "content": {"text/plain": {"schema": {"type": "string"}}}},
                                                  "401": {"description": "No or unknown API key",
                                                          **_json(_ref("Error"))}}}},
        "/api/v1/events": {"get": {**_op("The cluster as it changes: server-sent events (the dashboard's feed)",
                                         codes=(401,)),
                                   "description": "A `snapshot` event (nodes, VMs without their XML, cluster "
                                                  "status), then a `delta` event for each change (the nodes and "
                                                  "VMs that changed, those gone, and the status when it "
                                                  "changed). The stream ends after a while; reconnect.",
                                   "responses": {"200": {"description": "text/event-stream",
                                                         "content": {"text/event-stream": {
                                                             "schema": {"type": "string"}}}},
                                                 **_errors((401, 503))}}},
        "/api/v1/selectors": {"get": _op("Registered selectors", "Selectors", codes=(401,))},
        "/api/v1/plugins": {"get": _op("Loaded plugins", "Plugins", codes=(401,))},
        "/api/v1/cluster/status": {
            "get": _op("Cluster status", "ClusterStatus", codes=(401,)),
            "post": _op("Set cluster-wide settings", "Message", body=_obj(properties(settings), at_least_one=True)),
        },
        "/api/v1/cluster/faults": {"get": _op("What needs an operator, active first", "Faults", codes=(401, 503))},
        "/api/v1/cluster/faults/{fault}": {
            "post": _op("Acknowledge a fault (or take that back)", "FaultResult", params=fault_p,
                        codes=(400, 401, 404, 503), body=_obj({"acknowledged": {"type": "boolean"}}, ("acknowledged",))),
            "delete": _op("Forget a fault and its history", "Message", params=fault_p, codes=(400, 401, 404, 503)),
        },
        "/api/v1/node": {"get": _op("All nodes", "NodeList", codes=(401,))},
        "/api/v1/node/{node}": {"get": _op("One node, with its VMs", "Node", params=node_p, codes=(400, 401, 404))},
        "/api/v1/node/{node}/domain-state": {"post": _op(
            "Flush or ready a node", "NodeResult", params=node_p, codes=(400, 401, 404), accepted=True,
            body=_obj({"state": {"type": "string", "enum": ["flush", "ready"]}, "wait": wait}, ("state",)))},
        "/api/v1/node/{node}/coordinator-state": {"post": _op(
            "Hand the primary role to (primary) or away from (secondary) a coordinator", "HandoverResult",
            params=node_p, codes=(400, 401, 404, 409), accepted=True,
            body=_obj({"state": {"type": "string", "enum": ["primary", "secondary"]}, "wait": wait}, ("state",)))},
        "/api/v1/node/{node}/fence-config": {
            "get": _op("The node's fence configuration (secrets masked)", "FenceConfig", params=node_p,
                       codes=(400, 401, 404, 503)),
            "post": _op("Replace the node's ordered fence configuration", "FenceConfig", params=node_p,
                        codes=(400, 401, 404), body=_obj({"entries": {"type": "array", "maxItems": 8, "items": _obj(
                            {"fencer": {"type": "string", **({"enum": list(fencers)} if fencers else {})},
                             "params": {"type": "object", "maxProperties": 64, "additionalProperties": {
                                 "type": ["string", "number", "boolean"], "maxLength": 1024}}}, ("fencer",))}},
                            ("entries",))),
        },
        "/api/v1/node/{node}/confirm-off": {"post": {**_op(
            "Confirm a dead node is powered off (when no fencer can): its VMs are recovered", params=node_p,
            codes=(400, 401, 404, 409), body=_obj({"node": NAME}, ("node",))),
            "responses": {"202": {"description": "Recorded; the primary acts on it", **_json(_ref("Message"))},
                          **_errors((400, 401, 404, 409), body=True)}}},
        "/api/v1/node/{node}/log": {"get": _op("The last lines of the node daemon's log", "Log",
                                               params=node_p + [_query("lines", {"type": "string", "pattern": "^[0-9]{1,5}$"}, "How many of the last lines (1-10000, default 100)")], codes=(400, 401, 404, 503))},
        "/api/v1/node/{node}/what-if-fail": {"get": _op(
            "Where the node's VMs would go if it failed now (its recovery's plan), and which would stay stopped",
            "RecoveryPlan", params=node_p, codes=(400, 401, 404))},
        "/api/v1/vm": {
            "get": _op("VMs, filtered (every filter given must pass; a repeated one: any of its values)", "VMList",
                       codes=(400, 401), params=[
                _query("node", {"type": "string"}, "Only VMs on this node"),
                _query("state", {"type": "string"}, "Only VMs in this state"),
                _query("tag", {"type": "string"}, "Only VMs with this tag (user or protected)"),
                _query("limit", {"type": "string", "maxLength": MAX_LIMIT},
                       "A glob the name must match (web*, with * ? [...]), or else a part of the name "
                       "(case-sensitive) or the first 8 or more characters of the UUID; never a regular expression"),
                _query("negate", {"type": "string", "enum": ["true", "false"]},
                       "The VMs that do not pass the filters")]),
            "post": {**_op("Define a VM from libvirt XML with metadata", codes=(400, 401, 409), body=_obj({
                "xml": XML, **meta_props, "target": NAME,
                "start": {"type": "boolean", "description": "Start it once defined (default true)"}}, ("xml",))),
                "responses": {"201": {"description": "Defined", **_json(_ref("VMResult"))},
                              **_errors((400, 401, 409), body=True)}},
        },
        "/api/v1/vm/{vm}": {
            "get": _op("One VM: state, metadata, XML", "VM", params=vm_p, codes=(400, 401, 404)),
            "post": _op("Set metadata", "VMResult", params=vm_p, codes=(400, 401, 404, 409),
                        body=_obj(meta_props, at_least_one=True)),
            "put": _op("Replace the XML", "VMResult", params=vm_p, codes=(400, 401, 404, 409),
                       body=_obj({"xml": XML}, ("xml",))),
            "delete": _op("Undefine (refused while running unless force)", "Message",
                          codes=(400, 401, 404, 409, 503),
                          params=vm_p + [_query("force", {"type": "string", "enum": ["true", "false"]},
                                                "Stop a running VM first")]),
        },
        "/api/v1/vm/{vm}/meta": {
            "get": _op("Metadata only", "Meta", params=vm_p, codes=(400, 401, 404)),
            "post": _op("Set metadata (alias of POST /vm/{vm})", "VMResult", params=vm_p,
                        codes=(400, 401, 404, 409), body=_obj(meta_props, at_least_one=True)),
        },
        "/api/v1/vm/{vm}/rename": {"post": _op("Rename a stopped VM", "VMResult", params=vm_p,
                                               codes=(400, 401, 404, 409), body=_obj({"name": NAME}, ("name",)))},
        "/api/v1/vm/{vm}/log": {"get": _op("The last lines of the VM's serial console (a file console only)", "Log",
                                           params=vm_p + [_query("lines", {"type": "string", "pattern": "^[0-9]{1,5}$"}, "How many of the last lines (1-10000, default 100)")], codes=(400, 401, 404, 503))},
        "/api/v1/vm/{vm}/tags": {
            "get": _op("The VM's tags", "Tags", params=vm_p, codes=(400, 401, 404)),
            "post": _op("Add or remove tags (protected: add them protected; needed to remove a protected one)", "Tags",
                        params=vm_p, codes=(400, 401, 404, 409),
                        body=_obj({"add": {"type": "array", "items": NAME}, "remove": {"type": "array", "items": NAME},
                                   "protected": {"type": "boolean"}}, at_least_one=True)),
        },
        "/api/v1/vm/{vm}/state": {"post": _op(
            "Start, shut down, stop, restart or disable", "VMResult", params=vm_p, codes=(400, 401, 404, 409),
            accepted=True, body=_obj({"state": {"type": "string", "enum": [str(s) for s in USER_VM_STATES]},
                                      "wait": wait}, ("state",)))},
        "/api/v1/vm/{vm}/node": {"post": _op(
            "Migrate, unmigrate or move", "VMResult", params=vm_p, codes=(400, 401, 404, 409), accepted=True,
            body=_obj({"action": {"type": "string", "enum": [str(k) for k in MigrationKind]}, "target": NAME,
                       "force_live": {"type": "boolean"}, "wait": wait}, ("action",)))},
        "/api/v1/vm/{vm}/placement": {"get": _op("Where placement would put the VM, node by node", "Placement",
                                                 params=vm_p, codes=(400, 401, 404))},
    }
    for operations in paths.values():  # a read-only key may not change anything
        for method, op in operations.items():
            if method != "get":
                op["responses"]["403"] = {"description": ERRORS[403], "headers": STALE, **_json(_ref("Error"))}
    return {
        "openapi": "3.1.0",
        "info": {"title": "pvc API", "version": version,
                 "description": "Cluster manager for KVM virtual machines. Errors: {message, field}. Request "
                               f"bodies: JSON objects of at most {MAX_BODY} bytes with a Content-Length (not "
                               f"chunked), nested at most {MAX_DEPTH} "
                               "deep, finite numbers (integers of at most 19 digits), valid Unicode. While "
                               f"ZooKeeper is unreachable every answer carries {STALE_HEADER}, reads come from "
                               "the last known state and writes answer 503."},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}}},
        "security": [{"apiKey": []}],
    }

"""The pvc API over HTTP. No click here: usable from any Python program."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from pvcapi.routes import PREFIX, url as route


class ApiError(Exception):
    """The API refused (``status`` 4xx/5xx with its message), or could not be reached (``status`` 0)."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


class Client:
    def __init__(self, url: str, key: str | None = None, timeout: float = 300.0, ca: str | None = None):
        """``ca``: a PEM file of the CA (or self-signed certificate) to trust for an HTTPS API."""
        self._tls = ssl.create_default_context(cafile=ca) if ca else None
        self.url = url.rstrip("/")
        if not self.url.endswith(PREFIX):
            self.url += PREFIX
        self.key = key
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict | None = None, params: dict | None = None) -> tuple[int, Any]:
        """Send one request; return ``(status, decoded body)``. Raises ApiError for 4xx/5xx and network errors."""
        problem = url_problem(self.url)
        if problem:
            raise ApiError(0, f"invalid API URL {self.url.removesuffix(PREFIX)!r}: {problem}")
        if self.key and not _sendable(self.key):  # and never repeat the key in the message
            raise ApiError(0, "invalid API key: it contains spaces or control characters")
        url = self.url + path
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)  # a list: the parameter repeated
        try:
            data = json.dumps(body, allow_nan=False).encode() if body is not None else None
        except ValueError:
            raise ApiError(0, "numbers must be finite (not nan or inf)") from None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.key:
            req.add_header("X-Api-Key", self.key)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._tls) as resp:
                answer = _decode(resp.read(), resp.headers.get_content_type())
                if isinstance(answer, str):  # every route the client uses answers JSON
                    raise ApiError(0, f"the answer from {self.url} is not the pvc API's "
                                      f"({resp.headers.get_content_type()}, not JSON)")
                return resp.status, answer
        except urllib.error.HTTPError as exc:
            payload = _decode(exc.read(), exc.headers.get_content_type() if exc.headers else "")
            if isinstance(payload, dict) and "message" in payload:
                raise ApiError(exc.code, payload["message"], payload.get("field")) from None
            raise ApiError(exc.code, f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(0, f"cannot reach the API at {self.url}: {reason}") from None
        except http.client.HTTPException as exc:  # something answered, not in HTTP
            raise ApiError(0, _line(f"no HTTP answer from {self.url}: {type(exc).__name__}: {exc}")) from None
        except ValueError as exc:  # a host name that cannot be sent
            raise ApiError(0, _line(f"cannot send the request to {self.url}: {exc}")) from None

    def get(self, path: str, **params) -> Any:
        return self.request("GET", path, params=params)[1]

    def post(self, path: str, body: dict) -> tuple[int, Any]:
        return self.request("POST", path, body)

    # -- the API, one method per route (paths from pvcapi.routes) -------------------------

    def health(self) -> dict:
        return self.get(route("health"))

    def cluster_status(self) -> dict:
        return self.get(route("cluster_status"))

    def set_cluster(self, **settings) -> dict:
        return self.post(route("cluster_status"), settings)[1]

    def faults(self) -> list[dict]:
        return self.get(route("faults"))

    def acknowledge_fault(self, fault_id: str, acknowledged: bool = True) -> dict:
        return self.post(route("fault", fault=fault_id), {"acknowledged": acknowledged})[1]

    def delete_fault(self, fault_id: str) -> dict:
        return self.request("DELETE", route("fault", fault=fault_id))[1]

    def nodes(self) -> list[dict]:
        return self.get(route("nodes"))

    def node(self, name: str) -> dict:
        return self.get(route("node", node=name))

    def node_domain_state(self, name: str, state: str, wait: bool = False) -> tuple[int, dict]:
        return self.post(route("node_domain_state", node=name), {"state": state, "wait": wait})

    def node_coordinator_state(self, name: str, state: str, wait: bool = False) -> tuple[int, dict]:
        return self.post(route("node_coordinator_state", node=name), {"state": state, "wait": wait})

    def fence_config(self, name: str) -> dict:
        return self.get(route("node_fence_config", node=name))

    def set_fence_config(self, name: str, entries: list) -> dict:
        return self.post(route("node_fence_config", node=name), {"entries": entries})[1]

    def confirm_off(self, name: str) -> dict:
        return self.post(route("node_confirm_off", node=name), {"node": name})[1]

    def node_log(self, name: str, lines: int = 100) -> dict:
        return self.get(route("node_log", node=name), lines=str(lines))

    def vm_log(self, name: str, lines: int = 100) -> dict:
        return self.get(route("vm_log", vm=name), lines=str(lines))

    def what_if_fail(self, name: str) -> dict:
        return self.get(route("node_what_if_fail", node=name))

    def vms(self, node=None, state=None, limit: str | None = None, tag=None, negate: bool = False) -> list[dict]:
        """``node``, ``state`` and ``tag``: a value or a list of them (any matches)."""
        return self.get(route("vms"), node=node, state=state, limit=limit, tag=tag,
                        negate="true" if negate else None)

    def rename_vm(self, name: str, new_name: str) -> dict:
        return self.post(route("vm_rename", vm=name), {"name": new_name})[1]

    def vm_tags(self, name: str) -> dict:
        return self.get(route("vm_tags", vm=name))

    def tag_vm(self, name: str, add=(), remove=(), protected: bool = False) -> dict:
        return self.post(route("vm_tags", vm=name), {"add": list(add), "remove": list(remove),
                                                     "protected": protected})[1]

    def vm(self, name: str) -> dict:
        return self.get(route("vm", vm=name))

    def define_vm(self, xml: str, **fields) -> dict:
        return self.post(route("vms"), {"xml": xml, **{k: v for k, v in fields.items() if v is not None}})[1]

    def set_meta(self, name: str, **meta) -> dict:
        return self.post(route("vm", vm=name), {k: v for k, v in meta.items() if v is not None})[1]

    def replace_xml(self, name: str, xml: str) -> dict:
        return self.request("PUT", route("vm", vm=name), {"xml": xml})[1]

    def undefine(self, name: str, force: bool = False) -> dict:
        return self.request("DELETE", route("vm", vm=name), params={"force": "true" if force else None})[1]

    def vm_state(self, name: str, state: str, wait: bool = False) -> tuple[int, dict]:
        return self.post(route("vm_state", vm=name), {"state": state, "wait": wait})

    def vm_node(self, name: str, action: str, target: str | None = None, force_live: bool = False,
                wait: bool = False) -> tuple[int, dict]:
        body = {"action": action, "force_live": force_live, "wait": wait}
        if target:
            body["target"] = target
        return self.post(route("vm_node", vm=name), body)

    def placement(self, name: str) -> dict:
        return self.get(route("vm_placement", vm=name))

    def selectors(self) -> list[dict]:
        return self.get(route("selectors"))

    def plugins(self) -> list[dict]:
        return self.get(route("plugins"))


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be the API's address, in a few words (None: it can)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # a port that is not a number from 0 to 65535 raises
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "expected http(s)://HOST:PORT"
    if not _sendable(url):
        return "it contains spaces or control characters"
    return None


def _line(text: str) -> str:
    """One short line, whatever bytes a peer sent."""
    return " ".join(text.split())[:300]


def _sendable(text: str) -> bool:
    return not any(c.isspace() or not c.isprintable() for c in text)


def _decode(raw: bytes, content_type: str) -> Any:
    if content_type == "application/json" and raw:
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")
    return raw.decode(errors="replace")

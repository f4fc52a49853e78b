"""The Falcon application: ``create_app(deps)`` wires routes; ``get_app()`` builds the real dependencies.

gunicorn serves ``pvcapi.app:get_app()`` (``pvcapid`` does this for you). Each
worker calls ``get_app()`` after the fork, so each has its own ZooKeeper client.
"""

from __future__ import annotations

import hmac
import os
import threading
from dataclasses import dataclass
from typing import Callable

import falcon
import falcon.media
from kazoo.exceptions import KazooException
from kazoo.handlers.threading import KazooTimeoutError

from pvccore import __version__
from pvccore.errors import PVCError, Unavailable
from pvccore.operations import Operations
from pvccore.plugins import load_plugins
from pvccore.zk.session import Session

from . import cluster, dashboard, feed, info, nodes, vms
from .config import API, ApiConfig
from .errors import domain_error, serialize_http_error, zookeeper_error
from .guards import Guards, StrictJSON
from .routes import PREFIX, ROUTES
CONFIG_ENV = "PVC_API_CONFIG"
#: seconds one ZooKeeper read or write may take before the request answers 503: a server that went
#: silent is noticed by kazoo only after two thirds of the session timeout, and no answer may wait that long
OP_TIMEOUT = 0.8


@dataclass
class Deps:
    """What the resources need: the core's operations and the API's own settings."""

    ops: Operations
    api_keys: tuple[str, ...] = ()
    auth: bool = True
    wait_timeout: float = 60.0
    version: str = __version__
    op_timeout: float | None = None  # longest wait for one ZooKeeper read or write (None: kazoo's own)
    guards: Guards | None = None  # set by create_app: ZooKeeper's state as the API sees it
    max_waiting: int = 0  # requests of this worker that may wait for a change at once (0: no cap)
    read_only_keys: tuple[str, ...] = ()  # keys that may only read
    max_streams: int = 8  # event streams (GET /events) this worker serves at once: each holds a thread
    stream_seconds: float = 600.0  # an event stream ends after this long (the client reconnects)

    def __post_init__(self):
        self._waiting = threading.BoundedSemaphore(self.max_waiting) if self.max_waiting else None

    def wait(self, until: Callable[[float], bool]) -> bool | None:
        """``until(wait_timeout)`` with one of this worker's wait slots, so that requests waiting for a
        change never take every thread; None (nothing waited for) when every slot is taken."""
        if self._waiting is None:
            return until(self.wait_timeout)
        if not self._waiting.acquire(blocking=False):
            return None
        try:
            return until(self.wait_timeout)
        finally:
            self._waiting.release()


ROLE_HEADER = "X-PVC-Role"  # on every answer to a known key: "full" or "read-only" (the dashboard hides actions)


class ApiKeyAuth:
    """Every path but ``GET /api/v1`` (health) and the dashboard's files (no data) needs a known key in
    ``X-Api-Key``; a read-only key only reads."""

    def __init__(self, keys: tuple[str, ...], read_only: tuple[str, ...] = ()):
        self._keys = tuple((k.encode(), "full") for k in keys) + tuple((k.encode(), "read-only") for k in read_only)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if dashboard.PATHS.fullmatch(req.path):
            return  # the dashboard's files (no data)
        if req.method == "GET" and req.path in (PREFIX, PREFIX + "/"):
            return
        given = (req.get_header("X-Api-Key") or "").encode()
        role = None
        for key, kind in self._keys:  # compare with every key, in constant time each
            if hmac.compare_digest(given, key):
                role = kind
        if role is None:
            raise falcon.HTTPUnauthorized(title="unauthorized",
                                          description="missing or unknown API key (send it in the X-Api-Key header)")
        resp.set_header(ROLE_HEADER, role)
        if role == "read-only" and req.method not in Guards.READS:
            raise falcon.HTTPForbidden(title="forbidden", description="this API key is read-only: it may not change "
                                                                      "anything")


def create_app(deps: Deps) -> falcon.App:
    guards = Guards(deps.ops.store.connection)
    app = falcon.App(middleware=[*([ApiKeyAuth(deps.api_keys, deps.read_only_keys)] if deps.auth else []), guards,
                                 dashboard.Headers()])
    app.req_options.strip_url_path_trailing_slash = True
    json_handler = StrictJSON()
    app.req_options.media_handlers = falcon.media.Handlers({falcon.MEDIA_JSON: json_handler})
    app.resp_options.media_handlers = falcon.media.Handlers({falcon.MEDIA_JSON: json_handler})
    app.add_error_handler(PVCError, domain_error)

    def unavailable(req, resp, exc, params) -> None:  # a ZooKeeper call timed out: answer the next ones at once
        guards.suspect()
        (domain_error if isinstance(exc, PVCError) else zookeeper_error)(req, resp, exc, params)

    app.add_error_handler(Unavailable, unavailable)
    app.add_error_handler(KazooException, unavailable)
    app.add_error_handler(KazooTimeoutError, unavailable)  # a kazoo wait that timed out (not a KazooException)
    app.set_error_serializer(serialize_http_error)
    deps.guards = guards

    resources = {"info": info.Info(deps, app), "cluster": cluster.Status(deps), "node": nodes.Nodes(deps),
                 "vm": vms.VMs(deps), "events": feed.Events(deps)}
    for route in ROUTES:
        app.add_route(route.template, resources[route.resource], **({"suffix": route.suffix} if route.suffix else {}))
    dashboard.serve(app)
    return app


def build_deps(cfg: ApiConfig) -> Deps:
    """Connect to ZooKeeper, start the watched view, load plugins."""
    # Every node and VM document, but not the liveness records: the coordinators time silences, and a worker
    # following N records a keepalive apart would cost the ensemble N watch events a second for nothing shown.
    session = Session.open(cfg.zookeeper_hosts, cfg.zookeeper_root, timeout=cfg.zookeeper_session_timeout,
                           auth=cfg.zookeeper_auth or None, op_timeout=OP_TIMEOUT, liveness=False)
    ops = Operations(session.store, session.view, load_plugins())
    return Deps(ops=ops, api_keys=cfg.api_keys, auth=cfg.auth, wait_timeout=cfg.wait_timeout, op_timeout=OP_TIMEOUT,
                max_waiting=max(1, cfg.threads // 2), read_only_keys=cfg.read_only_keys,
                max_streams=max(1, cfg.threads // 4))


def get_app(config: ApiConfig | None = None) -> falcon.App:
    """The real application, configured from ``config`` or the file named by ``$PVC_API_CONFIG``."""
    cfg = config or API.from_file(os.environ.get(CONFIG_ENV))
    return create_app(build_deps(cfg))

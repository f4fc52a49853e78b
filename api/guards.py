"""What stands between a request and the cluster: size limits, strict JSON, path names, ZooKeeper's state.

- A body over :data:`MAX_BODY` is refused with 413 before it is read (by its Content-Length,
  or while reading one sent without it).
- Request JSON is parsed strictly: NaN and Infinity are not JSON, nesting too deep to parse
  and numbers too long to convert are bad input, every one a 400 naming the body.
- ``vm`` and ``node`` path parameters are checked once, here, so every route names the same
  field (the parameter) for a bad name.
- While the ZooKeeper session is down, writes are refused at once with 503 (nothing is
  changed), and reads are answered from the watched view with ``X-PVC-Stale: <seconds>``
  (how long ZooKeeper has been unreachable): a client never waits on an outage.
"""

from __future__ import annotations

import json
import threading
import time

import falcon
from falcon.media import BaseHandler
from kazoo.client import KazooState
from kazoo.exceptions import KazooException

from pvccore.errors import Unavailable
from pvccore.models import check_name

from .errors import BadRequest

MAX_BODY = 1024 * 1024  # bytes; the largest document pvc stores (a domain XML) is far below it
MAX_XML = 512 * 1024  # bytes of domain XML: ZooKeeper takes at most 1 MiB per write, VM document and XML together
STALE_HEADER = "X-PVC-Stale"
SUSPECT_FOR = 2.0  # seconds a timed-out ZooKeeper call makes the API answer as if ZooKeeper were away
_NAMES = {"vm": "VM", "node": "node"}


def too_large(size: int | None) -> falcon.HTTPError:
    said = f"{size} bytes" if size is not None else f"over {MAX_BODY} bytes"
    return falcon.HTTPContentTooLarge(title="request body too large",
                                      description=f"the request body is {said}; the limit is {MAX_BODY} bytes (1 MiB)")


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def fresh(guards: "Guards | None", read, fallback):
    """``read()`` from ZooKeeper (exact across API workers: a change made through another worker
    shows), or ``fallback()`` from the watched view while ZooKeeper is away or cannot answer in time.
    Without ``guards`` (a caller outside the API), always ``read()``."""
    if guards is None:
        return read()
    if guards.stale_for() is not None:
        return fallback()
    try:
        return read()
    except (Unavailable, KazooException):
        guards.suspect()
        return fallback()


class StrictJSON(BaseHandler):
    """JSON bodies in and out: bounded in size, never NaN or Infinity either way."""

    def deserialize(self, stream, content_type, content_length):
        data = stream.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            raise too_large(None)
        if not data.strip():
            raise falcon.MediaNotFoundError("JSON")
        try:
            return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
        except RecursionError:
            raise BadRequest("the request body is nested too deeply") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest(f"the request body is not valid JSON: {str(exc)[:200]}") from None

    def serialize(self, media, content_type) -> bytes:
        return json.dumps(media, ensure_ascii=False, allow_nan=False).encode()


class Guards:
    """Falcon middleware: body size, path names, and answers shaped by ZooKeeper's state."""

    READS = ("GET", "HEAD", "OPTIONS")

    def __init__(self, client):
        self._client = client
        self._lost_at: float | None = None if client.connected else time.monotonic()
        self._lock = threading.Lock()
        self._suspect_until, self._suspect_since = 0.0, None
        client.add_listener(self._on_state)

    def _on_state(self, state: str) -> None:
        with self._lock:
            if state == KazooState.CONNECTED:
                self._lost_at = None
                self._suspect_until, self._suspect_since = 0.0, None
            elif self._lost_at is None:
                self._lost_at = time.monotonic()

    def suspect(self) -> None:
        """A ZooKeeper call timed out: take it as lost for a moment (kazoo notices a silent server
        only after two thirds of the session timeout), so the next requests answer at once."""
        with self._lock:
            self._suspect_until = time.monotonic() + SUSPECT_FOR
            self._suspect_since = self._suspect_since or time.monotonic()

    def stale_for(self) -> float | None:
        """Seconds since ZooKeeper was lost, or None while it is reachable."""
        now = time.monotonic()
        with self._lock:
            lost = self._lost_at
            if lost is None and now < self._suspect_until:
                lost = self._suspect_since
            elif now >= self._suspect_until:
                self._suspect_since = None
        if lost is None and not self._client.connected:
            return 0.0
        return None if lost is None else now - lost

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.content_length is not None and req.content_length > MAX_BODY:
            raise too_large(req.content_length)
        stale = self.stale_for()
        if stale is not None:
            resp.set_header(STALE_HEADER, f"{stale:.1f}")
            if req.method not in self.READS:
                raise falcon.HTTPServiceUnavailable(
                    title="ZooKeeper unreachable",
                    description=f"ZooKeeper has been unreachable for {stale:.0f}s; nothing was changed: "
                                "try again once it is back (reads answer from the last known state)")

    def process_resource(self, req, resp, resource, params) -> None:
        for name, what in _NAMES.items():
            if name in params:
                check_name(params[name], what, name)

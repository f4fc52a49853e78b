"""What stands between a request and the cluster: size limits, strict JSON, path names, ZooKeeper's state.

- A body over :data:`MAX_BODY` is refused with 413 before it is read, by its Content-Length; a
  body sent without one (chunked) is refused unread with 400.
- Request JSON is parsed strictly: NaN and Infinity are not JSON; a number beyond a float's
  range or an integer of more than 19 digits, a string that is not Unicode (a lone surrogate
  escape) and nesting deeper than :data:`MAX_DEPTH` are bad input: every one a 400 naming the
  body, before anything reaches the core. Answers never carry NaN either.
- ``vm`` and ``node`` path parameters are checked once, here, so every route names the same
  field (the parameter) for a bad name.
- While the ZooKeeper session is down, writes are refused at once with 503 (nothing is
  changed), and reads are answered from the watched view; every answer given meanwhile
  (errors too) carries ``X-PVC-Stale: <seconds>`` (how long ZooKeeper has been unreachable):
  a client never waits on an outage.
"""

from __future__ import annotations

import json
import math
import threading
import time

import falcon
from falcon.media import BaseHandler
from kazoo.exceptions import KazooException

from pvccore.errors import Unavailable
from pvccore.domain.fields import check_name
from pvccore.zk.connection import CONNECTED

from .errors import BadRequest

MAX_BODY = 1024 * 1024  # bytes; the largest document pvc stores (a domain XML) is far below it
MAX_XML = 512 * 1024  # bytes of domain XML: ZooKeeper takes at most 1 MiB per write, VM document and XML together
MAX_DEPTH = 32  # levels of nesting in a request body; pvc's own bodies need 4 (fence entries' params)
MAX_DIGITS = 19  # digits of an integer in a request body: a signed 64-bit integer has at most 19
STALE_HEADER = "X-PVC-Stale"
SUSPECT_FOR = 2.0  # seconds a timed-out ZooKeeper call makes the API answer as if ZooKeeper were away
_NAMES = {"vm": "VM", "node": "node"}


def too_large(size: int | None) -> falcon.HTTPError:
    said = f"{size} bytes" if size is not None else f"over {MAX_BODY} bytes"
    return falcon.HTTPContentTooLarge(title="request body too large",
                                      description=f"the request body is {said}; the limit is {MAX_BODY} bytes (1 MiB)")


class Unusable(ValueError):
    """Valid JSON that pvc does not take (a number out of range, a string that is not Unicode, deep
    nesting); its message completes "the request body ..."."""


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _clip(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:20]}... ({len(text)} characters)"


def _finite(text: str) -> float:
    """A JSON number with a fraction or exponent; 1e400 would silently become Infinity."""
    value = float(text)
    if not math.isfinite(value):
        raise Unusable(f"has a number out of range: {_clip(text)}")
    return value


def _integer(text: str) -> int:
    """A JSON integer, of at most :data:`MAX_DIGITS` digits (converting longer ones costs, and overflows floats)."""
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise Unusable(f"has an integer of more than {MAX_DIGITS} digits: {_clip(text)}")
    return int(text)


def _check_tree(data) -> None:
    """Every string Unicode (JSON lets ``"\\ud800"`` through, UTF-8 cannot carry it), nesting at most
    :data:`MAX_DEPTH` deep. Iterative: a check of depth must not itself recurse."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise Unusable(f"is nested too deeply (more than {MAX_DEPTH} levels)")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_text(key)
                stack.append((item, depth + 1))


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise Unusable("has a string that is not valid Unicode (an unpaired surrogate escape)") from None


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


def not_kept(what: str):
    """The fallback of :func:`fresh` for what only ZooKeeper holds (no view keeps it): a 503 at once that says so."""
    def refuse():
        raise Unavailable(f"ZooKeeper is unreachable, and {what} are read from it, not kept here: try again once "
                          "it is back")
    return refuse


def caught_up(deps) -> None:
    """Before a listing: the view holds every change made before the request, through any API worker (a CLI
    command that follows a change lists it), unless ZooKeeper is away or slow (then: the view as it stands)."""
    if deps.guards is None or deps.guards.stale_for() is None:
        if not deps.ops.view.caught_up(deps.op_timeout or 5.0) and deps.guards is not None:
            deps.guards.suspect()  # ZooKeeper did not answer in time: the reads after this answer from the view



class StrictJSON(BaseHandler):
    """JSON bodies in and out: bounded in size, never NaN or Infinity either way."""

    def deserialize(self, stream, content_type, content_length):
        data = stream.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            raise too_large(None)
        if not data.strip():
            raise falcon.MediaNotFoundError("JSON")
        try:
            media = json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite,
                               parse_int=_integer)
            _check_tree(media)
        except RecursionError:
            raise BadRequest(f"the request body is nested too deeply (more than {MAX_DEPTH} levels)") from None
        except Unusable as exc:
            raise BadRequest(f"the request body {exc}") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest(f"the request body is not valid JSON: {str(exc)[:200]}") from None
        return media

    def serialize(self, media, content_type) -> bytes:
        text = json.dumps(media, ensure_ascii=False, allow_nan=False)
        try:
            return text.encode()
        except UnicodeEncodeError:  # an unpaired surrogate from somewhere: escaped, as JSON can
            return json.dumps(media, allow_nan=False).encode()


class Guards:
    """Falcon middleware: body size, path names, and answers shaped by ZooKeeper's state."""

    READS = ("GET", "HEAD", "OPTIONS")

    def __init__(self, connection):
        self._connection = connection
        self._lost_at: float | None = None if connection.connected else time.monotonic()
        self._lock = threading.Lock()
        self._suspect_until, self._suspect_since = 0.0, None
        connection.subscribe(self._on_state)

    def _on_state(self, state: str) -> None:
        with self._lock:
            if state == CONNECTED:
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
        if lost is None and not self._connection.connected:
            return 0.0
        return None if lost is None else now - lost

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.content_length is not None and req.content_length > MAX_BODY:
            raise too_large(req.content_length)
        if req.content_length is None and req.get_header("Transfer-Encoding"):
            # Falcon reads no body without a length (it would take this one as empty, and answer as if
            # a field were missing), and pvcapid's worker hands such a request over before its body.
            raise BadRequest("send the request body with a Content-Length: chunked bodies are not taken")
        stale = req.context.pvc_stale = self.stale_for()
        if stale is not None and req.method not in self.READS:
            raise falcon.HTTPServiceUnavailable(
                title="ZooKeeper unreachable",
                description=f"ZooKeeper has been unreachable for {stale:.0f}s; nothing was changed: "
                            "try again once it is back (reads answer from the last known state)")

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        """Every answer while ZooKeeper is away (or was, when the request came) says so, errors included."""
        stale = self.stale_for()
        if stale is None:
            stale = getattr(req.context, "pvc_stale", None)
        if stale is not None:
            resp.set_header(STALE_HEADER, f"{stale:.1f}")

    def process_resource(self, req, resp, resource, params) -> None:
        for name, what in _NAMES.items():
            if name in params:
                check_name(params[name], what, name)

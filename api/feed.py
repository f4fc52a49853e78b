"""``/events``: the cluster as it changes, a server-sent event stream fed from the watched view (the dashboard's).

One :class:`Feed` per API worker follows the worker's watched view in a thread of its own and turns each
change into one event, encoded once for every open stream: a browser's cost is a socket and a thread
waiting, never a ZooKeeper read. The first event of a stream is a ``snapshot`` (every node, every VM
without its XML, the cluster status); each later one a ``delta`` (the nodes and VMs that changed or went
away, and the status when it changed). A stream that falls behind the feed's short history gets a
new ``snapshot``. A comment line every :data:`KEEPALIVE` seconds tells a silent cluster from a dead
connection.

Each open stream holds one of the worker's threads, so streams are capped per worker (``Deps.max_streams``;
beyond it: 503 with ``Retry-After``), end after ``Deps.stream_seconds`` (the client reconnects and starts
from a snapshot) and within a second of the worker being told to stop. A client that does not read its
stream is cut off by the worker's send timeout (``request_timeout``).
"""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
from collections import deque

import falcon

from .cluster import status
from .vms import runs, vm_out

log = logging.getLogger(__name__)

#: set by pvcapid's worker when it is told to stop: every stream ends within a second
STOPPING = threading.Event()
KEEPALIVE = 15.0  # seconds between comment lines on a quiet stream
COALESCE = 0.1  # seconds the feed waits after an event before the next: a burst of changes is one event
STATUS_MIN = 1.0  # seconds between two computations of the status (its N+1 check plans every node's failure)
STATUS_EVERY = 2.0  # seconds between looks at the status when nothing else changed (faults, fencing)
IDLE_STOP = 30.0  # seconds the feed's thread runs on with no stream open
HISTORY = 128  # events kept for streams that are a little behind


def encode(kind: str, data: dict) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'), allow_nan=False)}\n\n".encode()


def _comparable(st: dict) -> dict:
    """The status without what changes by itself (the N+1 check's age)."""
    return {**st, "n_plus_one": {k: v for k, v in st["n_plus_one"].items() if k != "age"}}


class Feed:
    """The events of one worker's view, numbered; see the module docstring."""

    def __init__(self, ops, guards=None):
        self.ops, self.guards = ops, guards
        self._cond = threading.Condition()
        self._seq = 0
        self._history: deque[tuple[int, bytes]] = deque(maxlen=HISTORY)
        self._nodes: dict[str, dict] = {}
        self._vms: dict[str, tuple[object, dict]] = {}  # name -> (the VM object, its dict)
        self._status: dict | None = None
        self._ready = False  # the first picture is taken
        self._thread: threading.Thread | None = None
        self._open = 0  # streams being served
        self._last_open = time.monotonic()

    # -- what streams call ---------------------------------------------------------------------

    def opened(self) -> None:
        with self._cond:
            if self._thread is None:
                # (Again, after a while without streams, or after it failed: what it holds is old. A stream still
                # open finds its events gone and starts again from the new picture.)
                self._ready = False
                self._history.clear()
                self._seq += 1
                thread = threading.Thread(target=self._run, name="pvcapi-feed", daemon=True)
                thread.start()  # (raises if no thread can be started: nothing is counted then)
                self._thread = thread
            self._open += 1

    def closed(self) -> None:
        with self._cond:
            self._open -= 1
            self._last_open = time.monotonic()

    def snapshot(self, timeout: float = 10.0) -> tuple[int, bytes] | None:
        """``(seq, the snapshot event)`` as of event ``seq``, once the first picture is taken (None: not in time,
        or the worker is stopping)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._ready or STOPPING.is_set(), timeout) or not self._ready:
                return None
            return self._seq, encode("snapshot", {
                "seq": self._seq, "nodes": list(self._nodes.values()), "vms": [d for _, d in self._vms.values()],
                "status": self._status})

    def after(self, seq: int, timeout: float) -> list[bytes] | None:
        """The events after ``seq`` (waiting up to ``timeout`` for one; ``[]``: none came), or None when some
        of them are no longer kept (the stream starts again from a snapshot)."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq != seq or STOPPING.is_set(), timeout)
            if self._seq == seq:
                return []
            if not self._history or self._history[0][0] > seq + 1:
                return None
            return [event for n, event in self._history if n > seq]

    @property
    def seq(self) -> int:
        with self._cond:
            return self._seq

    # -- the feed's thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._follow()
        finally:
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _follow(self) -> None:
        """Nodes and VMs go out as they change; the status with them at most every :data:`STATUS_MIN` seconds
        (it changed meanwhile: it goes out then), and every :data:`STATUS_EVERY` seconds in any case (faults
        and fencing are not in the view's changes)."""
        view, generation, status_at, status_due = self.ops.view, None, 0.0, True
        while not STOPPING.is_set() and not view.stopped:
            with self._cond:
                if self._open == 0 and time.monotonic() - self._last_open > IDLE_STOP:
                    self._thread = None  # (here, under the lock: a stream opened from now on starts a new one)
                    return
            wait = max(0.0, status_at + STATUS_MIN - time.monotonic()) if status_due else 1.0
            changed = generation is None or view.wait_changed(generation, min(wait, 1.0)) != generation
            generation = view.generation
            now = time.monotonic()
            status_due = status_due or changed or now - status_at >= STATUS_EVERY
            with_status = status_due and now - status_at >= STATUS_MIN
            if not (changed or with_status):
                continue
            try:
                self._take(view.snapshot(), with_status)
            except Exception:  # noqa: BLE001 - the feed must go on; the next change tries again
                log.exception("the event feed could not take a change in")
            if with_status:
                status_at, status_due = now, False
            if changed:
                time.sleep(COALESCE)  # a rate limit: a burst of changes becomes one event

    def _take(self, snap, with_status: bool = True) -> None:
        nodes = {name: n.to_dict() for name, n in snap.nodes.items()}
        vms: dict[str, tuple[object, dict]] = {}
        for name, vm in snap.vms.items():
            kept = self._vms.get(name)
            vms[name] = kept if kept is not None and kept[0] is vm and kept[1]["running"] == runs(vm, snap) \
                else (vm, vm_out(vm, snap))
        st = self._status
        if with_status or st is None:
            try:
                st = status(self.ops, self.guards)
            except Exception:  # noqa: BLE001 - nodes and VMs still go out; the status as it was (None: not known)
                log.exception("the event feed could not compute the cluster status")
        changed_nodes = [d for name, d in nodes.items() if self._nodes.get(name) != d]
        changed_vms = [d for name, (vm, d) in vms.items() if self._vms.get(name, (None, None))[1] is not d]
        gone = {"nodes": sorted(set(self._nodes) - set(nodes)), "vms": sorted(set(self._vms) - set(vms))}
        new_status = st is not self._status and (self._status is None or _comparable(st) != _comparable(self._status))
        with self._cond:
            first = not self._ready
            self._nodes, self._vms, self._status, self._ready = nodes, vms, st, True
            if not first and (changed_nodes or changed_vms or gone["nodes"] or gone["vms"] or new_status):
                self._seq += 1
                delta = {"seq": self._seq, "nodes": changed_nodes, "vms": changed_vms, "gone": gone}
                if new_status:
                    delta["status"] = st
                self._history.append((self._seq, encode("delta", delta)))
            self._cond.notify_all()


def hung_up(sock) -> bool:
    """Whether the client closed its side of the connection. A stream's client sends nothing, so a readable
    socket with nothing to read is its FIN. Peeked at on the raw socket (below TLS, if any), taking nothing."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and socket.socket.recv(sock, 1, socket.MSG_PEEK) == b""
    except OSError:  # reset, or closed already
        return True
    except ValueError:  # not a socket this can look at: the next write failing will tell
        return False


class _Stream:
    """The answer's body: the stream's events; ``close()`` (called by the server, even before the first
    event) gives its slot back once. A client that hung up is noticed within a second (not at the next write
    that fails, which on a quiet cluster comes only with a keep-alive)."""

    def __init__(self, feed: Feed, seconds: float, release, sock=None):
        self._feed, self._seconds, self._release = feed, seconds, release
        self._gone = (lambda: hung_up(sock)) if sock is not None else (lambda: False)
        self._events = self._generate()

    def __iter__(self):
        return self._events

    def _generate(self):
        feed, end = self._feed, time.monotonic() + self._seconds
        seq, quiet_until = None, time.monotonic() + KEEPALIVE
        while not STOPPING.is_set() and time.monotonic() < end:
            if seq is None:
                taken = feed.snapshot()
                if taken is None:
                    yield b": the cluster's picture is not ready; reconnect\n\n"
                    return
                seq, event = taken
                yield event
                continue
            events = feed.after(seq, min(1.0, KEEPALIVE))
            if events is None:
                seq = None  # behind the history: start again from a snapshot
            elif events:
                seq += len(events)
                quiet_until = time.monotonic() + KEEPALIVE
                yield b"".join(events)
            elif self._gone():
                return
            elif time.monotonic() >= quiet_until:
                quiet_until = time.monotonic() + KEEPALIVE
                yield b": keep-alive\n\n"

    def close(self) -> None:
        try:
            self._events.close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class Events:
    """``GET /events``: see the module docstring."""

    def __init__(self, deps):
        self.deps = deps
        self.feed = Feed(deps.ops, deps.guards)
        self._slots = threading.BoundedSemaphore(max(1, deps.max_streams))

    def on_get(self, req, resp):
        if not self._slots.acquire(blocking=False):
            raise falcon.HTTPServiceUnavailable(
                title="too many event streams",
                description=f"this API worker serves {self.deps.max_streams} event streams at once, all taken: "
                            "try again later (the dashboard refreshes from the listings meanwhile)",
                headers={"Retry-After": "5"})
        try:
            self.feed.opened()
        except BaseException:
            self._slots.release()
            raise

        def release() -> None:
            self.feed.closed()
            self._slots.release()

        resp.content_type = "text/event-stream"
        resp.set_header("Cache-Control", "no-store")
        resp.set_header("X-Accel-Buffering", "no")  # a proxy in front must pass each event on at once
        resp.stream = _Stream(self.feed, self.deps.stream_seconds, release, req.env.get("gunicorn.socket"))

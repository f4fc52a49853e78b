"""A cluster view kept current by ZooKeeper watches.

Placement and listings read this in-memory picture, never ZooKeeper node by
node. One children watch on ``nodes/`` and one on ``vms/``; one data watch per
node and per VM document, armed with pipelined asynchronous reads so that
loading thousands of entries takes one round trip's worth of latency, not
thousands. A reply older than what the view already holds (by ``mzxid``) is
dropped, so out-of-order completions cannot roll the view back.

:meth:`ClusterView.wait_for` lets callers (daemons, the API's ``wait=true``,
tests) block until the view satisfies a condition, with a deadline.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from types import MappingProxyType
from typing import Callable

from kazoo.client import KazooState
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import Callback, EventType
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from pvccore.errors import Unavailable, ValidationError
from pvccore.domain.models import VM, Cluster, ClusterConfig, Handover, Node, PrimaryRecord, decode_fencing
from pvccore.domain.placement import current
from pvccore.zk.connection import Connection
from pvccore.zk.schema import Schema

log = logging.getLogger(__name__)

_DECODERS = {"node": Node.from_json, "vm": VM.from_json}


class ClusterView:
    """In-memory nodes, VMs and cluster config, current as of the last watch event."""

    def __init__(self, connection: Connection, schema: Schema):
        self._connection = connection
        self._client = connection.client
        self._schema = schema
        self._cond = threading.Condition(threading.RLock())
        self._data: dict[str, dict[str, object]] = {"node": {}, "vm": {}}
        self._zxid: dict[tuple[str, str], int] = {}
        self._members: dict[str, set[str]] = {"node": set(), "vm": set()}
        self._watchers: dict[tuple[str, str], Callable] = {}
        self._pending = 0
        self._kinds_seen: set[str] = set()
        # Single documents: the cluster config, the primary record, the handover record.
        self._single: dict[str, object] = {"config": ClusterConfig(), "primary": None, "handover": None}
        # Read-only documents the API shows: fence status per node, counters (not part of placement).
        self._shown: dict[str, dict] = {"fencing": {}, "stats": {}}
        self._single_seen: set[str] = set()
        self._gen = {"node": 0, "vm": 0, "config": 0}
        self._cache: dict[str, tuple[int, object]] = {}
        self._session_lost = False
        self._stopped = False
        self._listeners: list[Callable[[], None]] = []
        # Documents read on demand and kept by a watch (a VM's XML, a node's fence configuration), by path.
        self._docs: dict[str, bytes | None] = {}  # None: known absent (kept only when asked to)
        self._doc_gen: dict[str, int] = {}
        self._doc_watchers: dict[str, Callable] = {}

    # -- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> "ClusterView":
        """Arm the watches and wait until every existing entry has been loaded once."""
        self._connection.subscribe(self._on_connection)
        ChildrenWatch(self._client, self._schema.nodes, lambda c: self._on_children("node", c))
        ChildrenWatch(self._client, self._schema.vms, lambda c: self._on_children("vm", c))
        for kind, path, decode in (("config", self._schema.config, ClusterConfig.from_json),
                                   ("primary", self._schema.primary, PrimaryRecord.from_json),
                                   ("handover", self._schema.handover, Handover.from_json)):
            DataWatch(self._client, path, lambda data, stat, event=None, k=kind, d=decode: self._on_single(k, d, data))
        for kind, path in (("fencing", self._schema.fencing), ("stats", self._schema.stats)):
            DataWatch(self._client, path, lambda data, stat, event=None, k=kind: self._on_shown(k, data))
        if not self.wait_until(lambda: len(self._kinds_seen) == 2 and len(self._single_seen) == 5
                               and self._pending == 0, timeout):
            raise TimeoutError(f"cluster view not loaded within {timeout:g}s")
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._connection.unsubscribe(self._on_connection)

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after every change (from a kazoo thread: it must not block)."""
        self._listeners.append(fn)

    def _changed(self) -> None:
        # Called with the condition held.
        self._cond.notify_all()
        for fn in self._listeners:
            try:
                fn()
            except Exception:
                log.exception("view listener failed")

    # -- reading ----------------------------------------------------------------------

    def snapshot(self) -> Cluster:
        """An immutable picture of the cluster; rebuilt only for the parts that changed."""
        with self._cond:
            nodes = self._cached("node", lambda d: MappingProxyType({k: d[k] for k in sorted(d)}))
            vms = self._cached("vm", lambda d: MappingProxyType(dict(d)))
            return Cluster(nodes=nodes, vms=vms, config=self._single["config"], primary=self._single["primary"],
                           handover=self._single["handover"])

    def placement_snapshot(self) -> Cluster:
        """:meth:`snapshot` as placement should see it (:func:`pvccore.domain.placement.current`), cached until a change."""
        with self._cond:
            key = (self._gen["node"], self._gen["vm"], self._gen["config"])
            if self._cache.get("placement", (None,))[0] != key:
                self._cache["placement"] = (key, current(self.snapshot()))
            return self._cache["placement"][1]

    def _cached(self, kind: str, build: Callable[[dict], object]):
        gen, value = self._cache.get(kind, (-1, None))
        if gen != self._gen[kind]:
            value = build(self._data[kind])
            self._cache[kind] = (self._gen[kind], value)
        return value

    def node(self, name: str) -> Node | None:
        with self._cond:
            return self._data["node"].get(name)  # type: ignore[return-value]

    def vm(self, name: str) -> VM | None:
        with self._cond:
            return self._data["vm"].get(name)  # type: ignore[return-value]

    def vm_xml(self, name: str, timeout: float | None = None) -> str | None:
        """A VM's libvirt XML: read once, then kept by a watch until it changes (None: no such VM).

        A read waits at most ``timeout`` seconds (:class:`Unavailable` then; None: as long as kazoo does).
        """
        data = self.document(self._schema.vm_xml(name), timeout)
        return None if data is None else data.decode()

    def cached_xml(self, name: str) -> str | None:
        """A VM's XML if the view holds it, without reading ZooKeeper."""
        data = self.cached(self._schema.vm_xml(name))
        return None if data is None else data.decode()

    def forget_xml(self, name: str) -> None:
        """Drop a cached XML (its watch fired, or this process just wrote it)."""
        self.forget(self._schema.vm_xml(name))

    def document(self, path: str, timeout: float | None = None, reread: bool = False,
                 keep_absent: bool = False) -> bytes | None:
        """A znode's data, kept by a watch until it changes (None: no such znode).

        For documents the API shows but the view does not follow, so that they too can be
        answered from memory while ZooKeeper is away (:meth:`cached`). ``reread`` reads
        ZooKeeper even when the document is held (exact across processes, and refreshes what is
        held); ``keep_absent`` keeps a missing znode's absence too, with a watch on its creation
        (for paths whose number is bounded: each costs a watch). A read waits at most ``timeout``
        seconds (:class:`Unavailable` then; None: as long as kazoo does).
        """
        with self._cond:
            if not reread and path in self._docs:
                return self._docs[path]
            gen = self._doc_gen.get(path, 0)
            watcher = self._doc_watchers.get(path)
            if watcher is None:
                watcher = self._doc_watchers[path] = lambda event, p=path: self.forget(p)
        try:
            data = self._bounded(self._client.get_async(path, watch=watcher), timeout, path)[0]
        except NoNodeError:
            # A failed read sets no watch: watch for the creation, or the absence cannot be kept.
            if not keep_absent or self._bounded(self._client.exists_async(path, watch=watcher), timeout, path):
                return None
            data = None
        with self._cond:
            if self._doc_gen.get(path, 0) == gen:  # no change event arrived while we read
                self._docs[path] = data
        return data

    def _bounded(self, result, timeout: float | None, path: str):
        try:
            return result.get(timeout=timeout)
        except self._client.handler.timeout_exception:
            raise Unavailable(f"ZooKeeper did not answer within {timeout:g}s (read {path})") from None

    def cached(self, path: str) -> bytes | None:
        """A document as :meth:`document` last kept it, without reading ZooKeeper (None: absent or not held)."""
        with self._cond:
            return self._docs.get(path)

    def holds(self, path: str) -> bool:
        """Whether :meth:`cached` knows the document (its data, or that it is absent)."""
        with self._cond:
            return path in self._docs

    def forget(self, path: str) -> None:
        """Drop a held document (its watch fired, or this process just wrote it)."""
        with self._cond:
            self._docs.pop(path, None)
            self._doc_watchers.pop(path, None)
            self._doc_gen[path] = self._doc_gen.get(path, 0) + 1
            self._cond.notify_all()

    @property
    def config(self) -> ClusterConfig:
        return self._single["config"]  # type: ignore[return-value]

    def shown(self, kind: str) -> dict:
        """The watched ``fencing`` (node -> :class:`FenceStatus`) or ``stats`` (counters) document, as last seen."""
        with self._cond:
            return self._shown[kind]

    @property
    def generation(self) -> int:
        """A number that grows with every change the view takes in."""
        with self._cond:
            return sum(self._gen.values())

    def wait_changed(self, since: int, timeout: float) -> int:
        """Block until :attr:`generation` differs from ``since`` (or ``timeout``); return the current one."""
        self.wait_until(lambda: sum(self._gen.values()) != since, timeout)
        return self.generation

    def wait_seen(self, kind: str, name: str, zxid: int, timeout: float = 10.0) -> bool:
        """Wait until the view holds ``kind``/``name`` as of ZooKeeper transaction ``zxid`` or later.

        ``kind`` is ``"node"`` or ``"vm"``. An entry that was deleted meanwhile counts as seen. One the
        view has not heard of at all (created by another process a moment ago) is not taken as deleted:
        the view first takes in every change this session has been told of (:meth:`barrier`), which
        includes that creation, since this session has read the entry.
        """
        key = (kind, name)
        deadline = time.monotonic() + timeout
        with self._cond:
            heard = name in self._members[kind]
        if not heard and not self.barrier(timeout):
            return False
        return self.wait_until(lambda: self._zxid.get(key, -1) >= zxid or name not in self._members[kind],
                               max(0.0, deadline - time.monotonic()))

    def wait_for(self, predicate: Callable[[Cluster], bool], timeout: float) -> bool:
        """Block until ``predicate(snapshot)`` holds or ``timeout`` passes; return whether it held."""
        return self.wait_until(lambda: predicate(self.snapshot()), timeout)

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0 or self._stopped:
                    return False
                self._cond.wait(left)
            return True

    def barrier(self, timeout: float = 10.0) -> bool:
        """Return once the view holds every change this client's session has been told of.

        ZooKeeper delivers a session's watch events in order, and before any answer that
        reflects a later state: so once the caller has seen a state (a lock acquired, a
        write of its own), every earlier change's event is queued in kazoo's event thread.
        A marker queued behind them runs after they have sent their reads; a read sent from
        the marker completes after those reads, on kazoo's (ordered) completion thread, so
        after the view applied them. Placement uses this under its lock to decide from
        every earlier placement, not from a view a few events behind.
        """
        done = threading.Event()

        def after_events() -> None:
            self._client.get_async(self._schema.config).rawlink(lambda _result: done.set())

        self._client.handler.dispatch_callback(Callback("watch", after_events, ()))
        return done.wait(timeout)

    # -- watch plumbing -------------------------------------------------------------------

    def _on_connection(self, state: str) -> None:
        # Data watches do not survive a lost session; re-arm them all when we are back.
        if state == KazooState.LOST:
            self._session_lost = True
        elif state == KazooState.CONNECTED and self._session_lost:
            self._session_lost = False
            self._client.handler.spawn(self._rearm_all)

    def _rearm_all(self) -> None:
        with self._cond:
            entries = [(k, n) for k, names in self._members.items() for n in names]
        for kind, name in entries:
            self._fetch(kind, name)

    def _on_single(self, kind: str, decode, data):
        if self._stopped:
            return False
        value = ClusterConfig() if kind == "config" else None  # absent document
        if data:
            try:
                value = decode(data)
            except ValidationError:
                log.error("ignoring unreadable %s document", kind)
                value = self._single[kind]
        with self._cond:
            self._single[kind] = value
            self._single_seen.add(kind)
            self._gen["config"] += 1
            self._changed()
        return None

    def _on_shown(self, kind: str, data) -> bool | None:
        if self._stopped:
            return False
        if kind == "fencing":
            value = decode_fencing(data)
            if value is None:
                log.error("ignoring unreadable %s document", kind)
        else:
            try:
                value = json.loads(data) if data else {}
            except ValueError:
                log.error("ignoring unreadable %s document", kind)
                value = None
        with self._cond:
            if isinstance(value, dict):
                self._shown[kind] = value
            self._single_seen.add(kind)
            self._changed()
        return None

    def _on_children(self, kind: str, children: list[str]):
        if self._stopped:
            return False
        with self._cond:
            new = set(children)
            added = new - self._members[kind]
            removed = self._members[kind] - new
            self._members[kind] = new
            for name in removed:
                self._drop(kind, name)
            self._pending += len(added)
            self._kinds_seen.add(kind)
            self._changed()
        for name in added:
            self._fetch(kind, name, counted=True)
        return None

    def _path(self, kind: str, name: str) -> str:
        return self._schema.node(name) if kind == "node" else self._schema.vm(name)

    def _fetch(self, kind: str, name: str, counted: bool = False) -> None:
        key = (kind, name)
        watcher = self._watchers.get(key)
        if watcher is None:
            watcher = self._watchers[key] = lambda event, k=kind, n=name: self._on_event(k, n, event)
        result = self._client.get_async(self._path(kind, name), watch=watcher)
        result.rawlink(lambda res, k=kind, n=name: self._on_data(k, n, res, counted))

    def _on_event(self, kind: str, name: str, event) -> None:
        if self._stopped:
            return
        if event.type == EventType.DELETED:
            with self._cond:
                # Forget membership too, so a re-created entry is seen as new by the children watch.
                self._members[kind].discard(name)
                self._drop(kind, name)
                self._changed()
            return
        self._fetch(kind, name)

    def _on_data(self, kind: str, name: str, result, counted: bool) -> None:
        try:
            data, stat = result.get_nowait()
        except NoNodeError:
            data = stat = None
        except Exception as exc:  # connection trouble: the session listener re-arms later
            log.warning("reading %s %s failed: %s", kind, name, exc)
            data = stat = None
        with self._cond:
            if counted:
                self._pending -= 1
            if stat is not None and name in self._members[kind]:
                key = (kind, name)
                if stat.mzxid >= self._zxid.get(key, -1):
                    try:
                        value = _DECODERS[kind](data)
                    except ValidationError as exc:
                        log.error("ignoring unreadable %s %s: %s", kind, name, exc)
                    else:
                        self._zxid[key] = stat.mzxid
                        self._data[kind][name] = value
                        self._gen[kind] += 1
            self._changed()

    def _drop(self, kind: str, name: str) -> None:
        if self._data[kind].pop(name, None) is not None:
            self._gen[kind] += 1
        self._zxid.pop((kind, name), None)
        self._watchers.pop((kind, name), None)

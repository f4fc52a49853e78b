"""A cluster view kept current by ZooKeeper watches.

Placement and listings read this in-memory picture, never ZooKeeper node by
node. One children watch on ``nodes/`` and one on ``vms/``; one data watch per
node and per VM document, armed with pipelined asynchronous reads so that
loading thousands of entries takes one round trip's worth of latency, not
thousands.

A view that follows liveness (``liveness=True``: the coordinators, whose
fence monitors time every node's silence) also watches each node's small liveness
record, written every keepalive interval, and dates the node by it; the others see
a node's ``keepalive`` as of its document, which is written when its figures change.

A view scoped to a node (``scope="hv3"``: a node daemon that is not a coordinator) holds only
what that daemon acts on: its own node document and the VMs indexed under ``placed/<node>``
(where each VM is, and both ends of its migration), plus the cluster config, the primary and
handover records. It costs a cluster of N nodes N small watch sets instead of N full ones.
Such a view cannot place: placement reads every node (:meth:`placement_snapshot` refuses).

A reply older than what the view already holds (by ``mzxid``) is dropped, so out-of-order
completions cannot roll the view back.

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
from kazoo.exceptions import ConnectionClosedError, ConnectionLoss, NoNodeError, SessionExpiredError
from kazoo.protocol.states import Callback, EventType
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from pvccore.errors import Unavailable, ValidationError
from pvccore.domain.models import (VM, Cluster, ClusterConfig, Handover, Node, PrimaryRecord, decode_fencing,
                                   decode_keepalive, with_keepalive)
from pvccore.domain.placement import current
from pvccore.zk.connection import Connection
from pvccore.zk.schema import Schema

log = logging.getLogger(__name__)

_DECODERS = {"node": Node.from_json, "vm": VM.from_json}
_CUT_OFF = (ConnectionLoss, ConnectionClosedError, SessionExpiredError)  # a read lost with the connection


class ClusterView:
    """In-memory nodes, VMs and cluster config, current as of the last watch event."""

    def __init__(self, connection: Connection, schema: Schema, liveness: bool = True, scope: str | None = None):
        if scope is not None and liveness:
            raise ValueError("a view scoped to one node does not follow the others' liveness")
        self._connection = connection
        self._liveness = liveness
        self._scope = scope
        # Node documents as read, and each node's liveness record: (keepalive, its transaction id).
        self._node_docs: dict[str, Node] = {}
        self._live: dict[str, tuple[float, int]] = {}
        self._live_watchers: dict[str, Callable] = {}
        self._failed: set[tuple[str, str]] = set()  # reads that failed (connection trouble): done again on return
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
        # Changes taken in, by kind; "live" counts keepalives, which placement does not look at.
        self._gen = {"node": 0, "vm": 0, "config": 0, "live": 0}
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
        if self._scope is None:
            ChildrenWatch(self._client, self._schema.nodes, lambda c: self._on_children("node", c))
            ChildrenWatch(self._client, self._schema.vms, lambda c: self._on_children("vm", c))
        else:  # its own node (the daemon registered it), and the VMs indexed under it
            self._on_children("node", [self._scope])
            ChildrenWatch(self._client, self._schema.node_placed(self._scope), lambda c: self._on_children("vm", c))
        for kind, path, decode in (("config", self._schema.config, ClusterConfig.from_json),
                                   ("primary", self._schema.primary, PrimaryRecord.from_json),
                                   ("handover", self._schema.handover, Handover.from_json)):
            DataWatch(self._client, path, lambda data, stat, event=None, k=kind, d=decode: self._on_single(k, d, data))
        for kind, path in (("fencing", self._schema.fencing), ("stats", self._schema.stats)):
            if self._scope is None:
                DataWatch(self._client, path, lambda data, stat, event=None, k=kind: self._on_shown(k, data))
            else:
                self._single_seen.add(kind)  # shown by the API; nothing a node daemon acts on
        if not self.wait_until(lambda: len(self._kinds_seen) == 2 and len(self._single_seen) == 5
                               and self._pending == 0, timeout):
            raise TimeoutError(f"cluster view not loaded within {timeout:g}s")
        return self

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._connection.unsubscribe(self._on_connection)

    @property
    def scope(self) -> str | None:
        """The node this view is scoped to (None: the whole cluster)."""
        return self._scope

    @property
    def follows_liveness(self) -> bool:
        """Whether nodes are dated by their liveness records (fresh every keepalive), not only their documents."""
        return self._liveness

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after every change but a keepalive (from a kazoo thread: it must not block).

        A liveness record changes every keepalive interval on every node: a coordinator's daemon that
        reconciled on each would do nothing else in a large cluster. Its fence monitor reads them at
        its own pace, and :meth:`wait_for` callers are woken by them as by any change.
        """
        self._listeners.append(fn)

    def _changed(self, listeners: bool = True) -> None:
        # Called with the condition held.
        self._cond.notify_all()
        for fn in self._listeners if listeners else ():
            try:
                fn()
            except Exception:
                log.exception("view listener failed")

    # -- reading ----------------------------------------------------------------------

    def snapshot(self) -> Cluster:
        """An immutable picture of the cluster; rebuilt only for the parts that changed."""
        with self._cond:
            nodes = self._cached("node", (self._gen["node"], self._gen["live"]),
                                 lambda d: MappingProxyType({k: d[k] for k in sorted(d)}))
            vms = self._cached("vm", self._gen["vm"], lambda d: MappingProxyType(dict(d)))
            return Cluster(nodes=nodes, vms=vms, config=self._single["config"], primary=self._single["primary"],
                           handover=self._single["handover"])

    def placement_snapshot(self) -> Cluster:
        """:meth:`snapshot` as placement should see it (:func:`pvccore.domain.placement.current`), cached until a change."""
        if self._scope is not None:
            raise RuntimeError(f"a view scoped to node {self._scope} holds too little to place")
        with self._cond:
            key = (self._gen["node"], self._gen["vm"], self._gen["config"])
            if self._cache.get("placement", (None,))[0] != key:
                self._cache["placement"] = (key, current(self.snapshot()))
            return self._cache["placement"][1]

    def _cached(self, kind: str, gen, build: Callable[[dict], object]):
        held, value = self._cache.get(kind, (None, None))
        if held != gen:
            value = build(self._data[kind])
            self._cache[kind] = (gen, value)
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
        """A number that grows with every change the view takes in but a keepalive (see :meth:`add_listener`)."""
        with self._cond:
            return self._changes()

    def _changes(self) -> int:
        return self._gen["node"] + self._gen["vm"] + self._gen["config"]

    def wait_changed(self, since: int, timeout: float) -> int:
        """Block until :attr:`generation` differs from ``since`` (or ``timeout``); return the current one."""
        self.wait_until(lambda: self._changes() != since, timeout)
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

    def caught_up(self, timeout: float) -> bool:
        """Return once the view holds every change committed anywhere before this call: a ``sync`` brings this
        session's server up to the leader (its watch events for those changes come first), then :meth:`barrier`.
        False when that took longer than ``timeout`` (or ZooKeeper did not answer)."""
        deadline = time.monotonic() + timeout
        try:
            self._client.sync_async(self._schema.root).get(timeout=timeout)
        except Exception:  # noqa: BLE001 - cut off, or slow: the view as it stands
            return False
        return self.barrier(max(0.0, deadline - time.monotonic()))

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
        # Data watches do not survive a lost session; re-arm them all when we are back. Within one session
        # they do, but a read that failed while we were cut off armed none: read those again.
        if state == KazooState.LOST:
            self._session_lost = True
        elif state == KazooState.CONNECTED and self._session_lost:
            self._session_lost = False
            self._client.handler.spawn(self._rearm_all)
        elif state == KazooState.CONNECTED:
            self._client.handler.spawn(self._reread_failed)

    def _read_failed(self, kind: str, name: str, exc: Exception) -> None:
        if not isinstance(exc, _CUT_OFF):
            return  # (not a lost connection: reading again would fail again)
        with self._cond:
            self._failed.add((kind, name))
        if self._client.connected:  # the connection came back before the failure was noted
            self._client.handler.spawn(self._reread_failed)

    def _reread_failed(self) -> None:
        with self._cond:
            failed, self._failed = self._failed, set()
        for kind, name in failed:
            if kind == "live":
                self._fetch_live(name)
            else:
                self._fetch(kind, name)

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
            new = set()
            for name in children:
                try:
                    self._path(kind, name)
                except ValidationError:  # not a name pvc writes (a znode made by hand): nothing to follow
                    log.error("ignoring %s entry %r: not a valid name", kind, name)
                    continue
                new.add(name)
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
        if kind == "node" and self._liveness:
            self._fetch_live(name)

    def _fetch_live(self, name: str) -> None:
        watcher = self._live_watchers.get(name)
        if watcher is None:
            watcher = self._live_watchers[name] = lambda event, n=name: self._on_live_event(n)
        path = self._schema.node_keepalive(name)
        self._client.get_async(path, watch=watcher).rawlink(lambda res, n=name: self._on_live(n, path, res))

    def _on_live_event(self, name: str) -> None:
        with self._cond:
            if self._stopped or name not in self._members["node"]:
                return
        self._fetch_live(name)

    def _on_live(self, name: str, path: str, result) -> None:
        try:
            data, stat = result.get_nowait()
        except NoNodeError:
            # Not written yet (a failed read sets no watch): watch for its creation, and read it if it
            # was created between the two calls.
            watcher = self._live_watchers.get(name)
            if watcher is not None:
                self._client.exists_async(path, watch=watcher).rawlink(
                    lambda res: self._fetch_live(name) if res.successful() and res.get_nowait() else None)
            return
        except Exception as exc:  # connection trouble: read again once connected (_reread_failed)
            log.warning("reading the liveness of node %s failed: %s", name, exc)
            self._read_failed("live", name, exc)
            return
        keepalive = decode_keepalive(data)  # None (unreadable): the document's date stands, as Store.get_node has it
        with self._cond:
            if name not in self._members["node"] or stat.mzxid < self._live.get(name, (0.0, -1))[1]:
                return
            self._live[name] = (keepalive, stat.mzxid)
            self._merge(name, "live")
            self._changed(listeners=False)

    def _merge(self, name: str, kind: str = "node") -> None:
        """The node as the view shows it: its document, dated by its liveness record (:func:`with_keepalive`)."""
        doc = self._node_docs.get(name)
        if doc is None:
            return
        self._data["node"][name] = with_keepalive(doc, self._live.get(name, (None, -1))[0])
        self._gen[kind] += 1

    def _on_event(self, kind: str, name: str, event) -> None:
        with self._cond:
            if self._stopped or name not in self._members[kind]:
                return  # (a watch left on an entry the view no longer holds)
            if event.type == EventType.DELETED:
                if self._scope is None:
                    # Forget membership too, so a re-created entry is seen as new by the children watch.
                    self._members[kind].discard(name)
                    self._drop(kind, name)
                    self._changed()
                    return
                # Scoped: membership follows the index (or, for the node, the scope), not the document; a
                # document created again under an entry that stayed is noticed by a watch on its creation.
                self._forget_data(kind, name)
                self._changed()
        if event.type == EventType.DELETED:
            self._client.exists_async(self._path(kind, name), watch=self._watchers.get((kind, name)))
            return
        self._fetch(kind, name)

    def _on_data(self, kind: str, name: str, result, counted: bool) -> None:
        try:
            data, stat = result.get_nowait()
        except NoNodeError:
            data = stat = None
            if self._scope is not None:  # an index entry ahead of (or left behind by) its document
                self._client.exists_async(self._path(kind, name), watch=self._watchers.get((kind, name)))
        except Exception as exc:  # connection trouble: read again once connected (_reread_failed)
            log.warning("reading %s %s failed: %s", kind, name, exc)
            data = stat = None
            self._read_failed(kind, name, exc)
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
                        if kind == "node":
                            self._node_docs[name] = value
                            self._merge(name)
                        else:
                            self._data[kind][name] = value
                            self._gen[kind] += 1
            self._changed()

    def _drop(self, kind: str, name: str) -> None:
        self._forget_data(kind, name)
        self._watchers.pop((kind, name), None)
        if kind == "node":
            self._live.pop(name, None)
            self._live_watchers.pop(name, None)

    def _forget_data(self, kind: str, name: str) -> None:
        if self._data[kind].pop(name, None) is not None:
            self._gen[kind] += 1
        self._zxid.pop((kind, name), None)
        if kind == "node":
            self._node_docs.pop(name, None)

"""The ZooKeeper store: typed reads, compare-and-set writes, versioned transactions, locks.

Every write that depends on what was read carries the version that was read.
:meth:`Store.update_node` and friends retry a lost race a bounded number of
times by re-reading and re-applying the change; if it still loses, or a
transaction fails, :class:`ConflictError` is raised. Nothing is overwritten blind.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable, Mapping, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError, RolledBackError

from pvccore.zk import locks
from pvccore.zk.connection import Connection
from pvccore.errors import ConflictError, NotFoundError, Unavailable
from pvccore.domain.models import (VM, ClusterConfig, FenceStatus, Handover, Node, PrimaryRecord, decode_fencing,
                                   encode_fencing)
from pvccore.zk.schema import DEFAULT_ROOT, Schema

log = logging.getLogger(__name__)

M = TypeVar("M")
CAS_RETRIES = 20


class _Bounded:
    """The kazoo calls the store makes, each waiting at most ``timeout`` seconds (None: until kazoo gives up).

    kazoo's blocking calls wait until the answer comes or the connection is declared lost,
    which for a server that went silent is two thirds of the session timeout. A caller that
    must answer quickly (the API) gives a timeout and gets :class:`Unavailable` instead.
    """

    def __init__(self, client: KazooClient, timeout: float | None):
        self.client, self.timeout = client, timeout

    def _wait(self, result, what: str, write: bool = False):
        try:
            return result.get(timeout=self.timeout)
        except self.client.handler.timeout_exception:
            raise Unavailable(f"ZooKeeper did not answer within {self.timeout:g}s ({what})"
                              + ("; the change may or may not have been applied" if write else "")) from None

    def get(self, path: str):
        return self._wait(self.client.get_async(path), f"read {path}")

    def get_children(self, path: str):
        return self._wait(self.client.get_children_async(path), f"list {path}")

    def exists(self, path: str):
        return self._wait(self.client.exists_async(path), f"read {path}")

    def set(self, path: str, data: bytes, version: int = -1):
        return self._wait(self.client.set_async(path, data, version), f"write {path}", write=True)

    def create(self, path: str, data: bytes = b""):
        return self._wait(self.client.create_async(path, data), f"create {path}", write=True)

    def commit(self, txn):
        return self._wait(txn.commit_async(), "transaction", write=True)


class Transaction:
    """A ZooKeeper multi-op that raises :class:`ConflictError` if any part fails."""

    def __init__(self, zk: _Bounded):
        self._zk = zk
        self._txn = zk.client.transaction()
        self._ops: list[str] = []

    def check(self, path: str, version: int) -> "Transaction":
        self._txn.check(path, version)
        self._ops.append(f"check {path}@{version}")
        return self

    def create(self, path: str, data: bytes = b"", ephemeral: bool = False) -> "Transaction":
        self._txn.create(path, data, ephemeral=ephemeral)
        self._ops.append(f"create {path}")
        return self

    def set(self, path: str, data: bytes, version: int = -1) -> "Transaction":
        self._txn.set_data(path, data, version)
        self._ops.append(f"set {path}@{version}")
        return self

    def delete(self, path: str, version: int = -1) -> "Transaction":
        self._txn.delete(path, version)
        self._ops.append(f"delete {path}@{version}")
        return self

    def commit(self) -> list:
        results = self._zk.commit(self._txn)
        for op, result in zip(self._ops, results):
            if isinstance(result, Exception) and not isinstance(result, RolledBackError):
                raise ConflictError(f"transaction failed at {op}: {type(result).__name__}")
        return results


@dataclass(frozen=True)
class _Maybe:
    """A document that may be absent (``value`` None), for :meth:`Store._update`."""

    value: object = None

    @staticmethod
    def reader(model) -> Callable[[bytes], "_Maybe"]:
        return lambda data: _Maybe(model.from_json(data))

    def to_json(self) -> bytes:
        return self.value.to_json()


@dataclass(frozen=True)
class _Fencing:
    """The ``fencing`` document: each node's :class:`FenceStatus`."""

    statuses: Mapping[str, FenceStatus]

    @classmethod
    def from_json(cls, data: bytes) -> "_Fencing":
        return cls(decode_fencing(data) or {})

    def to_json(self) -> bytes:
        return encode_fencing(self.statuses)


class _Counters:
    """The JSON object of integer counters at ``<root>/stats``."""

    def __init__(self, counts: dict[str, int]):
        self.counts = counts

    @classmethod
    def from_json(cls, data: bytes) -> "_Counters":
        try:
            raw = json.loads(data or b"{}")
        except ValueError:
            raw = {}
        return cls({k: v for k, v in raw.items() if isinstance(v, int)} if isinstance(raw, dict) else {})

    def plus(self, name: str, by: int) -> "_Counters":
        return _Counters({**self.counts, name: self.counts.get(name, 0) + by})

    def to_json(self) -> bytes:
        return json.dumps(self.counts, sort_keys=True).encode()

    def __eq__(self, other) -> bool:
        return isinstance(other, _Counters) and other.counts == self.counts


class Store:
    """Typed access to one cluster's data under ``root``."""

    def __init__(self, connection: Connection, root: str = DEFAULT_ROOT, op_timeout: float | None = None):
        self.connection = connection
        self.client = connection.client
        self.zk = _Bounded(self.client, op_timeout)
        self.paths = Schema(root)
        self._local = threading.local()

    @property
    def last_write(self) -> tuple[str, int]:
        """``(path, zxid)`` of this thread's last update, so it can wait for the view to see it."""
        return getattr(self._local, "write", ("", -1))

    @classmethod
    def connect(cls, hosts: str, root: str = DEFAULT_ROOT, timeout: float = 10.0, auth: str | None = None,
                op_timeout: float | None = None, **kwargs) -> "Store":
        """A store on a new session (:meth:`Connection.open`), with the layout made sure of.

        ``op_timeout`` bounds each read and write (see :class:`_Bounded`).
        """
        store = cls(Connection.open(hosts, timeout, auth, **kwargs), root, op_timeout)
        store.ensure_layout()
        return store

    def close(self) -> None:
        self.connection.close()

    def ensure_layout(self) -> None:
        for path in self.paths.containers():
            self.client.ensure_path(path)
        for path, data in ((self.paths.config, ClusterConfig().to_json()), (self.paths.stats, b"{}")):
            try:
                self.zk.create(path, data)
            except NodeExistsError:
                pass

    def transaction(self) -> Transaction:
        return Transaction(self.zk)

    # -- generic compare-and-set ------------------------------------------------

    def _read(self, path: str, decode: Callable[[bytes], M], what: str) -> tuple[M, int]:
        return self._read_stat(path, decode, what)[0:2]

    def _read_stat(self, path: str, decode: Callable[[bytes], M], what: str):
        try:
            data, stat = self.zk.get(path)
        except NoNodeError:
            raise NotFoundError(f"{what} not found") from None
        return decode(data), stat.version, stat.mzxid

    def _update(self, path: str, decode: Callable[[bytes], M], fn: Callable[[M], M], what: str,
                absent: Callable[[], M] | None = None) -> M:
        """The one compare-and-set: read, apply ``fn``, write back only if nobody wrote in between.

        A lost race is retried from a fresh read (``fn`` runs again, so it may re-check and raise).
        ``absent`` gives the value of a missing znode, which is then created (a race to create it is
        lost like any other); without it a missing znode is :class:`NotFoundError`.
        """
        for _ in range(CAS_RETRIES):
            try:
                current, version, zxid = self._read_stat(path, decode, what)
            except NotFoundError:
                if absent is None:
                    raise
                current, version, zxid = absent(), None, -1
            new = fn(current)
            if new is None or new == current:
                self._local.write = (path, zxid)  # nothing written: what was read is what to wait for
                return current
            try:
                if version is None:
                    self.zk.create(path, new.to_json())
                    self._local.write = (path, -1)
                else:
                    self._local.write = (path, self.zk.set(path, new.to_json(), version=version).mzxid)
                return new
            except (BadVersionError, NodeExistsError):
                log.debug("lost a compare-and-set race on %s, retrying", path)
            except NoNodeError:
                if absent is None:
                    raise NotFoundError(f"{what} not found") from None
        raise ConflictError(f"{what}: gave up after {CAS_RETRIES} conflicting concurrent updates")

    # -- cluster config ----------------------------------------------------------

    def get_config(self) -> ClusterConfig:
        return self._read(self.paths.config, ClusterConfig.from_json, "cluster config")[0]

    def update_config(self, fn: Callable[[ClusterConfig], ClusterConfig]) -> ClusterConfig:
        return self._update(self.paths.config, ClusterConfig.from_json, fn, "cluster config")

    # -- counters ------------------------------------------------------------------

    def get_stats(self) -> dict[str, int]:
        return self._read(self.paths.stats, _Counters.from_json, "stats")[0].counts

    def count(self, name: str, by: int = 1) -> None:
        """Add ``by`` to the cluster-wide counter ``name`` (compare-and-set, never lost)."""
        self._update(self.paths.stats, _Counters.from_json, lambda c: c.plus(name, by), "stats")

    # -- primary coordinator and handovers ---------------------------------------------

    def get_primary(self) -> PrimaryRecord | None:
        try:
            return self._read(self.paths.primary, PrimaryRecord.from_json, "primary")[0]
        except NotFoundError:
            return None

    def claim_primary(self, node: str, allowed: Callable[[PrimaryRecord | None], bool]) -> PrimaryRecord | None:
        """Make ``node`` primary if ``allowed(current record)``; None if not allowed or another node won the race."""

        ours: list[_Maybe] = []

        def claim(current: _Maybe) -> _Maybe:
            if not allowed(current.value):
                return current
            epoch = current.value.epoch + 1 if current.value else 1
            ours.append(_Maybe(PrimaryRecord(node=node, epoch=epoch, since=time.time())))
            return ours[-1]

        try:
            result = self._update(self.paths.primary, _Maybe.reader(PrimaryRecord), claim, "primary", _Maybe)
        except ConflictError:  # lost every race: others are claiming it
            return None
        return result.value if ours and result is ours[-1] else None

    def start_handover(self, handover: Handover) -> Handover:
        """Record a new handover request; refused while another one is under way."""

        def start(current: _Maybe) -> _Maybe:
            if current.value is not None and current.value.active:
                raise ConflictError(f"a handover from {current.value.source} to {current.value.target} is under way "
                                    f"({current.value.phase})", "state")
            return _Maybe(handover)

        self._update(self.paths.handover, _Maybe.reader(Handover), start, "handover", _Maybe)
        return handover

    def get_handover(self) -> Handover | None:
        try:
            return self._read(self.paths.handover, Handover.from_json, "handover")[0]
        except NotFoundError:
            return None

    def update_handover(self, fn: Callable[[Handover], Handover]) -> Handover:
        return self._update(self.paths.handover, Handover.from_json, fn, "handover")

    # -- fencing ---------------------------------------------------------------------------

    def get_fence_config(self, node: str) -> list[dict]:
        try:
            data, _ = self.zk.get(self.paths.node_fence(node))
        except NoNodeError:
            return []
        return decode_fence_config(data)

    def set_fence_config(self, node: str, entries: list[dict]) -> None:
        self.get_node(node)  # NotFoundError for an unknown node
        data = json.dumps(entries, sort_keys=True).encode()
        try:
            self.zk.set(self.paths.node_fence(node), data)
        except NoNodeError:
            self.zk.create(self.paths.node_fence(node), data)

    def get_fencing(self) -> dict[str, FenceStatus]:
        """Each node's fence status (outcome, attempts, message, times, an operator's confirmation)."""
        try:
            return dict(self._read(self.paths.fencing, _Fencing.from_json, "fence status")[0].statuses)
        except NotFoundError:
            return {}

    def update_fencing(self, node: str, fn: Callable[[FenceStatus | None], FenceStatus | None]) -> FenceStatus | None:
        """Change (None: clear) a node's fence status, compare-and-set; return it as written."""

        def update(doc: _Fencing) -> _Fencing:
            new = fn(doc.statuses.get(node))
            rest = {k: v for k, v in doc.statuses.items() if k != node}
            return _Fencing(rest if new is None else {**rest, node: new})

        return self._update(self.paths.fencing, _Fencing.from_json, update, "fence status",
                            lambda: _Fencing({})).statuses.get(node)

    def set_fencing(self, node: str, status: FenceStatus | None) -> None:
        self.update_fencing(node, lambda _current: status)

    # -- nodes -------------------------------------------------------------------

    def node_names(self) -> list[str]:
        return sorted(self.zk.get_children(self.paths.nodes))

    def get_node(self, name: str) -> Node:
        return self._read(self.paths.node(name), Node.from_json, f"node {name!r}")[0]

    def list_nodes(self) -> list[Node]:
        """Read every node one by one (what the watched view exists to avoid)."""
        out = []
        for name in self.node_names():
            try:
                out.append(self.get_node(name))
            except NotFoundError:
                continue
        return out

    def create_node(self, node: Node) -> Node:
        try:
            self.zk.create(self.paths.node(node.name), node.to_json())
        except NodeExistsError:
            raise ConflictError(f"node {node.name!r} already exists", "name") from None
        return node

    def update_node(self, name: str, fn: Callable[[Node], Node]) -> Node:
        return self._update(self.paths.node(name), Node.from_json, fn, f"node {name!r}")

    def ensure_ephemeral(self, path: str) -> None:
        """Create ``path`` as an ephemeral znode of this session (one left by an earlier session is replaced)."""
        try:
            self.client.create(path, b"", ephemeral=True)
        except NodeExistsError:
            # Left by our previous session (killed before it expired): replace it with ours.
            self.client.delete(path)
            self.client.create(path, b"", ephemeral=True)

    def drop_ephemeral(self, path: str) -> None:
        """Remove an ephemeral znode of this session now (gone already: nothing to do)."""
        try:
            self.client.delete(path)
        except NoNodeError:
            pass

    # -- VMs -----------------------------------------------------------------------

    def vm_names(self) -> list[str]:
        return sorted(self.zk.get_children(self.paths.vms))

    def get_vm(self, name: str) -> VM:
        return self._read(self.paths.vm(name), VM.from_json, f"VM {name!r}")[0]

    def get_vm_xml(self, name: str) -> str:
        return self._read(self.paths.vm_xml(name), bytes.decode, f"VM {name!r}")[0]

    def list_vms(self) -> list[VM]:
        out = []
        for name in self.vm_names():
            try:
                out.append(self.get_vm(name))
            except NotFoundError:
                continue
        return out

    def create_vm(self, vm: VM, xml: str) -> VM:
        """Create the VM document and its XML together, or neither."""
        try:
            (self.transaction()
             .create(self.paths.vm(vm.name), vm.to_json())
             .create(self.paths.vm_xml(vm.name), xml.encode())
             .commit())
        except ConflictError:
            raise ConflictError(f"VM {vm.name!r} already exists", "name") from None
        return vm

    def update_vm(self, name: str, fn: Callable[[VM], VM]) -> VM:
        return self._update(self.paths.vm(name), VM.from_json, fn, f"VM {name!r}")

    def replace_vm_xml(self, name: str, xml: str, update: Callable[[VM], VM]) -> VM:
        """Write new XML and the VM document ``update`` derives, together, if the VM is unchanged since read."""
        vm, version = self._read(self.paths.vm(name), VM.from_json, f"VM {name!r}")
        new = update(vm)
        (self.transaction()
         .set(self.paths.vm(name), new.to_json(), version)
         .set(self.paths.vm_xml(name), xml.encode())
         .commit())
        return new

    def delete_vm(self, name: str, check: Callable[[VM], None] | None = None) -> None:
        """Delete a VM, only if its document is unchanged since ``check`` approved it."""
        vm, version = self._read(self.paths.vm(name), VM.from_json, f"VM {name!r}")
        if check:
            check(vm)
        (self.transaction()
         .delete(self.paths.vm_xml(name))
         .delete(self.paths.vm(name), version)
         .commit())

    # -- locks -----------------------------------------------------------------------

    def lock(self, name: str, *, kind: str = "exclusive", timeout: float = 30.0,
             identifier: str | None = None) -> AbstractContextManager:
        """``with store.lock("fence", timeout=5): ...``; raises LockTimeout.

        With an operation timeout (the API), ZooKeeper must first answer a read within it
        (:class:`Unavailable` otherwise): kazoo's lock recipe waits on a silent server without
        a bound, and retries through a whole outage.
        """
        path = self.paths.lock(name)
        if self.zk.timeout is not None:
            self.zk.exists(path)
        return locks.hold(self.client, path, kind=kind, timeout=timeout, identifier=identifier)

    def acquire(self, name: str, *, kind: str = "exclusive", timeout: float = 30.0, identifier: str | None = None):
        """Take lock ``name`` and return it, for a lock held across several steps (``.release()`` when done)."""
        return locks.acquire(self.client, self.paths.lock(name), kind=kind, timeout=timeout, identifier=identifier)

    def read_lock(self, name: str, **kwargs) -> AbstractContextManager:
        return self.lock(name, kind="read", **kwargs)

    def write_lock(self, name: str, **kwargs) -> AbstractContextManager:
        return self.lock(name, kind="write", **kwargs)

    def lock_contenders(self, name: str, kind: str = "exclusive") -> list[str]:
        return locks.holders(self.client, self.paths.lock(name), kind)


def decode_fence_config(data: bytes | None) -> list[dict]:
    """A node's stored fence configuration (a JSON list of entries; none when absent or not a list)."""
    entries = json.loads(data or b"[]")
    return entries if isinstance(entries, list) else []


def delete_tree(client: KazooClient, path: str) -> None:
    """Remove ``path`` and everything under it (test and demo clean-up)."""
    try:
        client.delete(path, recursive=True)
    except NoNodeError:
        pass

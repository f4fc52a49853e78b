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
from pvccore.errors import ConflictError, NotFoundError, Unavailable, ValidationError
from pvccore.domain.models import (FAULT_ID_RE, VM, ClusterConfig, Fault, FenceStatus, Handover, Node, PrimaryRecord,
                                   decode_fencing, decode_keepalive, encode_fencing, encode_keepalive, with_keepalive)
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

    def get_all(self, *paths: str) -> list:
        """Reads sent together (one round trip for all): each ``(data, stat)``, or None where the znode is absent."""
        return self._together(self.client.get_async, paths, "read")

    def get_children_all(self, paths) -> list:
        """Children lists read together (one round trip for all), None where the znode is absent."""
        return self._together(self.client.get_children_async, paths, "list")

    def _together(self, call, paths, verb: str) -> list:
        pending = [(path, call(path)) for path in paths]
        out = []
        for path, result in pending:
            try:
                out.append(self._wait(result, f"{verb} {path}"))
            except NoNodeError:
                out.append(None)
        return out

    def get_children(self, path: str):
        return self._wait(self.client.get_children_async(path), f"list {path}")

    def exists(self, path: str):
        return self._wait(self.client.exists_async(path), f"read {path}")

    def set(self, path: str, data: bytes, version: int = -1):
        return self._wait(self.client.set_async(path, data, version), f"write {path}", write=True)

    def create(self, path: str, data: bytes = b""):
        return self._wait(self.client.create_async(path, data), f"create {path}", write=True)

    def delete(self, path: str):
        return self._wait(self.client.delete_async(path), f"delete {path}", write=True)

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

    def attempt(self) -> list:
        """Commit; each operation's result, a failed one's exception in its place (all or nothing applied)."""
        return self._zk.commit(self._txn)

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
        self._own_versions: dict[str, int] = {}  # node -> version of the document this store last published

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

    # -- faults --------------------------------------------------------------------------

    def get_faults(self) -> dict[str, Fault]:
        """Every fault record (pvccore.domain.faults), by id; an unreadable one is left out."""
        try:
            names = self.zk.get_children(self.paths.faults)
        except NoNodeError:
            return {}
        names = [n for n in names if FAULT_ID_RE.fullmatch(n)]
        out = {}
        for name, got in zip(names, self.zk.get_all(*(self.paths.fault(n) for n in names))):
            if got is None:
                continue
            try:
                out[name] = Fault.from_json(got[0])
            except ValidationError:
                log.warning("fault record %s is unreadable; left out", name)
        return out

    def update_fault(self, fault_id: str, fn: Callable[[Fault | None], Fault | None]) -> Fault | None:
        """Compare-and-set one fault record (created when absent); ``fn`` returning None writes nothing."""
        return self._update(self.paths.fault(fault_id), Fault.from_json, fn, f"fault {fault_id}", lambda: None)

    def delete_fault(self, fault_id: str) -> None:
        try:
            self.zk.delete(self.paths.fault(fault_id))
        except NoNodeError:
            raise NotFoundError(f"fault {fault_id!r} not found") from None

    # -- logs ------------------------------------------------------------------------------

    def set_log(self, path: str, text: str) -> None:
        """Write a log's tail (``logs/<node>``, ``consoles/<vm>``): last writer wins, it is only shown."""
        data = text.encode()
        try:
            self.zk.set(path, data)
        except NoNodeError:
            try:
                self.zk.create(path, data)
            except NodeExistsError:
                self.zk.set(path, data)

    def get_log(self, path: str) -> tuple[str, float] | None:
        """A log's text and when it was last written (epoch seconds), or None when none was."""
        got = self.zk.get_all(path)[0]
        return None if got is None else (got[0].decode(errors="replace"), got[1].mtime / 1000.0)

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
        """The node's document, dated by its liveness record (:func:`with_keepalive`)."""
        doc, live = self.zk.get_all(self.paths.node(name), self.paths.node_keepalive(name))
        if doc is None:
            raise NotFoundError(f"node {name!r} not found")
        return with_keepalive(Node.from_json(doc[0]), decode_keepalive(live[0]) if live else None)

    def publish_node(self, name: str, fn: Callable[[Node], Node], at: float) -> Node:
        """A node daemon's write of its own document (compare-and-set with ``fn``, as :meth:`update_node`) and
        of its liveness record, dated ``at``, in one transaction: the record is always the node's latest
        keepalive, and nobody else's write to the document re-dates the node."""
        path, live, data = self.paths.node(name), self.paths.node_keepalive(name), encode_keepalive(at)
        create = False
        for _ in range(CAS_RETRIES):
            current, version, _zxid = self._read_stat(path, Node.from_json, f"node {name!r}")
            new = fn(current)
            txn = self.transaction().set(path, new.to_json(), version)
            (txn.create if create else txn.set)(live, data)
            results = txn.attempt()
            failed = _first_failure(results)
            if failed is None:
                self._own_versions[name] = results[0].version
                self._local.write = (path, results[0].mzxid)
                return new
            at_op, error = failed
            if at_op == 0 and isinstance(error, NoNodeError):
                raise NotFoundError(f"node {name!r} not found")
            if at_op == 1 and isinstance(error, (NoNodeError, NodeExistsError)):
                create = isinstance(error, NoNodeError)  # the first record, or one made meanwhile
            elif not (at_op == 0 and isinstance(error, BadVersionError)):
                raise ConflictError(f"publishing node {name!r} failed: {type(error).__name__}")
        raise ConflictError(f"node {name!r}: gave up after {CAS_RETRIES} conflicting concurrent updates")

    def write_keepalive(self, name: str, at: float) -> bool:
        """Node ``name``'s liveness record, dated ``at``: one small write, made only while the node's document is
        the one this store last published. Whether it was written: not when another writer changed the
        document meanwhile (the primary declared the node dead, say), which the node must read and answer
        with :meth:`publish_node`."""
        version = self._own_versions.get(name)
        if version is None:
            return False
        path, live, data = self.paths.node(name), self.paths.node_keepalive(name), encode_keepalive(at)
        for create in (False, True):
            txn = self.transaction().check(path, version)
            (txn.create if create else txn.set)(live, data)
            failed = _first_failure(txn.attempt())
            if failed is None:
                return True
            at_op, error = failed
            if at_op == 0 or not isinstance(error, NoNodeError):
                return False
        return False

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
        self.discard(path)

    def discard(self, path: str) -> None:
        """Delete a znode that has no children, if it is there."""
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
        if self._write_vm(vm.name, None, vm, None, xml) is None:
            raise ConflictError(f"VM {vm.name!r} already exists", "name")
        return vm

    def update_vm(self, name: str, fn: Callable[[VM], VM]) -> VM:
        """The compare-and-set of a VM document (as :meth:`_update`), its index entries following it."""
        path = self.paths.vm(name)
        for _ in range(CAS_RETRIES):
            current, version, zxid = self._read_stat(path, VM.from_json, f"VM {name!r}")
            new = fn(current)
            if new is None or new == current:
                self._local.write = (path, zxid)  # nothing written: what was read is what to wait for
                return current
            if self._write_vm(name, current, new, version) is not None:
                return new
            log.debug("lost a compare-and-set race on %s, retrying", path)
        raise ConflictError(f"VM {name!r}: gave up after {CAS_RETRIES} conflicting concurrent updates")

    def replace_vm_xml(self, name: str, xml: str, update: Callable[[VM], VM]) -> VM:
        """Write new XML and the VM document ``update`` derives, together, if the VM is unchanged since read."""
        vm, version = self._read(self.paths.vm(name), VM.from_json, f"VM {name!r}")
        new = update(vm)
        if self._write_vm(name, vm, new, version, xml) is None:
            raise ConflictError(f"VM {name!r} changed meanwhile; try again")
        return new

    def delete_vm(self, name: str, check: Callable[[VM], None] | None = None) -> None:
        """Delete a VM, only if its document is unchanged since ``check`` approved it."""
        vm, version = self._read(self.paths.vm(name), VM.from_json, f"VM {name!r}")
        if check:
            check(vm)
        if self._write_vm(name, vm, None, version) is None:
            raise ConflictError(f"VM {name!r} changed meanwhile; try again")
        self.discard(self.paths.vm_console(name))  # its console's tail goes with it

    def rename_vm(self, name: str, rename: Callable[[VM, str], tuple[VM, str]]) -> VM:
        """Give a VM another name in one transaction: its document, XML and index entries move, or nothing does.
        ``rename(vm, xml)`` gives the renamed VM and XML (and may refuse).

        :raises ConflictError: the VM changed meanwhile, or the new name is taken.
        """
        vm, version = self._read(self.paths.vm(name), VM.from_json, f"VM {name!r}")
        new, xml = rename(vm, self.get_vm_xml(name))
        if self._write_vm(name, vm, new, version, xml, new_name=new.name) is None:
            raise ConflictError(f"VM {name!r} changed meanwhile, or VM {new.name!r} exists already", "name")
        self.discard(self.paths.vm_console(name))
        return new

    def _write_vm(self, name: str, old: VM | None, new: VM | None, version: int | None, xml: str | None = None,
                  new_name: str | None = None):
        """One transaction: the VM document created (``old`` None), set at ``version``, deleted (``new``
        None), or moved to ``new_name`` (with its XML), with its XML when given, and its index entries
        (``placed/<node>/<vm>``) following :attr:`VM.involved`. The document's new stat (an empty tuple
        for a deletion or a rename), or None when the document was not as expected (another writer won,
        or it exists already)."""
        path, xml_path = self.paths.vm(name), self.paths.vm_xml(name)
        renamed = new_name is not None and new_name != name
        before = {(n, name) for n in old.involved} if old is not None else set()
        after = {(n, new_name or name) for n in new.involved} if new is not None else set()
        # Index entries found already there (left by a write around the store), or already gone. One already
        # there is deleted and created again, so that its node's children watch fires as for a new one.
        present, absent = set(), set()
        for _ in range(CAS_RETRIES):
            txn = self.transaction()
            if old is None:
                txn.create(path, new.to_json())
                txn.create(xml_path, xml.encode())
            elif new is None or renamed:
                txn.delete(xml_path)
                txn.delete(path, version)
                if renamed:
                    txn.create(self.paths.vm(new_name), new.to_json())
                    txn.create(self.paths.vm_xml(new_name), xml.encode())
            else:
                txn.set(path, new.to_json(), version)
                if xml is not None:
                    txn.set(xml_path, xml.encode())
            entries = [op for e in sorted(after - before)
                       for op in ((("delete", e), ("create", e)) if e in present else (("create", e),))] \
                + [("delete", e) for e in sorted(before - after - absent)]
            for op, (node, vm_name) in entries:
                getattr(txn, op)(self.paths.placed_vm(node, vm_name))
            results = txn.attempt()
            failed = _first_failure(results)
            if failed is None:
                stat = results[0] if old is not None and new is not None and not renamed else None
                self._local.write = (path, stat.mzxid if stat is not None else -1)
                return stat if stat is not None else ()
            at, error = failed
            head = len(results) - len(entries)
            if at < head:  # the document itself: not as expected
                if isinstance(error, (BadVersionError, NodeExistsError, NoNodeError)):
                    if isinstance(error, NoNodeError) and old is not None:
                        raise NotFoundError(f"VM {name!r} not found")
                    return None
                raise ConflictError(f"writing VM {name!r} failed: {type(error).__name__}")
            op, entry = entries[at - head]
            node = entry[0]
            if op == "create" and isinstance(error, NodeExistsError):
                present.add(entry)
            elif op == "delete" and isinstance(error, NoNodeError):
                (present.discard if entry in present else absent.add)(entry)
            elif op == "create" and isinstance(error, NoNodeError):
                self.client.ensure_path(self.paths.node_placed(node))  # a node never registered (yet)
            else:
                raise ConflictError(f"indexing VM {name!r} on node {node!r} failed: {type(error).__name__}")
        raise ConflictError(f"VM {name!r}: its index entries kept changing under us")

    def index_vms(self, vms) -> int:
        """Create the index entries the VMs ``vms`` should have and lack (a cluster written before the index
        existed, or a document written around the store); how many. It never deletes one: an entry that is
        not needed only costs its node a watch, and one deleted in a race with a writer would hide a VM
        from its node."""
        nodes = sorted({n for vm in vms for n in vm.involved})
        listed = self.zk.get_children_all([self.paths.node_placed(n) for n in nodes])
        have = {n: set(children or ()) for n, children in zip(nodes, listed)}
        made = 0
        for vm in vms:
            for node in vm.involved - {n for n in have if vm.name in have[n]}:
                self.client.ensure_path(self.paths.placed_vm(node, vm.name))
                made += 1
        return made

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


def _first_failure(results: list) -> tuple[int, Exception] | None:
    """The operation that made a transaction fail, and why (the others answer RolledBack or RuntimeInconsistency)."""
    for i, result in enumerate(results):
        if isinstance(result, Exception) and not isinstance(result, RolledBackError):
            return i, result
    return None


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

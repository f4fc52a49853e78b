"""In-memory stand-ins for ZooKeeper (store and view in one) and libvirt, for unit tests of the node daemon's parts.

They keep the contracts the parts rely on: compare-and-set updates that re-apply the change on a fresh
read, a view that wakes waiters on every change, read and write locks that exclude each other, and a
hypervisor whose domains run or not. What they leave out (sessions, watches, latency, real guests) is
what the service and cluster-in-a-box tiers test with the real parts.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import MappingProxyType

from pvccore import hookimpl
from pvccore.config import DaemonConfig
from pvccore.domain.models import VM, Cluster, ClusterConfig, FenceStatus, Handover, Node, PrimaryRecord
from pvccore.domain.placement import current
from pvccore.errors import ConflictError, LockTimeout, NotFoundError
from pvccore.node.context import NodeContext
from pvccore.node.hypervisor import Domain, HypervisorError
from pvccore.plugins import PluginSet, load_plugins
from pvccore.zk.schema import Schema

import pvcplugins.selectors.mem as mem_selector


class _Connection:
    connected = True

    def __init__(self):
        self.subscribers = []

    def subscribe(self, fn):
        self.subscribers.append(fn)

    def unsubscribe(self, fn):
        self.subscribers.remove(fn)


class _RWLock:
    """One named lock: ``write``/``exclusive`` holders exclude everyone, ``read`` holders exclude writers."""

    def __init__(self, cond: threading.Condition):
        self.cond, self.readers, self.writer = cond, 0, False

    def acquire(self, kind: str, timeout: float):
        reading = kind == "read"
        with self.cond:
            if not self.cond.wait_for(lambda: not self.writer and (reading or self.readers == 0), timeout):
                raise LockTimeout(f"timed out after {timeout:g}s waiting for the {kind} lock")
            if reading:
                self.readers += 1
            else:
                self.writer = True
        released = []

        class Held:
            def release(held):
                with self.cond:
                    if released:
                        return
                    released.append(True)
                    if reading:
                        self.readers -= 1
                    else:
                        self.writer = False
                    self.cond.notify_all()

        return Held()


class MemoryCluster:
    """A cluster in memory: the store's and the view's methods on one object, every write seen at once."""

    def __init__(self, config: ClusterConfig | None = None):
        self.cond = threading.Condition(threading.RLock())
        self.nodes: dict[str, Node] = {}
        self.vms: dict[str, VM] = {}
        self.xml: dict[str, str] = {}
        self.config = config or ClusterConfig()
        self.primary: PrimaryRecord | None = None
        self.handover: Handover | None = None
        self.fencing: dict[str, FenceStatus] = {}
        self.fence_config: dict[str, list[dict]] = {}
        self.stats: dict[str, int] = {}
        self.generation = 0
        self.history: list[tuple[str, str, object]] = []  # (kind, name, value) of every write, in order
        self.connection = _Connection()
        self.client = self.connection
        self.paths = Schema("/fake")
        self._locks: dict[str, _RWLock] = {}
        self.last_write = ("", 0)

    # -- writes ------------------------------------------------------------------------------

    def _wrote(self, kind: str, name: str, value) -> None:
        self.generation += 1
        self.history.append((kind, name, value))
        self.last_write = (kind, self.generation)
        self.cond.notify_all()

    def add_node(self, node: Node) -> Node:
        with self.cond:
            self.nodes[node.name] = node
            self._wrote("node", node.name, node)
        return node

    def add_vm(self, vm: VM, xml: str = "<domain/>") -> VM:
        with self.cond:
            self.vms[vm.name], self.xml[vm.name] = vm, xml
            self._wrote("vm", vm.name, vm)
        return vm

    def _update(self, table: dict, kind: str, name: str, fn):
        with self.cond:
            if name not in table:
                raise NotFoundError(f"{kind} {name!r} not found")
            old = table[name]
            new = fn(old)
            if new != old:
                table[name] = new
                self._wrote(kind, name, new)
            return new

    def update_vm(self, name, fn):
        return self._update(self.vms, "vm", name, fn)

    def update_node(self, name, fn):
        return self._update(self.nodes, "node", name, fn)

    def publish_node(self, name, fn, at):
        return self._update(self.nodes, "node", name, fn)

    def write_keepalive(self, name, at):
        """The liveness record, as a view that follows liveness shows it: the node dated anew."""
        with self.cond:
            if name not in self.nodes:
                raise NotFoundError(f"node {name!r} not found")
            self.nodes[name] = replace(self.nodes[name], keepalive=at)
            self._wrote("keepalive", name, at)
            return True

    def index_vms(self, vms):
        return 0  # (no index: views of this cluster are never scoped)

    def create_node(self, node):
        with self.cond:
            if node.name in self.nodes:
                raise ConflictError(f"node {node.name!r} already exists", "name")
            return self.add_node(node)

    def update_handover(self, fn):
        with self.cond:
            if self.handover is None:
                raise NotFoundError("handover not found")
            new = fn(self.handover)
            if new != self.handover:
                self.handover = new
                self._wrote("handover", new.id, new)
            return new

    def start_handover(self, handover: Handover) -> Handover:
        with self.cond:
            if self.handover is not None and self.handover.active:
                raise ConflictError("a handover is under way", "state")
            self.handover = handover
            self._wrote("handover", handover.id, handover)
            return handover

    def claim_primary(self, node, allowed):
        with self.cond:
            if not allowed(self.primary):
                return None
            self.primary = PrimaryRecord(node, (self.primary.epoch if self.primary else 0) + 1, time.time())
            self._wrote("primary", node, self.primary)
            return self.primary

    def set_fencing(self, node, status):
        self.update_fencing(node, lambda _old: status)

    def update_fencing(self, node, fn):
        with self.cond:
            new = fn(self.fencing.get(node))
            if new is None:
                self.fencing.pop(node, None)
            else:
                self.fencing[node] = new
            self._wrote("fencing", node, new)
            return new

    def count(self, name, by=1):
        with self.cond:
            self.stats[name] = self.stats.get(name, 0) + by

    def ensure_ephemeral(self, path):
        pass

    def discard(self, path):
        pass

    def drop_ephemeral(self, path):
        pass

    # -- reads ---------------------------------------------------------------------------------

    def get_vm(self, name):
        with self.cond:
            if name not in self.vms:
                raise NotFoundError(f"VM {name!r} not found")
            return self.vms[name]

    def get_node(self, name):
        with self.cond:
            if name not in self.nodes:
                raise NotFoundError(f"node {name!r} not found")
            return self.nodes[name]

    def get_vm_xml(self, name):
        return self.xml[name]

    def get_config(self):
        return self.config

    def get_handover(self):
        return self.handover

    def get_primary(self):
        return self.primary

    def get_fencing(self):
        with self.cond:
            return dict(self.fencing)

    def get_fence_config(self, node):
        return self.fence_config.get(node, [])

    # -- the view's side ------------------------------------------------------------------------

    def snapshot(self) -> Cluster:
        with self.cond:
            return Cluster(nodes=MappingProxyType(dict(sorted(self.nodes.items()))), vms=MappingProxyType(dict(self.vms)),
                           config=self.config, primary=self.primary, handover=self.handover)

    def placement_snapshot(self) -> Cluster:
        return current(self.snapshot())

    def shown(self, kind: str) -> dict:
        with self.cond:
            return dict(self.fencing) if kind == "fencing" else dict(self.stats)

    def node(self, name):
        with self.cond:
            return self.nodes.get(name)

    def vm(self, name):
        with self.cond:
            return self.vms.get(name)

    def wait_until(self, condition, timeout) -> bool:
        with self.cond:
            return self.cond.wait_for(condition, timeout)

    def wait_for(self, predicate, timeout) -> bool:
        return self.wait_until(lambda: predicate(self.snapshot()), timeout)

    def wait_seen(self, kind, name, zxid, timeout=10.0) -> bool:
        return True  # every write is seen at once

    def wait_changed(self, since, timeout) -> int:
        self.wait_until(lambda: self.generation != since, timeout)
        return self.generation

    def caught_up(self, timeout) -> bool:
        return True  # every write is seen at once here

    def barrier(self, timeout=10.0) -> bool:
        return True

    def add_listener(self, fn):
        pass

    # -- locks -----------------------------------------------------------------------------------

    def acquire(self, name, *, kind="exclusive", timeout=30.0, identifier=None):
        with self.cond:
            lock = self._locks.setdefault(name, _RWLock(self.cond))
        return lock.acquire(kind, timeout)

    @contextmanager
    def lock(self, name, *, kind="exclusive", timeout=30.0, identifier=None):
        held = self.acquire(name, kind=kind, timeout=timeout)
        try:
            yield
        finally:
            held.release()

    # -- what tests look at ----------------------------------------------------------------------

    def written(self, kind: str, name: str) -> list:
        with self.cond:
            return [value for k, n, value in self.history if k == kind and n == name]


class FakeHypervisor:
    """A node's libvirt: domains by name, running or not; a live migration moves one to the target's fake."""

    registry: dict[str, "FakeHypervisor"] = {}

    def __init__(self, name: str, memory_mib: int = 8192, cpus: int = 8, live: bool = True):
        self.name, self.memory_mib, self.cpus, self.live = name, memory_mib, cpus, live
        self.running: dict[str, tuple[int, int]] = {}  # VM -> (memory MiB, vCPUs)
        self.defined: set[str] = set()
        self.fail_start: dict[str, str] = {}  # VM -> error to raise on start
        self.fail_migrate = ""
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        FakeHypervisor.registry[f"fake://{name}"] = self

    @property
    def uri(self) -> str:
        return f"fake://{self.name}"

    def can_live_migrate(self) -> bool:
        return self.live

    def domains(self) -> dict[str, Domain]:
        with self.lock:
            names = self.defined | set(self.running)
            return {n: Domain(n, n in self.running, *self.running.get(n, (0, 0))) for n in names}

    def figures(self, domains=None) -> dict:
        with self.lock:
            used = sum(m for m, _ in self.running.values())
            return {"memory_total_mib": self.memory_mib, "memory_free_mib": self.memory_mib - used,
                    "memory_used_mib": used, "cpu_count": self.cpus, "load_1m": 0.0,
                    "vcpus_allocated": sum(c for _, c in self.running.values()),
                    "running_vms": tuple(sorted(self.running))}

    def run(self, name: str, memory_mib: int = 512, vcpus: int = 1) -> None:
        with self.lock:
            self.running[name] = (memory_mib, vcpus)
            self.defined.add(name)

    def start(self, name: str, xml: str) -> None:
        self.calls.append(("start", name))
        if name in self.fail_start:
            raise HypervisorError(self.fail_start[name])
        self.run(name)

    def destroy(self, name: str) -> None:
        self.calls.append(("destroy", name))
        with self.lock:
            self.running.pop(name, None)

    def shutdown(self, name: str, timeout: float, stopping=None) -> bool:
        self.calls.append(("shutdown", name))
        with self.lock:
            self.running.pop(name, None)
        return True

    def undefine(self, name: str) -> None:
        self.calls.append(("undefine", name))
        with self.lock:
            self.running.pop(name, None)
            self.defined.discard(name)

    def migrate_live(self, name: str, dest_uri: str, timeout: float, max_downtime_ms: int = 0) -> None:
        self.calls.append(("migrate_live", name))
        self.max_downtime = max_downtime_ms
        if self.fail_migrate:
            raise HypervisorError(self.fail_migrate)
        with self.lock:
            size = self.running.pop(name)
            self.defined.discard(name)
        FakeHypervisor.registry[dest_uri].run(name, *size)


@dataclass
class FakeNetwork:
    """Floating IPs per node, and the order in which nodes added and removed them."""

    node: str
    log: list

    def add(self, fip, count, interval):
        self.log.append(("add", self.node, str(fip)))

    def remove(self, fip):
        self.log.append(("remove", self.node, str(fip)))

    def present(self, fip):
        return False


class Recorder:
    """A plugin that keeps every lifecycle notification with all of its spec's arguments."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.lock = threading.Lock()

    def _keep(self, hook: str, **kwargs) -> None:
        with self.lock:
            self.calls.append((hook, kwargs))

    def of(self, hook: str) -> list[dict]:
        with self.lock:
            return [kw for h, kw in self.calls if h == hook]

    @hookimpl
    def pvc_node_started(self, node, config):
        self._keep("pvc_node_started", node=node, config=config)

    @hookimpl
    def pvc_node_stopped(self, node):
        self._keep("pvc_node_stopped", node=node)

    @hookimpl
    def pvc_node_state_changed(self, node, kind, old, new):
        self._keep("pvc_node_state_changed", node=node, kind=kind, old=old, new=new)

    @hookimpl
    def pvc_vm_state_changed(self, vm, node, old, new, reason):
        self._keep("pvc_vm_state_changed", vm=vm, node=node, old=old, new=new, reason=reason)

    @hookimpl
    def pvc_migration_finished(self, vm, source, target, method, seconds, ok):
        self._keep("pvc_migration_finished", vm=vm, source=source, target=target, method=method, seconds=seconds,
                   ok=ok)

    @hookimpl
    def pvc_node_fenced(self, node, result):
        self._keep("pvc_node_fenced", node=node, result=result)

    @hookimpl
    def pvc_node_recovered(self, node, moved, parked):
        self._keep("pvc_node_recovered", node=node, moved=moved, parked=parked)

    @hookimpl
    def pvc_handover_phase(self, phase, node, role, old_primary, new_primary):
        self._keep("pvc_handover_phase", phase=phase, node=node, role=role, old_primary=old_primary,
                   new_primary=new_primary)


def plugins(*extra) -> PluginSet:
    """The built-in ``mem`` selector and ``extra`` plugins only (no entry points)."""
    return load_plugins(extra=(mem_selector, *extra), entry_points=False, disabled=())


def daemon_config(name: str, **overrides) -> DaemonConfig:
    values = dict(node=name, keepalive_interval=0.1, migration_timeout=5.0, shutdown_timeout=1.0, handover_timeout=5.0,
                  flush_parallel=2, migration_address=name)
    values.update(overrides)
    return replace(DaemonConfig(node=name), **values)


def node_context(cluster: MemoryCluster, name: str, plugin_set: PluginSet, **cfg) -> NodeContext:
    return NodeContext(name, daemon_config(name, **cfg), cluster, cluster, plugin_set)

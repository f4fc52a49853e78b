"""``pvcnoded``: the node daemon. One per hypervisor.

It registers its node, publishes the node's figures on every keepalive, and
reconciles: whenever the watched view changes (or a keepalive tick passes) it
compares what ZooKeeper wants for the VMs of this node with what libvirt shows,
and starts one action per VM in a worker thread (start, shutdown, stop, restart,
a migration step, a flush). Reconciling is level-triggered, so a daemon that
restarts picks up where the cluster is, not where it was.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import replace
from typing import Callable

from kazoo.client import KazooState
from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError

from . import config as configmod
from . import flush, migration
from .coordinator import Coordinator
from .fencing import FenceMonitor
from .errors import ConflictError, NotFoundError, PVCError, ValidationError
from .hypervisor import Domain, Hypervisor, HypervisorError
from .models import VM, ClusterConfig, Node, Timing
from .operations import Operations
from .plugins import PluginSet, load_plugins
from .store import Store
from .view import ClusterView

log = logging.getLogger("pvcnoded")


class NodeDaemon:
    def __init__(self, cfg: configmod.DaemonConfig, plugins: PluginSet | None = None):
        self.cfg = cfg
        self.name = cfg.node
        self.plugins = plugins
        self.stopping = threading.Event()
        self.leaving = False
        self._wake = threading.Event()
        self._kick = threading.Event()  # publish figures now (a VM started, stopped or moved)
        self._busy: dict[str, threading.Thread] = {}
        self._busy_lock = threading.Lock()
        self._managed: set[str] = set()
        self._seen_node: dict[str, str] = {}
        self._seen_vm: dict[str, str] = {}
        self._running: set[str] = set()
        self._was_running: set[str] = set()
        self._domain_worker: threading.Thread | None = None
        self._loops: list[threading.Thread] = []
        self.monitor: FenceMonitor | None = None
        self._cut_off_since: float | None = None  # monotonic time ZooKeeper was lost, while it is
        self._last_keepalive = time.monotonic()  # when our last keepalive was written (the self-fence clock)
        self._self_fenced = False
        self._armed = 0.0  # the self-fence deadline in our last written keepalive (0: disarmed)
        self._need_alive = False

    # -- start and stop --------------------------------------------------------------

    def start(self) -> "NodeDaemon":
        cfg = self.cfg
        if self.plugins is None:
            self.plugins = load_plugins()
        self.hv = Hypervisor(cfg.libvirt_uri).open()
        self.live = self.hv.can_live_migrate() and bool(cfg.migration_uri)
        self.store = Store.connect(cfg.zookeeper_hosts, cfg.zookeeper_root, timeout=cfg.zookeeper_session_timeout,
                                   auth=cfg.zookeeper_auth or None)
        self._check_timing()
        self._register()
        self.view = ClusterView(self.store.client, self.store.paths).start()
        self.ops = Operations(self.store, self.view, self.plugins)
        self.view.add_listener(self._wake.set)
        self.coordinator = Coordinator(self)
        self.store.client.add_listener(self._on_connection)
        self._keepalive(first=True)
        if cfg.coordinator:
            self.monitor = FenceMonitor(self)
            self.monitor.start()
        for target, name in ((self._keepalive_loop, "keepalive"), (self._reconcile_loop, "reconcile"),
                             (self._watchdog_loop, "watchdog")):
            t = threading.Thread(target=target, name=f"{self.name}-{name}", daemon=True)
            t.start()
            self._loops.append(t)
        log.info("node %s running (libvirt %s, live migration %s)", self.name, cfg.libvirt_uri,
                 "on" if self.live else "off")
        return self

    def stop(self) -> None:
        """Stop cleanly: hand the primary role over, daemon state ``stop``, watches closed.

        VMs keep running on real hypervisors.
        """
        self.leaving = True  # from now on this node takes no new work (and no primary role)
        if not self.coordinator.serving:  # nobody should pick this node for anything now
            self.set_node(lambda n: True, daemon_state="stop")
        self.coordinator.join(self.cfg.handover_timeout)  # let a handover under way end first
        self.coordinator.step_down(self.view.snapshot())
        self.stopping.set()
        self._wake.set()
        for t in self._loops:
            t.join(10)
        if self.monitor is not None:
            self.monitor.join(5)
        self.view.stop()  # wakes every worker waiting on the view
        with self._busy_lock:
            workers = list(self._busy.values())
        for t in workers + ([self._domain_worker] if self._domain_worker else []):
            t.join(5)
        try:
            self.store.update_node(self.name, lambda n: replace(n, daemon_state="stop", keepalive=time.time()))
            self.store.client.delete(self.store.paths.node_alive(self.name))
        except (PVCError, NoNodeError) as exc:
            log.warning("could not record the stop: %s", exc)
        self.store.close()
        self.hv.close()
        log.info("node %s stopped", self.name)

    @property
    def timing(self) -> Timing:
        return Timing(self.cfg.keepalive_interval, self.cfg.zookeeper_session_timeout)

    def _check_timing(self) -> None:
        """Refuse to join a cluster whose failure detection would take this node for dead while healthy."""
        try:
            self.store.get_config().check_timing(self.timing)
        except ValidationError as exc:
            self.store.close()
            raise ValidationError(f"this node's keepalive_interval ({self.cfg.keepalive_interval:g}s) or "
                                  f"zookeeper_session_timeout ({self.cfg.zookeeper_session_timeout:g}s) do not fit "
                                  f"the cluster's settings: {exc.message}", exc.field) from None

    def _register(self) -> None:
        coordinator = "secondary" if self.cfg.coordinator else "client"
        try:
            self.store.create_node(Node(self.name, daemon_state="init", coordinator_state=coordinator))
        except ConflictError:
            self.store.update_node(self.name, lambda n: replace(n, daemon_state="init", coordinator_state=coordinator))
        self._ensure_alive()

    def _ensure_alive(self) -> None:
        alive = self.store.paths.node_alive(self.name)
        try:
            self.store.client.create(alive, b"", ephemeral=True)
        except NodeExistsError:
            # Left by our previous session (killed before it expired): replace it with ours.
            self.store.client.delete(alive)
            self.store.client.create(alive, b"", ephemeral=True)

    # -- keepalive ------------------------------------------------------------------------

    def _keepalive_loop(self) -> None:
        while not self.stopping.is_set():
            self._kick.wait(self.cfg.keepalive_interval)
            self._kick.clear()
            if self.stopping.is_set():
                break
            try:
                self._keepalive()
            except Exception as exc:  # ZooKeeper or libvirt away: try again next tick
                log.warning("keepalive failed: %s", exc)

    def _keepalive(self, first: bool = False) -> None:
        """Publish this node's figures in one compare-and-set write."""
        domains = self.hv.domains()
        figures = self.hv.figures(domains)
        snap = self.view.snapshot()
        figures["memory_provisioned_mib"] = sum(vm.memory_mib for vm in snap.vms.values() if vm.node == self.name)
        figures["vm_count"] = len(figures["running_vms"])
        running = set(figures["running_vms"])
        if running != self._running:  # a VM stopped or appeared on its own: reconcile now
            self._running = running
            self._wake.set()

        armed = self._self_fence_deadline(snap.config)

        def update(node: Node) -> Node:
            node = replace(node, **figures, keepalive=time.time(), live_migration=self.live,
                           migration_uri=self.cfg.migration_uri, keepalive_interval=self.cfg.keepalive_interval,
                           session_timeout=self.cfg.zookeeper_session_timeout, self_fence_deadline=armed)
            if node.daemon_state in ("dead", "fenced") and not first:
                # Declared dead (or even fenced) while we were cut off or stalled: we are back.
                # Any VM recovered elsewhere meanwhile is stopped here by the stray check.
                log.error("node %s was marked %s by the cluster; rejoining", self.name, node.daemon_state)
            return replace(node, daemon_state="run") if first or node.daemon_state in ("dead", "fenced") else node

        self.store.update_node(self.name, update)
        self._last_keepalive = time.monotonic()
        self._armed = armed  # published: from now on the cluster may count on it
        self._self_fenced = False
        if self._need_alive:
            self._need_alive = False
            self._ensure_alive()

    # -- self-fence ---------------------------------------------------------------------

    def _on_connection(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            if self._cut_off_since is not None:
                log.warning("ZooKeeper reachable again after %.1fs", time.monotonic() - self._cut_off_since)
            self._cut_off_since = None
            self._wake.set()
        elif self.stopping.is_set():
            return  # our own stop closed the session
        else:
            if state == KazooState.LOST:
                self._need_alive = True  # a new session needs a new ephemeral
            if self._cut_off_since is None:
                self._cut_off_since = time.monotonic()
                log.warning("lost ZooKeeper (%s)", state)

    def _self_fence_deadline(self, config: ClusterConfig) -> float:
        """The deadline this node arms itself with, 0 when it keeps its VMs however long it is cut off.

        Armed only with ``failed_fence = recover``: only then may the cluster start a silent
        node's VMs elsewhere without a confirmed power-off. Never shorter than this node's own
        reconnect time, whatever the stored setting says.
        """
        if not config.self_fence_armed:
            return 0.0
        return max(config.self_fence_deadline, self.timing.self_fence_after())

    def _watchdog_loop(self) -> None:
        """No keepalive written for the self-fence deadline: stop our own VMs (only when armed).

        The clock is our last *written* keepalive, the same event the other nodes time our
        silence from, not the moment the ZooKeeper client notices the loss (seconds later).
        So when the cluster has seen no keepalive for the deadline plus its keepalive limit,
        our VMs have provably been stopped, and it may recover them even when no fencer can
        reach this node. The deadline is the one last published, which is what the cluster
        counts on: a setting changed since is armed (or disarmed) by the next keepalive.
        """
        while not self.stopping.wait(0.1):
            since = self._last_keepalive
            deadline = self._armed
            if self._self_fenced or deadline <= 0 or time.monotonic() - since < deadline:
                continue
            self._self_fenced = True
            stopped = []
            for name, dom in self.hv.domains().items():
                if dom.running:
                    try:
                        self.hv.destroy(name)
                        stopped.append(name)
                    except HypervisorError as exc:
                        log.error("self-fence: could not stop %s: %s", name, exc)
            log.error("self-fence: no keepalive written for %.1fs (deadline %gs): stopped %d VM(s): %s",
                      time.monotonic() - since, deadline, len(stopped), ", ".join(stopped) or "none")

    # -- reconcile -------------------------------------------------------------------------

    def _reconcile_loop(self) -> None:
        while not self.stopping.is_set():
            self._wake.wait(self.cfg.keepalive_interval)
            self._wake.clear()
            if self.stopping.is_set():
                break
            try:
                self.reconcile()
            except Exception:
                log.exception("reconcile failed")

    def reconcile(self) -> None:
        if not self.store.client.connected or self._self_fenced:
            return  # the view may be stale: act only on what ZooKeeper says now
        snap = self.view.snapshot()
        me = snap.nodes.get(self.name)
        if me is None:
            return
        self._node_hooks(me)
        self.coordinator.reconcile(snap)
        local = self.hv.domains()
        was_running, self._was_running = self._was_running, {n for n, d in local.items() if d.running}
        for vm in snap.vms.values():
            involved = vm.node == self.name or (vm.migration is not None and vm.migration.target == self.name)
            if involved:
                self._managed.add(vm.name)
            if vm.node == self.name:
                self._vm_hooks(vm)
            if involved and not self.busy(vm.name):
                self._reconcile_vm(vm, local.get(vm.name), vm.name in was_running)
        for name, dom in local.items():
            if not self.busy(name):
                self._reconcile_stray(name, dom, snap.vms.get(name))
        for gone in set(self._seen_vm) - {n for n, v in snap.vms.items() if v.node == self.name}:
            del self._seen_vm[gone]
        if me.domain_state in ("flush", "unflush") and not (self._domain_worker and self._domain_worker.is_alive()):
            work = flush.run_flush if me.domain_state == "flush" else flush.run_unflush
            self._domain_worker = threading.Thread(target=self._guard, args=(work, self), daemon=True,
                                                   name=f"{self.name}-{me.domain_state}")
            self._domain_worker.start()

    def _reconcile_vm(self, vm: VM, dom: Domain | None, was_running: bool) -> None:
        running = bool(dom and dom.running)
        if vm.migration is not None:
            if vm.migration.target == self.name:
                migration.target_step(self, vm, running)
            elif vm.node == self.name:
                migration.source_step(self, vm, running)
            return
        state = vm.state
        if state == "start" and not running:
            self.spawn(vm.name, self._start, vm, "restarted after it stopped unexpectedly" if was_running else "")
        elif state == "restart":
            self.spawn(vm.name, self._restart, vm)
        elif state in ("shutdown", "disable") and running:
            self.spawn(vm.name, self._shutdown, vm)
        elif state == "shutdown":
            self.spawn(vm.name, self.set_vm, vm.name, lambda v: v.state == "shutdown", state="stop")
        elif state == "stop" and running:
            self.spawn(vm.name, self._destroy, vm)
        elif state in ("migrate", "migrate-live", "unmigrate"):  # a migration state with no migration: keep it running
            self.spawn(vm.name, self.set_vm, vm.name, lambda v: v.migration is None and v.state == state, state="start")

    def _reconcile_stray(self, name: str, dom: Domain, vm: VM | None) -> None:
        """A libvirt domain here that ZooKeeper does not place here."""
        if vm is None:
            if name in self._managed:  # undefined through pvc
                self.spawn(name, self.hv.undefine, name)
            return
        if vm.node == self.name or (vm.migration is not None and self.name in (vm.migration.source,
                                                                                 vm.migration.target)):
            return
        if dom.running:  # never two copies: ZooKeeper says it belongs elsewhere
            log.error("VM %s runs here but belongs to node %s: stopping this copy", name, vm.node)
        self.spawn(name, self.hv.undefine, name)  # a running stray, or a definition left by a migration

    # -- workers ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Reconcile again soon (something this daemon did may need a follow-up)."""
        self._wake.set()

    def busy(self, name: str) -> bool:
        with self._busy_lock:
            return name in self._busy

    def spawn(self, name: str, fn: Callable, *args, **kwargs) -> None:
        """Run ``fn(*args, **kwargs)`` in a worker thread that owns VM ``name`` until it finishes."""
        with self._busy_lock:
            if name in self._busy:
                return
            t = threading.Thread(target=self._run_owned, args=(name, fn, args, kwargs), daemon=True,
                                 name=f"{self.name}-{name}")
            self._busy[name] = t
        t.start()

    def _run_owned(self, name: str, fn: Callable, args: tuple, kwargs: dict) -> None:
        try:
            fn(*args, **kwargs)
        except NotFoundError:  # undefined while we worked on it: nothing left to do
            log.info("VM %s: undefined meanwhile; action dropped", name)
        except Exception as exc:
            self._failed(f"action on VM {name}", exc)
        finally:
            with self._busy_lock:
                self._busy.pop(name, None)
            self._kick.set()
            self._wake.set()

    def _guard(self, fn: Callable, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self._failed(fn.__name__, exc)
            self.stopping.wait(self.cfg.keepalive_interval)  # retry back-off: not in a tight loop
        finally:
            self._wake.set()

    def _failed(self, what: str, exc: Exception) -> None:
        if self.stopping.is_set():  # cut short by the daemon stopping: expected
            log.info("%s interrupted by stop: %s", what, exc)
        else:
            log.exception("%s failed", what)

    def set_vm(self, name: str, precondition: Callable[[VM], bool], **changes) -> VM | None:
        """Compare-and-set a VM document while ``precondition`` holds on the fresh read.

        Returns once the view shows the result, so the caller (and the next
        reconcile) never acts on the state from before its own write.
        """

        def update(vm: VM) -> VM:
            return replace(vm, **changes) if precondition(vm) else vm

        return self.write_vm(name, update)

    def write_vm(self, name: str, update: Callable[[VM], VM]) -> VM | None:
        try:
            written = self.store.update_vm(name, update)
        except NotFoundError:
            return None
        self.view.wait_seen("vm", name, self.store.last_write[1])
        return written

    def set_node(self, precondition: Callable[[Node], bool], **changes) -> Node:
        written = self.store.update_node(self.name, lambda n: replace(n, **changes) if precondition(n) else n)
        self.view.wait_seen("node", self.name, self.store.last_write[1])
        return written

    # -- VM actions -------------------------------------------------------------------------

    def _start(self, vm: VM, reason: str = "") -> VM | None:
        if reason:
            log.warning("VM %s: %s", vm.name, reason)
        mine = lambda v: v.state == "start" and v.node == self.name and v.migration is None  # noqa: E731
        try:
            self.hv.start(vm.name, self.store.get_vm_xml(vm.name))
        except HypervisorError as exc:
            log.error("VM %s: start failed: %s", vm.name, exc)
            return self.set_vm(vm.name, mine, state="fail", reason=str(exc))
        log.info("VM %s: started", vm.name)
        return self.set_vm(vm.name, mine, reason=reason)

    def _shutdown(self, vm: VM) -> VM | None:
        graceful = self.hv.shutdown(vm.name, self.cfg.shutdown_timeout, self.stopping)
        # Keep a reason given with the request (e.g. why a flush parked the VM).
        reason = vm.reason if graceful else f"did not shut down within {self.cfg.shutdown_timeout:g}s; stopped"
        log.info("VM %s: %s", vm.name, "shut down" if graceful else reason)
        new_state = "stop" if vm.state == "shutdown" else vm.state
        return self.set_vm(vm.name, lambda v: v.state == vm.state and v.node == self.name, state=new_state,
                           reason=reason)

    def _restart(self, vm: VM) -> VM | None:
        self.hv.shutdown(vm.name, self.cfg.shutdown_timeout, self.stopping)
        mine = lambda v: v.state == "restart" and v.node == self.name  # noqa: E731
        try:
            self.hv.start(vm.name, self.store.get_vm_xml(vm.name))
        except HypervisorError as exc:
            log.error("VM %s: restart failed: %s", vm.name, exc)
            return self.set_vm(vm.name, mine, state="fail", reason=str(exc))
        log.info("VM %s: restarted", vm.name)
        return self.set_vm(vm.name, mine, state="start", reason="")

    def _destroy(self, vm: VM) -> None:
        self.hv.destroy(vm.name)
        log.info("VM %s: stopped", vm.name)

    # -- lifecycle notifications -------------------------------------------------------------

    def _node_hooks(self, me: Node) -> None:
        for kind in ("daemon", "coordinator", "domain"):
            new = getattr(me, f"{kind}_state")
            old = self._seen_node.get(kind)
            if old != new:
                self._seen_node[kind] = new
                self.plugins.notify("pvc_node_state_changed", node=self.name, kind=kind, old=old, new=new)

    def _vm_hooks(self, vm: VM) -> None:
        old = self._seen_vm.get(vm.name)
        if old != vm.state:
            self._seen_vm[vm.name] = vm.state
            self.plugins.notify("pvc_vm_state_changed", vm=vm.name, node=self.name, old=old, new=vm.state,
                                reason=vm.reason)


# -- command line ----------------------------------------------------------------------------


class _NodeFilter(logging.Filter):
    def __init__(self, node: str):
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node
        # VM events are logged as "VM <name>: ...": the name becomes a field of its own.
        vm = getattr(record, "vm", None)
        if vm is None and isinstance(record.msg, str) and record.msg.startswith("VM %s") and record.args:
            vm = record.args[0]
        record.vm = vm
        record.vm_field = f" vm={vm}" if vm else ""
        return True


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "node": record.node,
                 "logger": record.name, "message": record.getMessage()}
        if record.vm:
            entry["vm"] = record.vm
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(node: str, level: str, fmt: str = "text") -> None:
    """One line per event with the node's name, and the VM's for VM events ("VM web1: ...")."""
    handler = logging.StreamHandler()
    handler.addFilter(_NodeFilter(node))
    handler.setFormatter(_JSONFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s node=%(node)s%(vm_field)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("kazoo").setLevel(max(logging.WARNING, root.level))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pvcnoded", description="pvc node daemon (one per hypervisor)")
    configmod.DAEMON.add_flags(parser)
    args = parser.parse_args(argv)
    try:
        cfg = configmod.DAEMON.from_args(args)
    except ValidationError as exc:
        print(f"pvcnoded: error: {exc.message}", file=sys.stderr)
        return 2
    setup_logging(cfg.node, cfg.log_level, cfg.log_format)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` prints every thread's stack
    # SIGTERM/SIGINT are blocked before any thread starts (threads inherit the mask) and taken with
    # sigwait() below: no signal handler, so nothing can interrupt a thread holding a lock.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    daemon = NodeDaemon(cfg)
    try:
        daemon.start()
    except ValidationError as exc:  # this node's settings do not fit the cluster's
        print(f"pvcnoded: error: {exc.message}", file=sys.stderr)
        return 2
    except (PVCError, HypervisorError) as exc:
        print(f"pvcnoded: error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    except KazooTimeoutError:
        print(f"pvcnoded: error: cannot reach ZooKeeper at {cfg.zookeeper_hosts} "
              f"within {cfg.zookeeper_session_timeout:g}s", file=sys.stderr)
        return 1
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    daemon.stop()
    return 0

if __name__ == "__main__":
    sys.exit(main())

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

from kazoo.exceptions import KazooException
from kazoo.handlers.threading import KazooTimeoutError

from pvccore import config as configmod
from pvccore.domain.models import Node
from pvccore.domain.states import CoordinatorState, DaemonState, DomainState
from pvccore.domain.transitions import domain_requested
from pvccore.errors import ConflictError, PVCError, ValidationError
from pvccore.node import flush
from pvccore.node.context import NodeContext, Workers, report_failure
from pvccore.node.coordinator import Coordinator
from pvccore.node.faults import FaultMonitor
from pvccore.node.fencing import FenceMonitor
from pvccore.node.hypervisor import Hypervisor, HypervisorError
from pvccore.node.keepalive import Keepalive
from pvccore.node.logs import LogPublisher, RecentLines
from pvccore.node.lifecycle import VMLifecycle
from pvccore.node.migration import Migrations
from pvccore.plugins import PluginSet, load_plugins
from pvccore.zk.session import Session
from pvccore.zk.store import Store

log = logging.getLogger("pvcnoded")


class NodeDaemon:
    """Wires the parts of a node daemon together and runs their loops; each part gets a :class:`NodeContext`."""

    def __init__(self, cfg: configmod.DaemonConfig, plugins: PluginSet | None = None):
        self.cfg = cfg
        self.name = cfg.node
        self.plugins = plugins
        self.stopping = threading.Event()
        self._reconcile_soon = threading.Event()
        self._publish_soon = threading.Event()  # the running VMs changed: keepalive now
        self._domain_workers: dict[str, threading.Thread] = {}  # node -> its flush or ready (on the primary)
        self._loops: list[threading.Thread] = []
        self.session: Session | None = None
        self.hv: Hypervisor | None = None
        self.ctx: NodeContext | None = None
        self.workers: Workers | None = None
        self.keepalive: Keepalive | None = None
        self.lifecycle: VMLifecycle | None = None
        self.coordinator: Coordinator | None = None
        self.monitor: FenceMonitor | None = None
        self.faults: FaultMonitor | None = None
        self.recent = RecentLines()  # this daemon's last log lines, for pvc node log
        self.logs: LogPublisher | None = None

    # -- start and stop --------------------------------------------------------------

    def start(self) -> "NodeDaemon":
        cfg = self.cfg
        if self.plugins is None:
            self.plugins = load_plugins()
        self.hv = Hypervisor(cfg.libvirt_uri).open()
        live = self.hv.can_live_migrate() and bool(cfg.migration_uri)
        store = Store.connect(cfg.zookeeper_hosts, cfg.zookeeper_root, timeout=cfg.zookeeper_session_timeout,
                              auth=cfg.zookeeper_auth or None)
        try:
            self._check_timing(store)
            self._register(store)
            # A coordinator fences, recovers and drives flushes: it follows the whole cluster and every node's
            # liveness. Any other node follows only itself and the VMs it acts on.
            self.session = Session.on(store, liveness=cfg.coordinator, scope=None if cfg.coordinator else self.name)
        except BaseException:
            store.close()
            raise
        ctx = self.ctx = NodeContext(self.name, cfg, store, self.session.view, self.plugins, stopping=self.stopping,
                                     reconcile_soon=self._reconcile_soon.set)
        self.workers = Workers(ctx, after=self._after_work)
        self.keepalive = Keepalive(ctx, self.hv, live, running_changed=self._reconcile_soon.set)
        self.keepalive.ensure_alive()
        self.lifecycle = VMLifecycle(ctx, self.hv, self.workers, Migrations(ctx, self.hv, self.workers, live))
        self.coordinator = Coordinator(ctx)
        self.session.view.add_listener(self._reconcile_soon.set)
        store.connection.subscribe(self.keepalive.on_connection)
        self.keepalive.publish(first=True)
        # The loops start from a view that holds this node as running: the first reconcile announces
        # the node's states, and one a step behind our own write would announce `init`.
        self.session.view.wait_seen("node", self.name, store.last_write[1])
        # Before any loop runs: a plugin's service may be started by the first reconcile (a resumed primary).
        self.plugins.notify("pvc_node_started", node=self.name, config=cfg)
        if cfg.coordinator:
            self.monitor = FenceMonitor(ctx, lambda: self.coordinator.serving)
            self.monitor.start()
            self.faults = FaultMonitor(ctx, lambda: self.coordinator.serving)
            self.faults.start()
        logging.getLogger().addHandler(self.recent)
        self.logs = LogPublisher(ctx, self.recent)
        self.logs.start()
        for target, name in ((lambda: self.keepalive.loop(self._publish_soon), "keepalive"),
                             (lambda: self.keepalive.collect_loop(self._publish_soon), "figures"),
                             (self._reconcile_loop, "reconcile"), (self.keepalive.watchdog, "watchdog")):
            t = threading.Thread(target=target, name=f"{self.name}-{name}", daemon=True)
            t.start()
            self._loops.append(t)
        log.info("node %s running (libvirt %s, live migration %s)", self.name, cfg.libvirt_uri,
                 "on" if live else "off")
        if cfg.ready_on_boot:
            self._ready_self()
        return self

    def stop(self) -> None:
        """Stop cleanly: hand the primary role over, daemon state ``stop``, watches closed.

        VMs keep running on real hypervisors.
        """
        ctx = self.ctx
        if self.cfg.flush_on_shutdown:
            self._flush_self()  # before leaving: if this node is the primary, it drives its own flush
        ctx.leaving.set()  # from now on this node takes no new work (and no primary role)
        if not self.coordinator.serving:  # nobody should pick this node for anything now
            try:
                ctx.set_node(lambda n: True, daemon_state=DaemonState.STOP)
            except (PVCError, KazooException) as exc:  # ZooKeeper gone, or our session ended: stop all the same
                log.warning("could not record the stop before stepping down: %r", exc)
        self.coordinator.join(self.cfg.handover_timeout)  # let a handover under way end first
        self.coordinator.step_down(ctx.view.snapshot())
        self.stopping.set()
        self._reconcile_soon.set()
        for t in self._loops:
            t.join(10)
        if self.monitor is not None:
            self.monitor.join(5)
        if self.faults is not None:
            self.faults.join(5)
        if self.logs is not None:
            self.logs.join(5)
        logging.getLogger().removeHandler(self.recent)
        self.session.view.stop()  # wakes every worker waiting on the view
        self.workers.join(5)
        for worker in list(self._domain_workers.values()):
            worker.join(5)
        store = self.session.store
        try:
            store.update_node(self.name, lambda n: replace(n, daemon_state=DaemonState.STOP, keepalive=time.time()))
            store.drop_ephemeral(store.paths.node_alive(self.name))
        except (PVCError, KazooException) as exc:
            log.warning("could not record the stop: %r", exc)
        self.plugins.notify("pvc_node_stopped", node=self.name)
        store.close()
        self.hv.close()
        log.info("node %s stopped", self.name)

    def _flush_self(self) -> None:
        """flush_on_shutdown: ask for this node's flush and wait until it is flushed (the primary drives it)."""
        timeout, store = self.cfg.flush_timeout, self.ctx.store
        try:
            me = self.session.view.node(self.name)
            if me is not None and me.domain_state in (DomainState.READY, DomainState.UNFLUSH):
                store.client.ensure_path(store.paths.node_stop_flush(self.name))  # this stop makes the flush
            store.update_node(self.name, lambda n: domain_requested(n, DomainState.FLUSH))
        except (PVCError, KazooException) as exc:
            log.warning("flush on shutdown: could not ask for it (%r); stopping with the VMs where they are", exc)
            return
        log.info("flush on shutdown: waiting up to %gs for the VMs to leave", timeout)
        if self.session.view.wait_for(lambda c: (me := c.nodes.get(self.name)) is not None
                                      and me.domain_state == DomainState.FLUSHED, timeout):
            log.info("flush on shutdown: node %s flushed", self.name)
        else:
            log.warning("flush on shutdown: not flushed within %gs; stopping with what still runs here", timeout)

    def _ready_self(self) -> None:
        """ready_on_boot: take the VMs back if this node's last clean stop flushed it (the primary drives it); a
        node flushed by an operator, or fenced, stays flushed."""
        store = self.ctx.store
        marker = store.paths.node_stop_flush(self.name)
        try:
            if not store.client.exists(marker):
                return
            me = self.session.view.node(self.name)
            if me is not None and me.domain_state in (DomainState.FLUSHED, DomainState.FLUSH):
                store.update_node(self.name, lambda n: domain_requested(n, DomainState.UNFLUSH))
                log.info("ready on boot: node %s asked to take its VMs back", self.name)
            store.client.delete(marker)
        except (PVCError, KazooException) as exc:
            log.warning("ready on boot: not readied (%s); pvc node ready %s when it can be", exc, self.name)

    def _check_timing(self, store: Store) -> None:
        """Refuse to join a cluster whose failure detection would take this node for dead while healthy."""
        try:
            store.get_config().check_timing(self.cfg.timing)
        except ValidationError as exc:
            raise ValidationError(f"this node's keepalive_interval ({self.cfg.keepalive_interval:g}s) or "
                                  f"zookeeper_session_timeout ({self.cfg.zookeeper_session_timeout:g}s) do not fit "
                                  f"the cluster's settings: {exc.message}", exc.field) from None

    def _register(self, store: Store) -> None:
        role = CoordinatorState.SECONDARY if self.cfg.coordinator else CoordinatorState.CLIENT
        try:
            store.create_node(Node(self.name, daemon_state=DaemonState.INIT, coordinator_state=role))
        except ConflictError:
            store.update_node(self.name, lambda n: replace(n, daemon_state=DaemonState.INIT, coordinator_state=role))
        store.client.ensure_path(store.paths.node_placed(self.name))  # where the VMs it acts on are indexed

    # -- reconcile -------------------------------------------------------------------------

    def _after_work(self) -> None:
        # Read the figures now; the keepalive that carries them follows as soon as they are read.
        self.keepalive.collect_soon()
        self._reconcile_soon.set()

    def _reconcile_loop(self) -> None:
        while not self.stopping.is_set():
            self._reconcile_soon.wait(self.cfg.keepalive_interval)
            self._reconcile_soon.clear()
            if self.stopping.is_set():
                break
            try:
                self.reconcile()
            except Exception:
                log.exception("reconcile failed")

    def reconcile(self) -> None:
        if not self.session.connection.connected or self.keepalive.self_fenced:
            return  # the view may be stale: act only on what ZooKeeper says now
        since = time.monotonic()
        snap = self.ctx.view.snapshot()
        me = snap.nodes.get(self.name)
        if me is None:
            return
        self.lifecycle.announce_node(me)
        self.coordinator.reconcile(snap)
        local = self.hv.domains()
        self.lifecycle.reconcile(self.lifecycle.with_strays(snap.vms, local), local, since)
        if self.coordinator.serving and snap.primary is not None and snap.primary.node == self.name:
            self._drive_domains(snap)

    def _drive_domains(self, snap) -> None:
        """As primary: a worker for each node being flushed or readied (pvccore.node.flush)."""
        for node in snap.nodes.values():
            if node.domain_state not in (DomainState.FLUSH, DomainState.UNFLUSH):
                continue
            worker = self._domain_workers.get(node.name)
            if worker is not None and worker.is_alive():
                continue
            work = flush.run_flush if node.domain_state == DomainState.FLUSH else flush.run_unflush
            worker = threading.Thread(target=self._run_domain_work, args=(work, node.name), daemon=True,
                                      name=f"{self.name}-{node.domain_state}-{node.name}")
            self._domain_workers[node.name] = worker
            worker.start()

    def _run_domain_work(self, work, node: str) -> None:
        try:
            work(self.ctx, node, lambda: self.coordinator.serving)
        except Exception as exc:
            report_failure(self.ctx, f"{work.__name__} of {node}", exc)
            self.stopping.wait(self.cfg.keepalive_interval)  # retry back-off: not in a tight loop
        finally:
            self._reconcile_soon.set()


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

"""The node's keepalive (its liveness, and its figures when they change) and its self-fence.

Every keepalive interval the node writes its liveness record, a few bytes that only the coordinators
watch (they time every node's silence), and only while its document is as it last wrote it: one
changed by another writer (the primary declared the node dead) is read and answered first. The
document, with its figures, its timing (keepalive interval, ZooKeeper session timeout) and the
self-fence deadline it armed itself with, is rewritten (a compare-and-set, in one transaction with
the liveness record) only when something in it changed: a VM started or stopped, a setting, memory
by ``MEMORY_STEP_MIB``, the load by a fifth and at least ``LOAD_STEP``; and at least every
``FIGURES_REFRESH`` seconds. Every node and the API watch the documents, so a
cluster of N nodes costs N small writes a keepalive and no N x N stream of figures nobody acts on.

A keepalive never waits on libvirt: the figures are read by a thread of their own and each keepalive
publishes the latest ones. A libvirtd slow to answer (starting twenty guests at once, say, with every
call of the daemon's connection queued behind them) once held the keepalive up past the cluster's
limit, and the cluster fenced a healthy node with all its VMs.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from dataclasses import replace

from pvccore.domain.models import ClusterConfig, Node
from pvccore.domain.states import DaemonState
from pvccore.node.context import NodeContext
from pvccore.node.hypervisor import HypervisorError
from pvccore.zk.connection import CONNECTED, LOST

log = logging.getLogger("pvcnoded")

MEMORY_STEP_MIB = 128
LOAD_STEP, LOAD_SHARE = 0.5, 0.2
FIGURES_REFRESH = 30.0  # seconds


def moved(before: dict | None, after: dict) -> bool:
    """Whether the published figures ``after`` differ enough from ``before`` to be written now."""
    if before is None or before.keys() != after.keys():
        return True
    for key, value in after.items():
        old = before[key]
        if key == "load_1m":
            if abs(value - old) >= max(LOAD_STEP, LOAD_SHARE * old):
                return True
        elif key in ("memory_free_mib", "memory_used_mib"):
            if abs(value - old) >= MEMORY_STEP_MIB:
                return True
        elif value != old:
            return True
    return False


class Keepalive:
    """Publishes this node's figures, and stops its VMs when it could not for the self-fence deadline.

    ``hv`` is the node's hypervisor (or a fake); ``live`` whether it can live-migrate;
    ``running_changed`` is called when the set of running VMs differs from the last keepalive's.
    """

    def __init__(self, ctx: NodeContext, hv, live: bool, running_changed=lambda: None):
        self.ctx, self.hv, self.live = ctx, hv, live
        self._running_changed = running_changed
        self._running: set[str] = set()
        self.cut_off_since: float | None = None  # monotonic time ZooKeeper was lost, while it is
        self._last_written = time.monotonic()  # when our last keepalive was written (the self-fence clock)
        self.self_fenced = False
        self._armed = 0.0  # the self-fence deadline in our last written keepalive (0: disarmed)
        self._need_alive = False
        self._figures: dict | None = None  # the latest figures read from the hypervisor
        self._published: dict | None = None  # what the node document carries since our last write of it
        self._doc_written = float("-inf")  # when we last wrote it (monotonic)
        self._collect_soon = threading.Event()  # read the figures again now

    def ensure_alive(self) -> None:
        """This session's ephemeral ``alive`` znode (the cluster's quick sign of a live session)."""
        self.ctx.store.ensure_ephemeral(self.ctx.store.paths.node_alive(self.ctx.name))

    def collect(self) -> bool:
        """Read this node's figures from the hypervisor (as slowly as it answers); whether the set of
        running VMs changed since the last reading."""
        figures = self.hv.figures(self.hv.domains())
        self._figures = figures
        running = set(figures["running_vms"])
        if running == self._running:
            return False
        self._running = running  # a VM stopped or appeared on its own: reconcile now
        self._running_changed()
        return True

    def collect_soon(self) -> None:
        """Read the figures now (a VM started, stopped or moved), not at the next tick."""
        self._collect_soon.set()

    def collect_loop(self, kick: threading.Event) -> None:
        """Read the figures every keepalive interval, or at once when a keepalive asks; when the running
        VMs changed, set ``kick`` so that the next keepalive carries them without waiting for its tick."""
        while not self.ctx.stopping.is_set():
            self._collect_soon.wait(self.ctx.cfg.keepalive_interval)
            self._collect_soon.clear()
            if self.ctx.stopping.is_set():
                break
            try:
                if self.collect():
                    kick.set()
            except Exception as exc:  # libvirt away: the keepalives go on with the last figures
                log.warning("could not read the node's figures: %s", exc)

    def publish(self, first: bool = False) -> None:
        """Write this node's keepalive: its liveness record, or its document when its figures moved (see the module
        docstring).

        Only the first keepalive (or one before any figures were read) reads the hypervisor itself;
        the others take what :meth:`collect_loop` last read and ask it for a fresh reading.
        """
        ctx, cfg = self.ctx, self.ctx.cfg
        if first or self._figures is None:
            self.collect()
        else:
            self.collect_soon()
        figures = dict(self._figures)
        snap = ctx.view.snapshot()
        figures["memory_provisioned_mib"] = sum(vm.memory_mib for vm in snap.vms.values() if vm.node == ctx.name)
        figures["vm_count"] = len(figures["running_vms"])
        armed = self.self_fence_deadline(snap.config)
        published = dict(figures, live_migration=self.live, migration_uri=cfg.migration_uri,
                         keepalive_interval=cfg.keepalive_interval, session_timeout=cfg.zookeeper_session_timeout,
                         self_fence_deadline=armed, flush_parallel=cfg.flush_parallel)
        me = snap.nodes.get(ctx.name)
        back = me is None or me.daemon_state in (DaemonState.DEAD, DaemonState.FENCED)
        tick, now = time.monotonic(), time.time()
        if not (first or back or moved(self._published, published) or tick - self._doc_written >= FIGURES_REFRESH):
            if ctx.store.write_keepalive(ctx.name, now):
                self._written(tick)
                return
            # Another writer changed our document since we published it (declared us dead, say): read it and
            # answer with the whole document below, never with the liveness record alone.

        def update(node: Node) -> Node:
            node = replace(node, **published, keepalive=now)
            back = node.daemon_state in (DaemonState.DEAD, DaemonState.FENCED)
            if back and not first:
                # Declared dead (or even fenced) while we were cut off or stalled: we are back.
                # Any VM recovered elsewhere meanwhile is stopped here by the stray check.
                log.error("node %s was marked %s by the cluster; rejoining", ctx.name, node.daemon_state)
            return replace(node, daemon_state=DaemonState.RUN) if first or back else node

        ctx.store.publish_node(ctx.name, update, now)
        self._published, self._doc_written = published, tick
        self._armed = armed  # published: from now on the cluster may count on it
        self._written(tick)

    def _written(self, tick: float) -> None:
        self._last_written = tick
        self.self_fenced = False
        if self._need_alive:
            self._need_alive = False
            self.ensure_alive()

    def loop(self, kick: threading.Event) -> None:
        """Publish every keepalive interval, or at once when ``kick`` is set."""
        while not self.ctx.stopping.is_set():
            kick.wait(self.ctx.cfg.keepalive_interval)
            kick.clear()
            if self.ctx.stopping.is_set():
                break
            try:
                self.publish()
            except Exception as exc:  # ZooKeeper or libvirt away: try again next tick
                log.warning("keepalive failed: %s", exc)

    # -- ZooKeeper's state, and the self-fence -----------------------------------------------

    def on_connection(self, state: str) -> None:
        if state == CONNECTED:
            if self.cut_off_since is not None:
                log.warning("ZooKeeper reachable again after %.1fs", time.monotonic() - self.cut_off_since)
            self.cut_off_since = None
            self.ctx.reconcile_soon()
        elif self.ctx.stopping.is_set():
            return  # our own stop closed the session
        else:
            if state == LOST:
                self._need_alive = True  # a new session needs a new ephemeral
            if self.cut_off_since is None:
                self.cut_off_since = time.monotonic()
                log.warning("lost ZooKeeper (%s)", state)

    def self_fence_deadline(self, config: ClusterConfig) -> float:
        """The deadline this node arms itself with, 0 when it keeps its VMs however long it is cut off.

        Armed only with ``failed_fence = recover``: only then may the cluster start a silent
        node's VMs elsewhere without a confirmed power-off. Never shorter than this node's own
        reconnect time, whatever the stored setting says.
        """
        if not config.self_fence_armed:
            return 0.0
        return max(config.self_fence_deadline, self.ctx.cfg.timing.self_fence_after())

    def watchdog(self) -> None:
        """No keepalive written for the self-fence deadline: stop our own VMs (only when armed).

        The clock is our last *written* keepalive, the same event the other nodes time our
        silence from, not the moment the ZooKeeper client notices the loss (seconds later).
        So when the cluster has seen no keepalive for the deadline plus its keepalive limit,
        our VMs have provably been stopped, and it may recover them even when no fencer can
        reach this node. The deadline is the one last published, which is what the cluster
        counts on: a setting changed since is armed (or disarmed) by the next keepalive.
        """
        while not self.ctx.stopping.wait(0.1):
            self.check_deadline(time.monotonic())

    def check_deadline(self, now: float) -> bool:
        """Stop every running VM here if the armed deadline has passed since the last keepalive; whether it did."""
        since, deadline = self._last_written, self._armed
        if self.self_fenced or deadline <= 0 or now - since < deadline:
            return False
        self.self_fenced = True
        stopped = []
        for name, dom in self.hv.domains().items():
            if dom.running:
                try:
                    self.hv.destroy(name)
                    stopped.append(name)
                except HypervisorError as exc:
                    log.error("self-fence: could not stop %s: %s", name, exc)
        log.error("self-fence: no keepalive written for %.1fs (deadline %gs): stopped %d VM(s): %s",
                  now - since, deadline, len(stopped), ", ".join(stopped) or "none")
        self.reset_host()
        return True

    def reset_host(self) -> None:
        """Run ``self_fence_command`` (if set): a stopped QEMU's last writes to network storage can sit in
        this host's TCP queues while the link is down, and reach the storage when it comes back, after
        the cluster started the VM elsewhere. Only a host reset drops them."""
        command = self.ctx.cfg.self_fence_command
        if not command:
            return
        log.error("self-fence: resetting the host: %s", command)
        try:
            subprocess.run(["sh", "-c", command], timeout=30, stdin=subprocess.DEVNULL, capture_output=True)
        except (OSError, subprocess.SubprocessError) as exc:
            log.error("self-fence: the reset command failed: %s", exc)

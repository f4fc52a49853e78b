"""Dead-node detection, fencing through fence plugins, and recovery of the dead node's VMs.

A :class:`FenceMonitor` runs in every coordinator's daemon. It watches each
node's keepalive in the view and times its age on its *own* monotonic clock
(immune to clock skew between nodes). A node whose keepalive is older than
``keepalive_limit`` is suspect; still suspect after ``fence_grace`` more seconds
(its saving throw), it is declared ``dead`` and fenced. The primary acts on every
node; the other coordinators act only when the dead node is the primary itself,
so a dead primary is fenced too, and then replaced by election. Every fencing
action runs under the ZooKeeper lock ``locks/fence`` and re-checks the node's
state, so one node is fenced by one fencer at a time.

When the watcher's own ZooKeeper connection drops (a leader election in the
ensemble, say), every node's clock restarts: a cluster-wide hiccup is nobody's
death.

Fencing tries the node's fence configuration in order until a fencer confirms
power off. Then the node is ``fenced`` and, with ``successful_fence = recover``,
its VMs are placed elsewhere (selector and node limits; those with no target
stay stopped with ``node_autostart``). When every fencer fails, nothing is
recovered (unless ``failed_fence = recover`` and the node's self-fence deadline
has provably passed), the node stays ``dead``, ``pvc cluster status`` shows why,
and fencing is retried with a doubling back-off up to ``fence_retry_max``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from kazoo.client import KazooState

from .errors import ConflictError, LockTimeout, PVCError
from .hookspecs import FenceResult
from .models import RUNNING_STATES, VM, Cluster, ClusterConfig, Node, Timing
from .placement import place, with_pending
from .placing import placing
from .store import Store

if TYPE_CHECKING:
    from .daemon import NodeDaemon

log = logging.getLogger(__name__)


class FenceMonitor:
    def __init__(self, d: "NodeDaemon"):
        self.d = d
        self._seen: dict[str, tuple[float, float]] = {}  # node -> (keepalive value, when we saw it change)
        self._suspect: dict[str, float] = {}  # node -> since when
        self._retry: dict[str, tuple[float, float]] = {}  # node -> (next attempt at, current back-off)
        self._reset = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.d.store.client.add_listener(self._on_connection)
        self._thread = threading.Thread(target=self._loop, name=f"{self.d.name}-fence", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _on_connection(self, state: str) -> None:
        if state != KazooState.CONNECTED:
            self._reset.set()

    def _loop(self) -> None:
        tick = min(0.5, self.d.cfg.keepalive_interval / 2)
        while not self.d.stopping.wait(tick):
            try:
                self.tick(time.monotonic())
            except Exception:
                log.exception("fence monitor tick failed")

    # -- detection ----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        if self._reset.is_set() or not self.d.store.client.connected:
            self._reset.clear()
            self._seen.clear()  # we were cut off ourselves: start every node's clock again
            self._suspect.clear()
            return
        snap = self.d.view.snapshot()
        cfg = snap.config
        primary = snap.primary.node if snap.primary else None
        i_am_primary = primary == self.d.name and self.d.coordinator.serving
        for node in snap.nodes.values():
            name = node.name
            if name == self.d.name:
                continue
            last_value, since = self._seen.get(name, (None, now))
            if node.keepalive != last_value:
                self._seen[name] = (node.keepalive, now)
                since = now
            if node.daemon_state in ("stop", "init"):  # a clean stop, or starting up: not a failure
                self._forget(name)
                continue
            if node.daemon_state == "fenced":
                continue
            suspect_after, dead_after = detection(cfg, node)
            if node.daemon_state == "run" and now - since <= suspect_after:
                self._forget(name)  # alive (again): the saving throw succeeded
                continue
            if not (i_am_primary or name == primary):
                continue  # only the primary fences, except the primary itself
            if node.daemon_state == "run":
                started = self._suspect.setdefault(name, now)
                if now - started < cfg.fence_grace or now - since < dead_after:
                    continue
            next_try, _ = self._retry.get(name, (0.0, 0.0))
            if now >= next_try or (node.daemon_state == "dead" and self._confirmed_off(node)):
                self._fence(node, now, now - since)

    def _forget(self, name: str) -> None:
        self._suspect.pop(name, None)
        if self._retry.pop(name, None) is not None:
            try:
                self.d.store.set_fencing(name, None)
            except PVCError as exc:
                log.warning("could not clear the fence status of %s: %s", name, exc.message)

    # -- fencing ------------------------------------------------------------------------

    def _fence(self, node: Node, now: float, silent_for: float) -> None:
        name = node.name
        try:
            with self.d.store.lock("fence", timeout=1.0, identifier=self.d.name):
                current = self.d.store.get_node(name)
                if current.daemon_state not in ("run", "dead") or current.keepalive != node.keepalive:
                    return  # another fencer acted, or it came back
                if current.daemon_state == "run":
                    log.error("node %s: no keepalive for %.1fs: declaring it dead", name, silent_for)
                    self.d.store.update_node(name, lambda n: replace(n, daemon_state="dead")
                                             if n.daemon_state == "run" else n)
                    self.d.plugins.notify("pvc_node_state_changed", node=name, kind="daemon", old="run", new="dead")
                if current.daemon_state == "dead" and self._confirmed_off(current):
                    result = FenceResult(True, "power-off confirmed by the operator (pvc node confirm-off)")
                else:
                    result = self.fence_node(name)
                self.d.plugins.notify("pvc_node_fenced", node=name, result=result)
                if result.off:
                    self._fenced(name, result)
                else:
                    # Fencers can take seconds to fail: silent all along (same keepalive), that counts.
                    after = self.d.store.get_node(name)
                    if after.keepalive == node.keepalive:
                        silent_for += time.monotonic() - now
                    self._failed(name, result, now, silent_for)
        except LockTimeout:
            return  # another coordinator is fencing: look again next tick

    def _confirmed_off(self, node: Node) -> bool:
        """The operator confirmed this death of the node (its last keepalive), not an earlier one."""
        confirmed = self.d.store.get_fencing().get(node.name, {}).get("confirmed_off")
        return isinstance(confirmed, dict) and confirmed.get("keepalive") == node.keepalive

    def fence_node(self, name: str) -> FenceResult:
        """Try each entry of the node's fence configuration in order until one confirms power off."""
        entries = self.d.store.get_fence_config(name)
        if not entries:
            return FenceResult(False, "no fence configuration for this node")
        messages = []
        for i, entry in enumerate(entries, start=1):
            fencer = self.d.plugins.fencers.get(entry.get("fencer", ""))
            if fencer is None:
                messages.append(f"#{i} {entry.get('fencer')}: no such fencer")
                continue
            params = dict(entry.get("params") or {})
            try:
                result = fencer.fence(name, params)
            except Exception as exc:  # a fencer bug must not stop the next one
                log.exception("fencer %s raised", fencer.name)
                result = FenceResult(False, f"raised {type(exc).__name__}")
            # A third party's message may echo a credential: never into a log, a status or a hook.
            result = FenceResult(result.off, fencer.scrub(result.message, params))
            log.warning("node %s: fencer #%d %s: %s (%s)", name, i, fencer.name,
                        "power off confirmed" if result.off else "failed", result.message)
            if result.off:
                return FenceResult(True, f"#{i} {fencer.name}: {result.message}")
            messages.append(f"#{i} {fencer.name}: {result.message}")
        return FenceResult(False, "; ".join(messages))

    def _fenced(self, name: str, result: FenceResult) -> None:
        self._mark_fenced(name, {"state": "fenced", "message": result.message, "at": time.time()})
        self.d.store.count("fences")
        if self.d.view.snapshot().config.successful_fence == "recover":
            recover(self.d, name)
        else:
            self.d.store.update_node(name, lambda n: replace(n, domain_state="flushed"))

    def _mark_fenced(self, name: str, status: dict) -> None:
        """The node is off, or has provably stopped its VMs: ``fenced``, no more fencing attempts."""
        self.d.store.update_node(name, lambda n: replace(n, daemon_state="fenced", domain_state="fence-flush"))
        self.d.plugins.notify("pvc_node_state_changed", node=name, kind="daemon", old="dead", new="fenced")
        self.d.store.set_fencing(name, status)
        self._retry.pop(name, None)
        self._suspect.pop(name, None)

    def _failed(self, name: str, result: FenceResult, now: float, silent_for: float) -> None:
        cfg = self.d.view.snapshot().config
        _, backoff = self._retry.get(name, (0.0, 0.0))
        backoff = min(cfg.fence_retry_max, max(1.0, backoff * 2))
        self._retry[name] = (time.monotonic() + backoff, backoff)  # from now: an attempt can take seconds
        attempts = self.d.store.get_fencing().get(name, {}).get("attempts", 0) + 1
        self.d.store.count("fences_failed")
        armed = self.d.view.snapshot().nodes.get(name)
        armed = armed.self_fence_deadline if armed is not None else 0.0
        if cfg.failed_fence == "recover" and armed > 0 and silent_for > armed + cfg.keepalive_limit:
            # Silent for longer than the self-fence deadline it last published: if alive, it has
            # stopped its VMs itself. That is its fence: we stop trying ours, and it rejoins like
            # any fenced node. A node that published no deadline (it was disarmed) is never taken
            # as self-fenced, whatever the setting says now.
            log.warning("node %s: fencing failed (%s); silent %.0fs, past its self-fence deadline: taking it as "
                        "self-fenced and recovering its VMs", name, result.message, silent_for)
            self._mark_fenced(name, {"state": "self-fenced", "attempts": attempts, "at": time.time(),
                                     "message": f"silent {silent_for:.0f}s, past its self-fence deadline; "
                                                f"every fencer failed: {result.message}"})
            recover(self.d, name)
            return
        self.d.store.set_fencing(name, {"state": "failed", "message": result.message, "attempts": attempts,
                                        "at": time.time(), "retry_in": backoff})
        log.error("node %s: fencing failed (attempt %d, next in %gs): %s; its VMs are NOT recovered", name,
                  attempts, backoff, result.message)


def detection(cfg: ClusterConfig, node: Node) -> tuple[float, float]:
    """Seconds of silence after which ``node`` is suspect, and before which it is never declared dead.

    The settings, but never shorter than the node's own published timing allows (a setting
    written around the API's checks, or a node that joined with slower timing, fences nobody).
    """
    timing = Timing.of_node(node)
    suspect_after = max(cfg.keepalive_limit, timing.suspect_after())
    return suspect_after, max(suspect_after + cfg.fence_grace, timing.dead_after())


def confirm_off(store: Store, node: str) -> Node:
    """Record an operator's word that dead ``node`` is powered off, for when no fencer can say so.

    Taken as a confirmed fence by the primary at its next look (its VMs are recovered), and
    only while the node is ``dead``: a running or stopped node is refused, and the word is
    for this death only (the node's last keepalive): a node that writes again is no longer
    covered by it. With the self-fence disarmed (``failed_fence = none``, the default) this is the
    way on when a node's BMC is gone with its power.
    """
    current = store.get_node(node)
    if current.daemon_state != "dead":
        raise ConflictError(f"node {node} is {current.daemon_state}, not dead: only a node the cluster could not "
                            "fence can be confirmed off", "node")
    store.set_fencing(node, {**store.get_fencing().get(node, {}),
                             "confirmed_off": {"at": time.time(), "keepalive": current.keepalive}})
    return current


# -- recovery ----------------------------------------------------------------------------------


def recover(d: "NodeDaemon", dead: str) -> None:
    """Start the dead node's VMs elsewhere by placement; park those with no valid target."""
    with placing(d.store, d.view, timeout=30.0) as fresh:
        moved, parked = _recover_placed(d, dead, fresh())
    d.store.update_node(dead, lambda n: replace(n, domain_state="flushed") if n.domain_state == "fence-flush" else n)
    log.warning("node %s: recovered %d VM(s) %s; %d left stopped with autostart %s", dead, len(moved), moved,
                len(parked), parked)
    d.plugins.notify("pvc_node_recovered", node=dead, moved=moved, parked=parked)


def _recover_placed(d: "NodeDaemon", dead: str, cluster: Cluster) -> tuple[dict[str, str], list[str]]:
    """Place and write each of the dead node's VMs (under the placement lock): VM -> node, and the parked."""
    moved: dict[str, str] = {}
    parked: list[str] = []
    pending: dict[str, str] = {}
    for vm in sorted(cluster.vms.values(), key=lambda v: v.name):
        mig = vm.migration
        if mig is not None and mig.target == dead and vm.node != dead:
            # It was on its way to the dead node: it stays where it is and runs there.
            d.store.update_vm(vm.name, lambda v: replace(v, migration=None, state="start",
                                                         reason=f"migration to {dead} abandoned: {dead} fenced"))
            continue
        if vm.node != dead or (vm.state not in RUNNING_STATES and mig is None):
            continue
        decision = place(replace(vm, migration=None), with_pending(cluster, pending), d.plugins.selectors)
        if decision.target is None:
            d.store.update_vm(vm.name, lambda v: _parked(v, dead, decision.reason))
            parked.append(vm.name)
            continue
        d.store.update_vm(vm.name, lambda v, t=decision.target: replace(
            v, node=t, last_node=_home_after(v, dead, t), state="start", migration=None,
            reason=f"recovered from {dead} (fenced)"))
        pending[vm.name] = moved[vm.name] = decision.target
    return moved, parked


def _home_after(vm: VM, dead: str, target: str) -> str:
    """The node a recovered VM returns to on ready: the home it was already away from, else the dead node
    (none when the recovery took it home)."""
    home = vm.last_node or dead
    return "" if home == target else home


def _parked(vm: VM, dead: str, why: str) -> VM:
    return replace(vm, state="stop", migration=None, meta=replace(vm.meta, node_autostart=True),
                   reason=f"{dead} fenced; {why}")


def invariant_violations(cluster: Cluster) -> list[str]:
    """VMs running on two nodes, or not running where they should (from nodes' published lists)."""
    where: dict[str, list[str]] = {}
    for node in cluster.nodes.values():
        if node.daemon_state in ("run",):
            for vm in node.running_vms:
                where.setdefault(vm, []).append(node.name)
    out = [f"VM {vm} runs on {', '.join(nodes)}" for vm, nodes in where.items() if len(nodes) > 1]
    for vm in cluster.vms.values():
        if vm.state == "start" and vm.migration is None and where.get(vm.name, []) != [vm.node]:
            out.append(f"VM {vm.name} should run on {vm.node} but runs on {where.get(vm.name) or 'nothing'}")
    return out

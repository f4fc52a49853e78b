"""Dead-node detection, and fencing through fence plugins (recovery of the dead node's VMs: pvccore.node.recovery).

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

In maintenance mode (the cluster setting ``maintenance``) nobody is fenced: a node
silent past ``keepalive_limit`` is only reported (fence status ``held``), nothing
is recovered, and fence retries wait. When maintenance ends every node's clock
restarts, as after a hiccup: a node that died meanwhile is declared dead and
fenced once it has been silent for the usual time after that moment, not before.

The saving throw protects a healthy node that is only slow; a node whose power is
off is not one. So as soon as a node is suspect, the fencer acting on it asks its
fencers that can look at the power without changing it (``is_off``), in a thread of
its own, once per silence. A node reported off is declared dead and fenced at
once: the fence confirms what the BMC already says, and a power loss is recovered
``fence_grace`` (and the wait for the node's ZooKeeper session) sooner. A node
reported on, or whose power nobody can tell, waits out the saving throw as before.

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
from typing import Callable

from pvccore.domain.models import ClusterConfig, FenceStatus, Node, Timing
from pvccore.domain.states import DaemonState, DomainState, FenceAction, FenceOutcome
from pvccore.errors import LockTimeout, PVCError
from pvccore.hookspecs import FenceResult
from pvccore.node.context import NodeContext
from pvccore.node.recovery import recover
from pvccore.zk.connection import CONNECTED

log = logging.getLogger(__name__)


class FenceMonitor:
    """Watches every other node's keepalive; declares, fences and recovers the dead (see the module docstring).

    ``serving`` says whether this node carries the primary role right now (only the primary fences,
    except the primary itself); ``clock`` is the monotonic clock silences are timed on.
    """

    def __init__(self, ctx: NodeContext, serving: Callable[[], bool], clock: Callable[[], float] = time.monotonic):
        self.ctx = ctx
        self._serving = serving
        self._clock = clock
        self._seen: dict[str, tuple[float, float]] = {}  # node -> (keepalive value, when we saw it change)
        self._spoke: set[str] = set()  # nodes whose keepalive this monitor saw change (not just a first look)
        self._suspect: dict[str, float] = {}  # node -> since when
        self._retry: dict[str, tuple[float, float]] = {}  # node -> (next attempt at, current back-off)
        # Power checks of suspect nodes (see the module docstring), each keyed by the keepalive value of the
        # silence it was made in: a node that writes again, then falls silent, is looked at afresh.
        self._looks: dict[str, tuple[float, bool]] = {}  # node -> (the silence looked at, reported off)
        self._looks_lock = threading.Lock()
        self._held: set[str] = set()  # nodes reported silent in maintenance mode (fence status ``held``)
        self._maintenance = False  # maintenance mode as last seen: its end restarts every clock
        self._wake = threading.Event()
        self._reset = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not getattr(self.ctx.view, "follows_liveness", True):
            raise RuntimeError("a fence monitor needs a view that follows the nodes' liveness records")
        self.ctx.store.connection.subscribe(self._on_connection)
        self._thread = threading.Thread(target=self._loop, name=f"{self.ctx.name}-fence", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._wake.set()  # (the daemon has set ``stopping``)
        if self._thread is not None:
            self._thread.join(timeout)

    def _on_connection(self, state: str) -> None:
        if state != CONNECTED:
            self._reset.set()

    def _loop(self) -> None:
        tick = min(0.5, self.ctx.cfg.keepalive_interval / 2)
        while True:
            self._wake.wait(tick)
            self._wake.clear()
            if self.ctx.stopping.is_set():
                return
            try:
                self.tick(self._clock())
            except Exception:
                log.exception("fence monitor tick failed")

    # -- detection ----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        if self._reset.is_set() or not self.ctx.store.connection.connected:
            self._reset.clear()
            self._seen.clear()  # we were cut off ourselves: start every node's clock again
            self._spoke.clear()
            self._suspect.clear()
            with self._looks_lock:
                self._looks.clear()
            return
        snap = self.ctx.view.snapshot()
        cfg = snap.config
        if self._maintenance and not cfg.maintenance:
            log.warning("maintenance mode ended: every node's silence is timed afresh from now")
            self._seen.clear()
            self._spoke.clear()
            self._suspect.clear()
            self._retry.clear()
            with self._looks_lock:
                self._looks.clear()
            for name in sorted(self._held | self._held_shown()):
                self._release(name)
        self._maintenance = cfg.maintenance
        self._held |= self._held_shown()  # reported by this monitor, or by an earlier primary's
        primary = snap.primary.node if snap.primary else None
        i_am_primary = primary == self.ctx.name and self._serving()
        for node in snap.nodes.values():
            name = node.name
            last_value, since = self._seen.get(name, (None, now))
            if node.keepalive != last_value:
                if name in self._seen:
                    self._spoke.add(name)
                self._seen[name] = (node.keepalive, now)
                since = now
            if name == self.ctx.name:
                # A failed fencing of this node left behind is cleared while its keepalive is seen written (not
                # by a node whose keepalive stopped, even if this thread of it still runs).
                if now - since <= detection(cfg, node)[0]:
                    self._forget(name, i_am_primary)
                continue
            if node.daemon_state in (DaemonState.STOP, DaemonState.INIT):  # a clean stop, or starting up: not a failure
                self._forget(name, i_am_primary)
                continue
            if node.daemon_state == DaemonState.FENCED:
                continue
            suspect_after, dead_after = detection(cfg, node)
            if node.daemon_state == DaemonState.RUN and now - since <= suspect_after:
                self._forget(name, i_am_primary)  # alive (again): the saving throw succeeded
                continue
            if not (i_am_primary or name == primary):
                continue  # only the primary fences, except the primary itself
            if cfg.maintenance:
                self._hold(name, now - since)
                continue
            if node.daemon_state == DaemonState.RUN:
                started = self._suspect.setdefault(name, now)
                if now - started < cfg.fence_grace or now - since < dead_after:
                    if not self._reported_off(node):
                        continue
                    log.warning("node %s: silent for %.1fs and reported powered off: no saving throw", name,
                                now - since)
            next_try, _ = self._retry.get(name, (0.0, 0.0))
            if now >= next_try or (node.daemon_state == DaemonState.DEAD and self._confirmed_off(node)):
                self._fence(node, now, now - since)

    def _reported_off(self, node: Node) -> bool:
        """Whether ``node`` was reported powered off in this silence; starts the check if none was made."""
        with self._looks_lock:
            silence, off = self._looks.get(node.name, (None, False))
            if silence == node.keepalive:
                return off
            self._looks[node.name] = (node.keepalive, False)
        threading.Thread(target=self._look, args=(node.name, node.keepalive), daemon=True,
                         name=f"{self.ctx.name}-power-{node.name}").start()
        return False

    def _look(self, name: str, keepalive: float) -> None:
        off = self.power_is_off(name)
        if off:
            with self._looks_lock:
                if self._looks.get(name, (None,))[0] == keepalive:  # still the same silence
                    self._looks[name] = (keepalive, True)
            self._wake.set()  # the monitor acts on it now, not at its next tick

    def power_is_off(self, name: str) -> bool:
        """Whether a fencer of the node's configuration that can look at the power reports it off."""
        try:
            entries = self.ctx.store.get_fence_config(name)
        except Exception as exc:  # ZooKeeper gone, say: no answer, and the saving throw applies
            log.warning("node %s: cannot read its fence configuration to check its power: %s", name, exc)
            return False
        for entry in entries:
            fencer = self.ctx.plugins.fencers.get(entry.get("fencer", ""))
            if fencer is None or fencer.is_off is None:
                continue
            try:
                if fencer.is_off(name, dict(entry.get("params") or {})) is True:
                    return True
            except Exception:  # a fencer bug is no answer; the saving throw still applies
                log.exception("fencer %s raised checking the power of %s", fencer.name, name)
        return False

    def _hold(self, name: str, silent_for: float) -> None:
        """Maintenance mode: report the silent node (once per silence), fence nothing."""
        if name in self._held:
            return
        log.warning("node %s: silent for %.1fs; maintenance mode is on: not fenced, its VMs not recovered", name,
                    silent_for)
        try:
            self.ctx.store.update_fencing(name, lambda cur: replace(
                cur or FenceStatus(), state=FenceOutcome.HELD, at=time.time() - silent_for, retry_in=0.0,
                message="silent; maintenance mode is on: not fenced, its VMs not recovered"))
            self._held.add(name)
        except PVCError as exc:
            log.warning("could not report the silence of %s: %s", name, exc.message)

    def _release(self, name: str) -> None:
        """Take back a ``held`` report (the node spoke again, or maintenance ended); keep anything else."""
        try:
            self.ctx.store.update_fencing(name, lambda cur: cur if cur is None or cur.state != FenceOutcome.HELD
                                          else (replace(cur, state=None, message="", at=0.0)
                                                if cur.confirmed_off is not None else None))
            self._held.discard(name)
        except PVCError as exc:
            log.warning("could not clear the held report of %s: %s", name, exc.message)

    def _held_shown(self) -> set[str]:
        """Nodes whose fence status is ``held``, as the view shows it (reported by an earlier primary, say)."""
        return {n for n, status in self.ctx.view.shown("fencing").items() if status.state == FenceOutcome.HELD}

    def _forget(self, name: str, primary: bool = False) -> None:
        """The node is alive or stopped cleanly: nothing of its silence is kept. The primary also clears a failed
        fencing that an earlier primary left behind (this one never retried it, so it holds no retry of its own),
        once it has seen the node's keepalive change itself: a first look tells nothing of a silence."""
        if name in self._held:
            self._release(name)
        self._suspect.pop(name, None)
        with self._looks_lock:
            self._looks.pop(name, None)
        left = (primary and name in self._spoke
                and getattr(self.ctx.view.shown("fencing").get(name), "state", None) == FenceOutcome.FAILED)
        if self._retry.pop(name, None) is not None or left:
            try:
                self.ctx.store.set_fencing(name, None)
            except PVCError as exc:
                log.warning("could not clear the fence status of %s: %s", name, exc.message)

    # -- fencing ------------------------------------------------------------------------

    def _fence(self, node: Node, now: float, silent_for: float) -> None:
        name = node.name
        try:
            with self.ctx.store.lock("fence", timeout=1.0, identifier=self.ctx.name):
                current = self.ctx.store.get_node(name)
                if current.daemon_state not in (DaemonState.RUN, DaemonState.DEAD) \
                        or current.keepalive != node.keepalive:
                    return  # another fencer acted, or it came back
                if current.daemon_state == DaemonState.RUN:
                    log.error("node %s: no keepalive for %.1fs: declaring it dead", name, silent_for)
                    self.ctx.store.update_node(name, lambda n: replace(n, daemon_state=DaemonState.DEAD)
                                               if n.daemon_state == DaemonState.RUN else n)
                    self.ctx.plugins.notify("pvc_node_state_changed", node=name, kind="daemon",
                                            old=str(DaemonState.RUN), new=str(DaemonState.DEAD))
                if current.daemon_state == DaemonState.DEAD and self._confirmed_off(current):
                    result = FenceResult(True, "power-off confirmed by the operator (pvc node confirm-off)")
                else:
                    result = self.fence_node(name)
                self.ctx.plugins.notify("pvc_node_fenced", node=name, result=result)
                if result.off:
                    self._fenced(name, result)
                else:
                    # Fencers can take seconds to fail: the back-off counts from the end of the attempt, and
                    # a node silent all along (same keepalive) was silent for those seconds too.
                    end = self._clock()
                    after = self.ctx.store.get_node(name)
                    self._failed(name, result, end,
                                 silent_for + (end - now) if after.keepalive == node.keepalive else silent_for)
        except LockTimeout:
            return  # another coordinator is fencing: look again next tick

    def _confirmed_off(self, node: Node) -> bool:
        """The operator confirmed this death of the node (its last keepalive), not an earlier one."""
        status = self.ctx.store.get_fencing().get(node.name)
        return status is not None and status.confirms(node)

    def fence_node(self, name: str) -> FenceResult:
        """Try each entry of the node's fence configuration in order until one confirms power off."""
        entries = self.ctx.store.get_fence_config(name)
        if not entries:
            return FenceResult(False, "no fence configuration for this node")
        messages = []
        for i, entry in enumerate(entries, start=1):
            fencer = self.ctx.plugins.fencers.get(entry.get("fencer", ""))
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
        self._mark_fenced(name, FenceStatus(FenceOutcome.FENCED, result.message, at=time.time()))
        self.ctx.store.count("fences")
        if self.ctx.view.snapshot().config.successful_fence == FenceAction.RECOVER:
            recover(self.ctx, name)
        else:
            self.ctx.store.update_node(name, lambda n: replace(n, domain_state=DomainState.FLUSHED))

    def _mark_fenced(self, name: str, status: FenceStatus) -> None:
        """The node is off, or has provably stopped its VMs: ``fenced``, no more fencing attempts."""
        self.ctx.store.update_node(name, lambda n: replace(n, daemon_state=DaemonState.FENCED,
                                                           domain_state=DomainState.FENCE_FLUSH))
        self.ctx.plugins.notify("pvc_node_state_changed", node=name, kind="daemon", old=str(DaemonState.DEAD),
                                new=str(DaemonState.FENCED))
        self.ctx.store.set_fencing(name, status)
        self._retry.pop(name, None)
        self._suspect.pop(name, None)

    def _failed(self, name: str, result: FenceResult, now: float, silent_for: float) -> None:
        cfg = self.ctx.view.snapshot().config
        _, backoff = self._retry.get(name, (0.0, 0.0))
        backoff = min(cfg.fence_retry_max, max(1.0, backoff * 2))
        self._retry[name] = (now + backoff, backoff)
        self.ctx.store.count("fences_failed")
        armed = self.ctx.view.snapshot().nodes.get(name)
        armed = armed.self_fence_deadline if armed is not None else 0.0
        if cfg.failed_fence == FenceAction.RECOVER and armed > 0 and silent_for > armed + cfg.keepalive_limit:
            # Silent for longer than the self-fence deadline it last published: if alive, it has
            # stopped its VMs itself. That is its fence: we stop trying ours, and it rejoins like
            # any fenced node. A node that published no deadline (it was disarmed) is never taken
            # as self-fenced, whatever the setting says now.
            log.warning("node %s: fencing failed (%s); silent %.0fs, past its self-fence deadline: taking it as "
                        "self-fenced and recovering its VMs", name, result.message, silent_for)
            before = self.ctx.store.get_fencing().get(name)
            self._mark_fenced(name, FenceStatus(
                FenceOutcome.SELF_FENCED, f"silent {silent_for:.0f}s, past its self-fence deadline; every fencer "
                f"failed: {result.message}", attempts=(before.attempts if before else 0) + 1, at=time.time()))
            recover(self.ctx, name)
            return
        # Compare-and-set: an operator's confirm-off written meanwhile is kept.
        status = self.ctx.store.update_fencing(name, lambda cur: replace(
            cur or FenceStatus(), state=FenceOutcome.FAILED, message=result.message,
            attempts=(cur.attempts if cur else 0) + 1, at=time.time(), retry_in=backoff))
        log.error("node %s: fencing failed (attempt %d, next in %gs): %s; its VMs are NOT recovered", name,
                  status.attempts, backoff, result.message)


def detection(cfg: ClusterConfig, node: Node) -> tuple[float, float]:
    """Seconds of silence after which ``node`` is suspect, and before which it is never declared dead.

    The settings, but never shorter than the node's own published timing allows (a setting
    written around the API's checks, or a node that joined with slower timing, fences nobody).
    """
    timing = Timing.of_node(node)
    suspect_after = max(cfg.keepalive_limit, timing.suspect_after())
    return suspect_after, max(suspect_after + cfg.fence_grace, timing.dead_after())

"""The primary coordinator: election, and the phased handover that moves it, on coordinator nodes.

``<root>/primary`` names the primary. A coordinator claims it with a
compare-and-set when there is none yet, or when the named node stopped cleanly
or was fenced (a dead, unfenced primary keeps the role: recovery waits for the
fence). The primary carries the floating IPs and runs the cluster services (the
API when ``api_config`` is set, and what plugins start in ``start-services``).

A planned handover (``<root>/handover``) runs in a subthread on both nodes. Each
side takes, before it says it is ready, the write locks of the steps it owes;
the other side waits on a read lock of that step, which it gets only once the
step is done. Locks are under ``locks/handover/<id>/``::

    old primary (relinquish)                 new primary (takeover)
    W(stop), W(release); "relinquish-ready"
                                             W(add); "takeover-ready"
    stop services; "services-stopped";
    release stop                  ---->      R(stop)
                                             add IPs + gratuitous ARP; "ips-added";
    R(add)                        <----      release add
    remove IPs; "ips-released";
    release release               ---->      R(release)
                                             primary record -> self; start services; "done"

The new primary adds the addresses and announces them before the old one
removes them: measured here, that order lost no ping while the reverse lost 2
of 160 in the cluster in a box (bench/box.py). A lock granted because its holder died
is told apart from a finished step by the phase in the handover record: either
side that sees the other fail rolls itself back and writes ``failed`` with a
reason, and the primary record only changes at the very end, so there is always
exactly one primary.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Callable

from kazoo.exceptions import KazooException

from pvccore.domain.models import Cluster, Handover, PrimaryRecord
from pvccore.domain.states import CoordinatorState, DaemonState
from pvccore.domain.states import HandoverPhase as Phase
from pvccore.errors import PVCError
from pvccore.node import network
from pvccore.node.context import NodeContext
from pvccore.node.network import FloatingIP

log = logging.getLogger(__name__)


class HandoverFailed(Exception):
    pass


class Coordinator:
    """This node's part in electing the primary and in handing it over (a coordinator node only).

    ``network`` adds and removes the floating IPs (:mod:`pvccore.node.network`, or a fake).
    """

    def __init__(self, ctx: NodeContext, network=network):
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.network = network
        self.ips = [FloatingIP.parse(text) for text in self.cfg.floating_ips]
        self.serving = False  # this node carries the IPs and runs the services
        self._thread: threading.Thread | None = None
        self._cleaned = False
        self._handled: set[str] = set()  # handover ids whose side this daemon has run

    # -- called from the daemon's reconcile loop (never blocks) ---------------------------

    def reconcile(self, snap: Cluster) -> None:
        if not self.cfg.coordinator or self.busy:
            return
        me, record, handover = self.ctx.name, snap.primary, snap.handover
        if self.ctx.leaving.is_set():  # stopping: take nothing on; refuse a takeover aimed at us
            if handover is not None and handover.active and handover.target == me:
                self._fail(handover, f"{me} is stopping")
            return
        if handover is not None and handover.active and me in (handover.source, handover.target):
            if handover.id not in self._handled:  # our side runs once; the record then waits for the other
                self._handled.add(handover.id)
                self._run_in_thread(self._relinquish if handover.source == me else self._takeover, handover)
        elif record is not None and record.node == me:
            if not self.serving:  # elected earlier, or restarted while primary: take the role up again
                self._run_in_thread(self._resume, record)
        elif claimable(record, snap, me):
            self._run_in_thread(self._elect, record)
        elif not self._cleaned:  # a secondary carries no floating IP (left over from a crash)
            self._cleaned = True
            self._run_in_thread(self._drop_ips)

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run_in_thread(self, fn: Callable, *args) -> None:
        thread = threading.Thread(target=self._logged, args=(fn, *args), daemon=True,
                                  name=f"{self.ctx.name}-{fn.__name__.strip('_')}")
        thread.start()
        self._thread = thread  # published once started, so join() never meets an unstarted thread

    def _logged(self, fn: Callable, *args) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("coordinator: %s failed", fn.__name__)
        finally:
            self.ctx.reconcile_soon()

    # -- becoming primary without a handover ---------------------------------------------

    def _elect(self, seen: PrimaryRecord | None) -> None:
        won = self.ctx.store.claim_primary(self.ctx.name, lambda current: current == seen)
        if won is None:
            return  # another coordinator was faster
        log.info("elected primary (epoch %d; before: %s)", won.epoch, seen.node if seen else "none")
        self._serve(old=seen.node if seen else None)

    def _resume(self, record: PrimaryRecord) -> None:
        log.info("primary (epoch %d): taking up the role", record.epoch)
        self._serve(old=None)

    def _serve(self, old: str | None) -> None:
        self._set_state(CoordinatorState.TAKEOVER)
        self._add_ips(old)
        self._start_services(old)
        self._set_state(CoordinatorState.PRIMARY)
        self._index_vms()

    def _index_vms(self) -> None:
        """Make sure every VM is indexed under the nodes that act on it (a cluster written by an older version)."""
        try:
            made = self.ctx.store.index_vms(self.ctx.view.snapshot().vms.values())
        except Exception as exc:  # ZooKeeper away, say: the next primary looks again
            log.warning("could not check the VM index: %s", getattr(exc, "message", exc))
            return
        if made:
            log.warning("indexed %d VM placement(s) that were missing", made)

    def _drop_ips(self) -> None:
        for fip in self.ips:
            if self.network.present(fip):
                log.warning("removing floating IP %s: this node is not primary", fip)
                self.network.remove(fip)

    # -- stopping ---------------------------------------------------------------------------

    def step_down(self, snap: Cluster) -> None:
        """On a clean stop: hand over to another running coordinator, or just let go of everything."""
        if not self.serving:
            return
        others = [n.name for n in snap.nodes.values() if n.name != self.ctx.name and n.takes_primary]
        record = self._primary_record()
        if others and record is not None and record.node == self.ctx.name:  # only the primary hands it over
            try:
                handover = self.ctx.store.start_handover(Handover.new(self.ctx.name, others[0]))
            except PVCError as exc:
                log.warning("no handover on stop: %s", exc.message)
            except KazooException as exc:  # our session ended meanwhile (frozen past it, say): let go below
                log.warning("no handover on stop: ZooKeeper %s", type(exc).__name__)
            else:
                self._handled.add(handover.id)
                self._relinquish(handover)  # in this thread: the stop waits for it
        if self.serving:
            self._stop_services(new=None)
            self._remove_ips(new=None)
            self._set_state(CoordinatorState.SECONDARY)

    def _primary_record(self) -> PrimaryRecord | None:
        try:
            return self.ctx.store.get_primary()
        except (PVCError, KazooException) as exc:
            log.warning("could not read the primary record: %s", getattr(exc, "message", type(exc).__name__))
            return None

    # -- the two sides of a handover ------------------------------------------------------------

    def _lock(self, h: Handover, step: str, kind: str):
        return self.ctx.store.acquire(f"handover/{h.id}/{step}", kind=kind, timeout=self.cfg.handover_timeout,
                                      identifier=f"{self.ctx.name}:{kind}")

    def _phase(self, h: Handover, expected: tuple[Phase, ...], new: Phase, reason: str = "") -> Handover:
        """Advance the record, only from one of ``expected`` phases of this same handover."""

        def step(cur: Handover) -> Handover:
            if cur.id != h.id or cur.phase not in expected:
                raise HandoverFailed(f"handover is {cur.phase}, not {'/'.join(expected)}"
                                     + (f": {cur.reason}" if cur.reason else ""))
            return replace(cur, phase=new, reason=reason,
                           finished=time.time() if new in (Phase.DONE, Phase.FAILED) else 0.0)

        return self.ctx.store.update_handover(step)

    def _await(self, h: Handover, *phases: Phase) -> Handover:
        other = h.target if h.source == self.ctx.name else h.source

        def gone(c: Cluster) -> bool:
            node = c.nodes.get(other)
            return node is None or node.daemon_state != DaemonState.RUN

        ok = self.ctx.view.wait_for(lambda c: c.handover is None or c.handover.id != h.id
                                    or c.handover.phase in phases + (Phase.FAILED,) or gone(c),
                                    self.cfg.handover_timeout)
        snap = self.ctx.view.snapshot()
        cur = snap.handover
        if cur is not None and cur.id == h.id and cur.phase not in phases + (Phase.FAILED,) and gone(snap):
            raise HandoverFailed(f"{other} is not running")
        if cur is None or cur.id != h.id or cur.phase == Phase.FAILED or not ok:
            why = cur.reason if cur is not None and cur.phase == Phase.FAILED else \
                f"no {'/'.join(phases)} within {self.cfg.handover_timeout:g}s"
            raise HandoverFailed(why)
        return cur

    def _after(self, h: Handover, step: str, phase: Phase) -> None:
        """Wait (read lock) until the other side released ``step``, then check it really reached ``phase``."""
        lock = self._lock(h, step, "read")
        lock.release()
        cur = self.ctx.store.get_handover()
        if cur is None or cur.id != h.id or not cur.phase.reached(phase):
            raise HandoverFailed(f"the other side let go of {step} without finishing it "
                                 f"({cur.phase if cur else 'no record'})")

    def _relinquish(self, h: Handover) -> None:
        log.info("handover %s: relinquishing primary to %s", h.id, h.target)
        held, released_ips = [], False
        try:
            stop, release = self._lock(h, "stop", "write"), self._lock(h, "release", "write")
            held = [stop, release]
            self._set_state(CoordinatorState.RELINQUISH)
            self._phase(h, (Phase.REQUESTED,), Phase.RELINQUISH_READY)
            self._await(h, Phase.TAKEOVER_READY)
            self._stop_services(new=h.target)
            self._phase(h, (Phase.TAKEOVER_READY,), Phase.SERVICES_STOPPED)
            stop.release()
            self._after(h, "add", Phase.IPS_ADDED)
            self._remove_ips(new=h.target)
            released_ips = True
            self._phase(h, (Phase.IPS_ADDED,), Phase.IPS_RELEASED)
            self._set_state(CoordinatorState.SECONDARY)
            release.release()
            log.info("handover %s: %s is taking over", h.id, h.target)
        except (HandoverFailed, PVCError) as exc:
            why = getattr(exc, "message", str(exc))
            log.error("handover %s failed on %s: %s; staying primary", h.id, self.ctx.name, why)
            self._fail(h, why)
            if released_ips:
                return  # the record still names us: reconcile resumes the role
            self._add_ips(None)
            self._start_services(None)
            self._set_state(CoordinatorState.PRIMARY)
        finally:
            for lock in held:
                lock.release()

    def _takeover(self, h: Handover) -> None:
        log.info("handover %s: taking over primary from %s", h.id, h.source)
        added, held = False, []
        try:
            self._await(h, Phase.RELINQUISH_READY)
            add = self._lock(h, "add", "write")
            held = [add]
            self._set_state(CoordinatorState.TAKEOVER)
            self._phase(h, (Phase.RELINQUISH_READY,), Phase.TAKEOVER_READY)
            self._after(h, "stop", Phase.SERVICES_STOPPED)
            self._add_ips(h.source)
            added = True
            self._phase(h, (Phase.SERVICES_STOPPED,), Phase.IPS_ADDED)
            add.release()
            self._after(h, "release", Phase.IPS_RELEASED)
            won = self.ctx.store.claim_primary(self.ctx.name, lambda cur: cur is not None and cur.node == h.source)
            if won is None:
                raise HandoverFailed("the primary record changed under the handover")
            self._start_services(h.source)
            self._set_state(CoordinatorState.PRIMARY)
            self._phase(h, (Phase.IPS_RELEASED,), Phase.DONE)
            log.info("handover %s: primary now (epoch %d)", h.id, won.epoch)
            self._index_vms()
        except (HandoverFailed, PVCError) as exc:
            why = getattr(exc, "message", str(exc))
            log.error("handover %s failed on %s: %s", h.id, self.ctx.name, why)
            self._fail(h, why)
            if added:
                self._remove_ips(None)
            self.serving = False  # services were not started: they start only once the record names us
            self._set_state(CoordinatorState.SECONDARY)
        finally:
            for lock in held:
                lock.release()

    def _fail(self, h: Handover, why: str) -> None:
        try:
            self.ctx.store.update_handover(lambda cur: replace(cur, phase=Phase.FAILED, reason=why, finished=time.time())
                                         if cur.id == h.id and cur.active else cur)
        except PVCError as exc:
            log.warning("could not record the failed handover: %s", exc.message)

    # -- what a primary carries -------------------------------------------------------------------

    def _notify(self, phase: str, role: str, old: str | None, new: str | None) -> None:
        self.ctx.plugins.notify("pvc_handover_phase", phase=phase, node=self.ctx.name, role=role, old_primary=old,
                              new_primary=new)

    def _add_ips(self, old: str | None) -> None:
        for fip in self.ips:
            self.network.add(fip, self.cfg.arp_count, self.cfg.arp_interval)
        self.serving = True
        self._notify("move-ips", "takeover", old, self.ctx.name)

    def _remove_ips(self, new: str | None) -> None:
        self._notify("move-ips", "relinquish", self.ctx.name, new)
        for fip in self.ips:
            self.network.remove(fip)

    def _start_services(self, old: str | None) -> None:
        """The services that move with the primary are plugins' (the API's too: pvcplugins.lifecycle.api)."""
        self.serving = True
        self._notify("start-services", "takeover", old, self.ctx.name)

    def _stop_services(self, new: str | None) -> None:
        self._notify("stop-services", "relinquish", self.ctx.name, new)
        self.serving = False

    def _set_state(self, state: CoordinatorState) -> None:
        self.ctx.set_node(lambda n: True, coordinator_state=state)


def claimable(record: PrimaryRecord | None, snap: Cluster, me: str) -> bool:
    """Whether a coordinator may claim the primary role now."""
    mine = snap.nodes.get(me)
    if mine is None or mine.daemon_state != DaemonState.RUN:
        return False
    if record is None:
        return True
    holder = snap.nodes.get(record.node)
    return holder is None or holder.daemon_state in (DaemonState.STOP, DaemonState.FENCED)

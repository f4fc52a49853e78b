"""The primary's fault monitor: what needs an operator, written to ``faults/`` with its history.

Runs in every coordinator's daemon and acts only while this node serves as primary. Every
:data:`INTERVAL` it takes the conditions of the cluster as its view shows them
(pvccore.domain.faults), adds the ZooKeeper servers of its connect string that do not answer,
and folds them into the stored records: new ones are raised, cleared ones marked inactive, and
an active one's ``last_seen`` is refreshed now and then. Each record is written with a
compare-and-set, so an operator's acknowledgement written meanwhile is kept.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Callable

from kazoo.exceptions import KazooException
from kazoo.handlers.threading import KazooTimeoutError

from pvccore.domain.faults import conditions, merged
from pvccore.errors import PVCError
from pvccore.node.context import NodeContext

log = logging.getLogger(__name__)

INTERVAL = 2.0  # seconds between looks
PROBE_EVERY = 10.0  # seconds between probes of the ZooKeeper servers
PROBE_TIMEOUT = 1.0  # seconds a server has to accept a connection and answer "ruok"
KEEP_CLEARED = 7 * 24 * 3600.0  # seconds a cleared fault is kept (then deleted by the primary)


def servers(hosts: str) -> list[tuple[str, int]]:
    """The servers of a ZooKeeper connect string (``h1:2181,h2:2181/chroot``, IPv6 in brackets)."""
    out = []
    for part in hosts.split("/", 1)[0].split(","):
        part = part.strip()
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit() or (host.count(":") and not host.startswith("[")):
            host, port = part, "2181"
        out.append((host.strip("[]"), int(port)))
    return out


def probe(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> str:
    """Empty when the server takes a connection (and answers ``ruok`` if its four-letter words are on);
    otherwise why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"ruok")
            answer = b""
            try:
                while len(answer) < 256 and (chunk := s.recv(256)):
                    answer += chunk
            except socket.timeout:
                pass  # it took the connection and says nothing more: four-letter words may be off
            # "imok"; or, on 3.5+ where ruok is not allowed, "ruok is not executed because it is not in the
            # whitelist." (a server that answers is up).
            return "" if not answer or answer == b"imok" or b"not executed" in answer or b"whitelist" in answer \
                else f"answered {answer[:32]!r} to ruok"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


class FaultMonitor:
    def __init__(self, ctx: NodeContext, serving: Callable[[], bool], clock: Callable[[], float] = time.time):
        self.ctx = ctx
        self._serving = serving
        self._clock = clock
        self._down: dict[str, str] = {}
        self._probed = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"{self.ctx.name}-faults", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self.ctx.stopping.wait(INTERVAL):
            if not self._serving() or not self.ctx.store.connection.connected:
                continue
            try:
                self.tick()
            except PVCError as exc:
                log.warning("fault monitor: %s", exc.message)
            except (KazooException, KazooTimeoutError) as exc:  # ZooKeeper went away mid-look: the next one
                log.warning("fault monitor: ZooKeeper: %r", exc)
            except Exception:
                log.exception("fault monitor tick failed")

    def probe_servers(self) -> dict[str, str]:
        """The servers of this node's connect string that do not answer, with why (every PROBE_EVERY seconds)."""
        now = time.monotonic()
        if now - self._probed >= PROBE_EVERY:
            self._probed = now
            down = {}
            for host, port in servers(self.ctx.cfg.zookeeper_hosts):
                why = probe(host, port)
                if why:
                    down[f"{host}:{port}"] = why
            self._down = down
        return self._down

    def tick(self) -> None:
        store = self.ctx.store
        now = self._clock()
        current = conditions(self.ctx.view.snapshot(), self.ctx.view.shown("fencing"), self.probe_servers())
        stored = store.get_faults()
        for fault_id, fault in stored.items():  # cleared long ago: forgotten, so the list stays short
            if not fault.active and now - fault.last_seen > KEEP_CLEARED:
                try:
                    store.delete_fault(fault_id)
                except PVCError:
                    pass
        for fault_id in sorted(set(current) | {i for i, f in stored.items() if f.active}):
            condition = current.get(fault_id)
            if merged(stored.get(fault_id), condition, now) is None:
                continue  # nothing to write (read again inside the compare-and-set below when there is)
            written = store.update_fault(fault_id, lambda cur, c=condition: merged(cur, c, now))
            if condition is not None and written is not None and written.last_seen == now \
                    and written.first_seen == now:
                log.warning("fault raised: %s", condition.message)
            elif condition is None:
                log.info("fault cleared: %s", fault_id)

"""Logs an operator reads through the API: the node daemon's own, and its VMs' serial consoles.

Each daemon keeps the last lines of its own log (:class:`RecentLines`, a logging handler) and, for
every VM running here whose XML sends its serial console to a file (libvirt's ``<serial
type='file'>`` or a ``<log file=...>`` of the console), the tail of that file (read only while the
VM runs: libvirt writes it then). Every :data:`PUBLISH_EVERY` seconds what changed is written to
ZooKeeper (``logs/<node>``, ``consoles/<vm>``; tails of :data:`MAX_BYTES` and :data:`CONSOLE_BYTES`,
at most :data:`ROUND_BYTES` a round): the API serves them from there, on whichever node it runs.
Nothing is written while nothing changes.
"""

from __future__ import annotations

import collections
import logging
import os
import threading

from kazoo.exceptions import KazooException
from kazoo.handlers.threading import KazooTimeoutError

from pvccore.domain.domainxml import console_path
from pvccore.errors import PVCError
from pvccore.node.context import NodeContext

log = logging.getLogger(__name__)

PUBLISH_EVERY = 2.0  # seconds
MAX_BYTES = 64 * 1024  # of the daemon's own log kept in ZooKeeper (its tail)
CONSOLE_BYTES = 32 * 1024  # of each console kept in ZooKeeper
ROUND_BYTES = 512 * 1024  # written at most per round: chatty consoles wait their turn, ZooKeeper is not flooded
MAX_LINES = 2000  # of the daemon's own log kept in memory


def tail(text: str, limit: int = MAX_BYTES) -> str:
    """The end of ``text`` that fits ``limit`` bytes of UTF-8, from a line's start."""
    data = text.encode()
    if len(data) <= limit:
        return text
    cut = data[-limit:].decode(errors="ignore")
    return cut.split("\n", 1)[1] if "\n" in cut else cut


def read_tail(path: str, limit: int = MAX_BYTES) -> str:
    """The last ``limit`` bytes of a file, from a line's start; a console's control bytes kept as text."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - limit))
        data = fh.read(limit)
    text = data.decode(errors="replace")
    return text.split("\n", 1)[1] if size > limit and "\n" in text else text


class RecentLines(logging.Handler):
    """The last :data:`MAX_LINES` lines of this process's log, as formatted for its output."""

    def __init__(self, formatter: logging.Formatter | None = None):
        super().__init__()
        self.setFormatter(formatter or logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._lines: collections.deque[str] = collections.deque(maxlen=MAX_LINES)
        self.version = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - a log line must never break the daemon
            return
        with self.lock:
            self._lines.extend(line.splitlines() or [""])
            self.version += 1

    def text(self) -> str:
        with self.lock:
            return "\n".join(self._lines)


class LogPublisher:
    def __init__(self, ctx: NodeContext, recent: RecentLines):
        self.ctx = ctx
        self.recent = recent
        self._published_version = -1
        self._consoles: dict[str, tuple[str, tuple[int, float] | None]] = {}  # VM -> (file, (size, mtime) written)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"{self.ctx.name}-logs", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            if self.ctx.store.connection.connected:
                try:
                    self.publish()
                except (PVCError, KazooException, KazooTimeoutError) as exc:  # ZooKeeper went away: next time
                    log.debug("log publisher: %r", exc)
            if self.ctx.stopping.wait(PUBLISH_EVERY):
                return

    def publish(self) -> None:
        store, me = self.ctx.store, self.ctx.name
        version = self.recent.version
        if version != self._published_version:
            store.set_log(store.paths.node_log(me), tail(self.recent.text()))
            self._published_version = version
        snap = self.ctx.view.snapshot()
        node = snap.nodes.get(me)
        running = set(node.running_vms) if node is not None else set()
        here = {vm.name for vm in snap.vms.values() if vm.node == me and vm.name in running}
        for name in set(self._consoles) - here:
            del self._consoles[name]  # stopped, or gone from here: its new node publishes it now
        budget = ROUND_BYTES
        for name in sorted(here, key=lambda n: self._consoles.get(n, ("", None))[1] is not None):  # new first
            if budget <= 0:
                break
            budget -= self._console(name)

    def _console(self, name: str) -> int:
        """Publish the VM's console tail if it changed; the bytes written."""
        if name not in self._consoles:
            xml = self.ctx.view.vm_xml(name, timeout=5.0)
            self._consoles[name] = (console_path(xml) if xml else "", None)
        path, written = self._consoles[name]
        if not path:
            return 0
        try:
            st = os.stat(path)
        except OSError:
            return 0  # not written yet, or not visible from here
        seen = (st.st_size, st.st_mtime)
        if seen == written:
            return 0
        try:
            text = read_tail(path, CONSOLE_BYTES)
        except OSError as exc:
            log.debug("console of %s: %s", name, exc)
            return 0
        store = self.ctx.store
        store.set_log(store.paths.vm_console(name), text)
        self._consoles[name] = (path, seen)
        return len(text.encode())

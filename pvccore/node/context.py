"""What the parts of a node daemon work with: the node context, and the workers that own VMs while they act.

Each part (keepalive, VM lifecycle, migration, flush, coordinator, fence monitor) is built with a
:class:`NodeContext`, never with the daemon itself, so each can be run against fakes in unit tests.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from pvccore.config import DaemonConfig
from pvccore.domain.models import VM, Node
from pvccore.errors import NotFoundError
from pvccore.plugins import PluginSet

log = logging.getLogger("pvcnoded")


@dataclass
class NodeContext:
    """This node's name and settings, the cluster's store and watched view, the plugins, and the daemon's clock.

    ``store`` and ``view`` are a :class:`pvccore.zk.store.Store` and a :class:`pvccore.zk.view.ClusterView`
    (or fakes with the same methods). ``reconcile_soon`` asks the daemon to look at the cluster again.
    """

    name: str
    cfg: DaemonConfig
    store: object
    view: object
    plugins: PluginSet
    stopping: threading.Event = field(default_factory=threading.Event)
    leaving: threading.Event = field(default_factory=threading.Event)  # stopping soon: take on no new role
    reconcile_soon: Callable[[], None] = lambda: None

    def set_vm(self, name: str, precondition: Callable[[VM], bool], **changes) -> VM | None:
        """Compare-and-set a VM document while ``precondition`` holds on the fresh read (None: no such VM)."""
        return self.write_vm(name, lambda vm: replace(vm, **changes) if precondition(vm) else vm)

    def write_vm(self, name: str, update: Callable[[VM], VM]) -> VM | None:
        """Compare-and-set a VM document; return once the view shows the result, so the caller (and the
        next reconcile) never acts on the state from before its own write."""
        try:
            written = self.store.update_vm(name, update)
        except NotFoundError:
            return None
        self.view.wait_seen("vm", name, self.store.last_write[1])
        return written

    def set_node(self, precondition: Callable[[Node], bool], **changes) -> Node:
        """Compare-and-set this node's document while ``precondition`` holds, and wait until the view shows it."""
        written = self.store.update_node(self.name, lambda n: replace(n, **changes) if precondition(n) else n)
        self.view.wait_seen("node", self.name, self.store.last_write[1])
        return written


class Workers:
    """One worker thread per VM at most: a VM is owned by the thread acting on it until that ends."""

    def __init__(self, ctx: NodeContext, after: Callable[[], None] = lambda: None):
        self._ctx = ctx
        self._after = after  # called once a worker ends (publish figures now, reconcile again)
        self._owned: dict[str, threading.Thread] = {}
        self._ended: dict[str, float] = {}  # VM -> when its last worker ended (monotonic)
        self._lock = threading.Lock()

    def busy(self, name: str, since: float | None = None) -> bool:
        """A worker owns VM ``name``, or one ended after ``since``: a snapshot read at ``since`` may be from
        before that worker's writes, and acting on it would repeat the work (the worker's end asks for
        another reconcile, which reads them)."""
        with self._lock:
            return name in self._owned or (since is not None and self._ended.get(name, float("-inf")) >= since)

    def spawn(self, name: str, fn: Callable, *args, **kwargs) -> None:
        """Run ``fn(*args, **kwargs)`` in a worker thread that owns VM ``name`` until it ends (no-op while owned)."""
        with self._lock:
            if name in self._owned:
                return
            t = threading.Thread(target=self._run, args=(name, fn, args, kwargs), daemon=True,
                                 name=f"{self._ctx.name}-{name}")
            self._owned[name] = t
        t.start()

    def _run(self, name: str, fn: Callable, args: tuple, kwargs: dict) -> None:
        try:
            fn(*args, **kwargs)
        except NotFoundError:  # undefined while we worked on it: nothing left to do
            log.info("VM %s: undefined meanwhile; action dropped", name)
        except Exception as exc:
            report_failure(self._ctx, f"action on VM {name}", exc)
        finally:
            with self._lock:
                self._owned.pop(name, None)
                self._ended[name] = time.monotonic()
            self._after()

    def join(self, timeout: float) -> None:
        with self._lock:
            threads = list(self._owned.values())
        for t in threads:
            t.join(timeout)


def report_failure(ctx: NodeContext, what: str, exc: Exception) -> None:
    if ctx.stopping.is_set():  # cut short by the daemon stopping: expected
        log.info("%s interrupted by stop: %s", what, exc)
    else:
        log.error("%s failed", what, exc_info=exc)

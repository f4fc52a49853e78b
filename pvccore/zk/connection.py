"""The one owner of a process's ZooKeeper session: it starts the session, and fans its state changes out.

Every part that cares whether ZooKeeper is reachable (the watched view, the node daemon, its fence
monitor, the API's guards) subscribes here, instead of each registering its own kazoo listener.
Subscribers are called in kazoo's connection thread, in the order they subscribed, and must not block;
one that raises is logged and the others still hear of the change.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from kazoo.client import KazooClient, KazooState
from kazoo.handlers.threading import SequentialThreadingHandler

from pvccore.zk.auth import auth_options

log = logging.getLogger(__name__)

#: reconnect every half second at most: kazoo's default back-off grows to a minute, and a node still
#: backing off after a ZooKeeper leader election (seconds) would look dead to the cluster, and could reach
#: its self-fence deadline, while the ensemble was long serving again
RECONNECT = {"max_tries": -1, "delay": 0.05, "backoff": 2, "max_jitter": 0.1, "max_delay": 0.5}
CONNECT_TIMEOUT = 1.0  # seconds for a TCP connect to one ZooKeeper server

#: what a subscriber hears: ``connected``, ``suspended`` (cut off; the session may still live) or ``lost``
CONNECTED, SUSPENDED, LOST = KazooState.CONNECTED, KazooState.SUSPENDED, KazooState.LOST


class _Handler(SequentialThreadingHandler):
    """kazoo's threading handler, with TCP connects bounded by :data:`CONNECT_TIMEOUT`.

    kazoo gives a connect the whole session timeout: to a server that does not answer
    (its link is down) that is seconds lost per try, long enough for two unlucky tries to
    outlast a node's self-fence deadline while the rest of the ensemble serves. A
    server on the network answers a connect in milliseconds.
    """

    def create_connection(self, *args, **kwargs):
        kwargs["timeout"] = min(kwargs.get("timeout") or CONNECT_TIMEOUT, CONNECT_TIMEOUT)
        return super().create_connection(*args, **kwargs)


class Connection:
    """A started ZooKeeper session and the parts listening to its state."""

    def __init__(self, client: KazooClient):
        self.client = client
        self._subscribers: list[Callable[[str], None]] = []
        self._lock = threading.Lock()
        client.add_listener(self._fan_out)

    @classmethod
    def open(cls, hosts: str, timeout: float = 10.0, auth: str | None = None, **kwargs) -> "Connection":
        """Start a session on ``hosts`` (waiting up to ``timeout`` for it).

        ``auth`` (``digest:USER:PASSWORD``; None: ``$PVC_ZOOKEEPER_AUTH``) authenticates the
        session, and every znode it creates carries an ACL for that identity only.
        """
        kwargs.setdefault("connection_retry", dict(RECONNECT))
        kwargs.setdefault("handler", _Handler())
        client = KazooClient(hosts=hosts, timeout=timeout, **{**auth_options(auth), **kwargs})
        client.start(timeout=timeout)
        return cls(client)

    @property
    def connected(self) -> bool:
        return self.client.connected

    def subscribe(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(state)`` on every change of the session's state (see :data:`CONNECTED` and friends)."""
        with self._lock:
            self._subscribers.append(fn)

    def unsubscribe(self, fn: Callable[[str], None]) -> None:
        with self._lock:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

    def _fan_out(self, state: str) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for fn in subscribers:
            try:
                fn(state)
            except Exception:
                log.exception("ZooKeeper state subscriber failed")

    def close(self) -> None:
        self.client.remove_listener(self._fan_out)
        self.client.stop()
        self.client.close()


__all__ = ["Connection", "CONNECTED", "SUSPENDED", "LOST"]

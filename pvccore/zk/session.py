"""The one factory that wires a process to a cluster: a ZooKeeper session, the typed store, the watched view."""

from __future__ import annotations

from dataclasses import dataclass

from pvccore.zk.connection import Connection
from pvccore.zk.schema import DEFAULT_ROOT
from pvccore.zk.store import Store
from pvccore.zk.view import ClusterView


@dataclass
class Session:
    connection: Connection
    store: Store
    view: ClusterView

    @classmethod
    def open(cls, hosts: str, root: str = DEFAULT_ROOT, *, timeout: float = 10.0, auth: str | None = None,
             op_timeout: float | None = None, view_timeout: float = 30.0, liveness: bool = True,
             scope: str | None = None) -> "Session":
        """Connect to ``hosts`` (see :meth:`Store.connect` for the arguments) and load the view of ``root``
        (``liveness`` and ``scope``: see :class:`ClusterView`)."""
        store = Store.connect(hosts, root, timeout=timeout, auth=auth, op_timeout=op_timeout)
        try:
            view = ClusterView(store.connection, store.paths, liveness, scope).start(view_timeout)
        except BaseException:
            store.close()
            raise
        return cls(store.connection, store, view)

    @classmethod
    def on(cls, store: Store, view_timeout: float = 30.0, liveness: bool = True,
           scope: str | None = None) -> "Session":
        """A view on the session of an existing store."""
        view = ClusterView(store.connection, store.paths, liveness, scope).start(view_timeout)
        return cls(store.connection, store, view)

    def close(self) -> None:
        self.view.stop()
        self.store.close()

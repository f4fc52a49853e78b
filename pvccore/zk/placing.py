"""Placement decisions and the writes they guard, one at a time across the cluster.

A decision is made from the watched view: a node has room for a VM when its
published free memory, less the VMs already sent to it (:func:`placement.current`),
covers the VM. Two decisions made at once from the same picture would both find the
same room, and both write: 20 parallel defines once put 23.5 GiB on a 16 GiB node.
So every writer that places a VM (define, migrate/move/unmigrate, a flush, a
recovery, a start on another node) decides and writes inside :func:`placing`: under
the ZooKeeper lock ``locks/placement``, with the view caught up with every change
made before the lock was granted (:meth:`ClusterView.barrier`), which includes every
earlier holder's placement. The section is a lock, a read round trip, the decision
and one write: milliseconds.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

from pvccore.domain.models import VM, Cluster
from pvccore.domain.placement import choose_target
from pvccore.domain.states import DomainState, MigrationKind
from pvccore.domain.transitions import migration_request
from pvccore.errors import LockTimeout
from pvccore.hookspecs import Selector
from pvccore.zk.store import Store
from pvccore.zk.view import ClusterView

LOCK = "placement"


@contextmanager
def placing(store: Store, view: ClusterView, timeout: float = 10.0) -> Iterator[Callable[[], Cluster]]:
    """``with placing(store, view) as fresh: decide on fresh(); write``: decisions and writes one at a time.

    ``fresh()`` is the view's placement snapshot, current with every earlier placement.
    :raises LockTimeout: the lock or the view's catching up took longer than ``timeout``.
    """
    with store.lock(LOCK, timeout=timeout):
        if not view.barrier(timeout):
            raise LockTimeout(f"the cluster view did not catch up within {timeout:g}s; try again")
        yield view.placement_snapshot


def request_migration(store: Store, view: ClusterView, selectors: Mapping[str, Selector], name: str,
                      kind: MigrationKind, target: str | None = None, *,
                      domains: tuple[DomainState, ...] = (DomainState.READY,),
                      force_live: bool = False) -> tuple[VM | None, str]:
    """Request VM ``name``'s migration to ``target`` (checked), or to where its selector places it.

    Decided and written under the placement lock. Returns ``(the VM as written, "")``, or
    ``(None, why)`` when no node can take it (nothing written).
    :raises ValidationError: ``target`` may not take the VM. :raises ConflictError: the VM cannot move now.
    """
    with placing(store, view) as fresh:
        target, why = choose_target(store.get_vm(name), target, fresh(), selectors, domains)
        if target is None:
            return None, why
        return store.update_vm(name, lambda current: migration_request(current, kind, target, force_live)), ""

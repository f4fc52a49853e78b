"""ZooKeeper locks as context managers that raise on failure instead of returning False."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from kazoo.client import KazooClient
from kazoo.exceptions import LockTimeout as KazooLockTimeout
from kazoo.recipe.lock import Lock, ReadLock, WriteLock

from pvccore.errors import LockTimeout

_KINDS = {"exclusive": Lock, "read": ReadLock, "write": WriteLock}


def acquire(client: KazooClient, path: str, *, kind: str = "exclusive", timeout: float = 30.0,
            identifier: str | None = None):
    """Take a lock and return it (``.release()`` when done); for locks held across several steps.

    :raises LockTimeout: not obtained within ``timeout`` seconds.
    """
    lock = _KINDS[kind](client, path, identifier=identifier)
    try:
        acquired = lock.acquire(timeout=timeout)
    except KazooLockTimeout:
        acquired = False
    if not acquired:
        lock.cancel()
        raise LockTimeout(f"timed out after {timeout:g}s waiting for the {kind} lock {path}")
    return lock


@contextmanager
def hold(client: KazooClient, path: str, *, kind: str = "exclusive", timeout: float = 30.0,
         identifier: str | None = None) -> Iterator[None]:
    """Hold the ``kind`` lock at ``path`` for the ``with`` block.

    ``read`` locks are shared with other readers and exclude writers; ``write``
    and ``exclusive`` locks exclude everyone. Read and write locks on one path
    queue in arrival order, which is what makes phased handovers work.

    :raises LockTimeout: not obtained within ``timeout`` seconds.
    """
    lock = acquire(client, path, kind=kind, timeout=timeout, identifier=identifier)
    try:
        yield
    finally:
        lock.release()


def holders(client: KazooClient, path: str, kind: str = "exclusive") -> list[str]:
    """Identifiers of the contenders for the lock at ``path``, holder first."""
    return _KINDS[kind](client, path).contenders()

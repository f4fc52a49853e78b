"""Shared fixtures: one real ZooKeeper server per test session, one root per test."""

from __future__ import annotations

import uuid

import pytest

from pvccore.localzk import LocalZooKeeper
from pvccore.models import Node
from pvccore.plugins import load_plugins
from pvccore.store import Store, delete_tree


@pytest.fixture(scope="session")
def zk_server():
    # A missing ZooKeeper is a failure, not a skip: `make test` installs it.
    with LocalZooKeeper() as server:
        yield server


@pytest.fixture
def zk_root() -> str:
    return f"/pvc-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(zk_server, zk_root):
    s = Store.connect(zk_server.hosts, zk_root)
    yield s
    delete_tree(s.client, zk_root)
    s.close()


@pytest.fixture(scope="session")
def plugins():
    return load_plugins(disabled=())


def make_node(name: str, **kw) -> Node:
    """A healthy node with 16 GiB, of which 8 GiB free, unless told otherwise."""
    base = dict(daemon_state="run", domain_state="ready", memory_total_mib=16384, memory_used_mib=8192,
                memory_free_mib=8192, memory_provisioned_mib=8192, cpu_count=8)
    base.update(kw)
    return Node(name=name, **base)

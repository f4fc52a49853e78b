"""ZooKeeper authentication: every znode pvc creates is readable by the cluster's identity only."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from pvccore.config import DAEMON
from pvccore.errors import ValidationError
from pvccore.demo.cluster import sample_domain_xml
from pvccore.domain.models import VM
from pvccore.zk.auth import AUTH_ENV, auth_options
from pvccore.zk.store import Store, delete_tree


@pytest.fixture
def stranger(zk_server):
    """A client with no identity, or the wrong one."""
    clients = []

    def make(auth_data=None):
        c = KazooClient(hosts=zk_server.hosts, auth_data=auth_data)
        c.start(10)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.stop()
        c.close()


def test_the_tests_run_authenticated(store):
    acl = store.client.get_acls(store.paths.config)[0]
    assert acl == auth_options(None)["default_acl"] and os.environ[AUTH_ENV].startswith("digest:pvc-test:")


def test_a_client_without_the_identity_reads_nothing(store, stranger):
    store.create_vm(VM("web1", "u-1", 512, 1, node="hv1"), sample_domain_xml("web1", 512, 1))
    with store.lock("fence", timeout=5):
        lock_dir = store.paths.lock("fence")
        for path in (store.paths.root, store.paths.vms, store.paths.vm("web1"), store.paths.vm_xml("web1"),
                     store.paths.config, lock_dir, f"{lock_dir}/{store.client.get_children(lock_dir)[0]}"):
            for client in (stranger(), stranger([("digest", "pvc-test:wrong")])):
                with pytest.raises(NoAuthError):
                    client.get(path)
                with pytest.raises(NoAuthError):
                    client.get_children(path)
    assert store.get_vm("web1").node == "hv1"  # and the cluster's own identity reads it all


def test_an_existing_open_cluster_is_restricted_by_the_migration_tool(zk_server, stranger):
    root = f"/pvc-open-{uuid.uuid4().hex[:8]}"
    open_store = Store.connect(zk_server.hosts, root, auth="")  # as a cluster from before zookeeper_auth
    try:
        open_store.create_vm(VM("old1", "u-2", 512, 1, node="hv1"), sample_domain_xml("old1", 512, 1))
        assert stranger().get(open_store.paths.vm("old1"))  # world-readable, as the issue found
        run = subprocess.run([sys.executable, "-m", "pvccore.zk.acl", "--zookeeper", zk_server.hosts, "--root", root],
                             capture_output=True, text=True, timeout=60, env=os.environ)
        assert run.returncode == 0, run.stderr
        assert run.stdout.endswith(f"znodes under {root} now readable and writable by pvc-test only\n"), run.stdout
        assert int(run.stdout.split()[0]) >= 7  # root, config, stats, nodes, vms, locks, the VM and its XML
        for path in (root, open_store.paths.vm("old1"), open_store.paths.vm_xml("old1"), open_store.paths.config):
            with pytest.raises(NoAuthError):
                stranger().get(path)
        owner = Store.connect(zk_server.hosts, root)  # the identity from the environment
        assert owner.get_vm("old1").node == "hv1"
        delete_tree(owner.client, root)
        owner.close()
    finally:
        open_store.close()


def test_the_migration_tool_needs_an_identity(zk_server):
    env = {k: v for k, v in os.environ.items() if k != AUTH_ENV}
    run = subprocess.run([sys.executable, "-m", "pvccore.zk.acl", "--zookeeper", zk_server.hosts],
                         capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 2 and run.stderr.strip() == f"zkacl: error: set {AUTH_ENV}=digest:USER:PASSWORD " \
                                                          "(the identity to restrict the tree to)"


@pytest.mark.parametrize("auth", ["pvc:secret", "digest:pvc", "digest::secret", "sasl:pvc:secret"])
def test_a_malformed_identity_is_refused_without_echoing_it(auth):
    with pytest.raises(ValidationError) as exc:
        DAEMON.build({"node": "hv1", "zookeeper_auth": auth})
    assert exc.value.message == "zookeeper_auth: expected digest:USER:PASSWORD" and "secret" not in exc.value.message

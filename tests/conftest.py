"""Shared fixtures: one real ZooKeeper server per test session, one root per test."""

from __future__ import annotations

import os
import secrets
import uuid

import pytest

from pvccore.demo.zookeeper import LocalZooKeeper
from pvccore.domain.models import Node
from pvccore.plugins import load_plugins
from pvccore.zk.auth import AUTH_ENV
from pvccore.zk.store import Store, delete_tree

# Every test runs as a cluster in production should: ZooKeeper authentication on, every znode
# readable by this identity only. Set before any client or subprocess starts, so all inherit it.
os.environ.setdefault(AUTH_ENV, f"digest:pvc-test:{secrets.token_hex(12)}")


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


@pytest.fixture(scope="session")
def recorder_site(tmp_path_factory):
    """The recorder test plugin, pip-installed into a directory for daemons' PYTHONPATH."""
    import subprocess
    import sys
    from pathlib import Path

    site = tmp_path_factory.mktemp("recorder-site")
    src = Path(__file__).parent / "data" / "recorder"
    build = tmp_path_factory.mktemp("recorder-build")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, capture_output=True, cwd=build)
    return site


class Events:
    """Reads what the recorder plugin wrote."""

    def __init__(self, path):
        self.path = path

    def all(self, hook: str | None = None, **match) -> list[dict]:
        import json

        if not self.path.exists():
            return []
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return [r for r in rows if (hook is None or r["hook"] == hook)
                and all(r.get(k) == v for k, v in match.items())]

    def wait(self, count: int, hook: str, timeout: float = 20.0, **match) -> list[dict]:
        """Poll the file (written by other processes) until ``count`` matching rows exist, or the deadline."""
        import time

        deadline = time.monotonic() + timeout
        while len(rows := self.all(hook, **match)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return rows


@pytest.fixture
def cluster(zk_server, zk_root, recorder_site, tmp_path):
    """Three pvcnoded processes (hv1..hv3) on private test:/// hypervisors, and Operations to drive them.

    hv1 and hv2 are coordinators (whole-cluster views); hv3 is not, so every test here also runs a daemon
    whose view is scoped to its own node and VMs.
    """
    from pvccore.demo.cluster import LocalCluster
    from pvccore.operations import Operations
    from pvccore.zk.session import Session

    events = tmp_path / "events.jsonl"
    env = {"PYTHONPATH": str(recorder_site), "PVC_TEST_EVENTS": str(events)}
    local = LocalCluster(zk_server.hosts, zk_root, workdir=str(tmp_path / "cluster"), env=env,
                         node_flags={n: ("--coordinator",) for n in ("hv1", "hv2")})
    (tmp_path / "cluster").mkdir()
    store = Store.connect(zk_server.hosts, zk_root)
    local.start()
    view = Session.on(store).view
    ops = Operations(store, view, load_plugins(disabled=()))
    ops.local = local
    ops.events = Events(events)
    try:
        yield ops
    finally:
        view.stop()
        local.stop()
        delete_tree(store.client, zk_root)
        store.close()
    # A daemon that hit an unexpected exception, or had to be killed because it did not stop
    # (its log then holds every thread's stack), is a failure too.
    broken = {n: local.log(n) for n in local.nodes if "Traceback" in local.log(n) or n in local.hung}
    assert not broken, "daemon tracebacks:\n" + "\n".join(f"--- {n}\n{log}" for n, log in broken.items())


@pytest.fixture(scope="module")
def live(zk_server, recorder_site, tmp_path_factory):
    """A module's whole stack: ZooKeeper root, three pvcnoded, and pvcapid under a real gunicorn."""
    import subprocess
    import sys
    from pathlib import Path

    from pvccore.demo.cluster import LocalCluster
    from pvccore.demo.zookeeper import free_port
    from pvccore.zk.session import Session

    work = tmp_path_factory.mktemp("live")
    root = f"/pvc-live/{uuid.uuid4().hex[:12]}"
    local = LocalCluster(zk_server.hosts, root, workdir=str(work),
                         node_flags={n: ("--coordinator",) for n in ("hv1", "hv2", "hv3")})
    local.start()
    port = free_port()
    key = "live-key"
    cfg = work / "api.toml"
    cfg.write_text(f'zookeeper_hosts = "{zk_server.hosts}"\nzookeeper_root = "{root}"\n'
                   f'listen = "127.0.0.1:{port}"\nworkers = 2\napi_keys = ["{key}"]\nwait_timeout = 20.0\n'
                   f'read_only_keys = ["live-read-key"]\n')
    log = open(work / "api.log", "wb")
    api = subprocess.Popen([str(Path(sys.executable).parent / "pvcapid"), "-c", str(cfg)], stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    store = Store.connect(zk_server.hosts, root)
    view = Session.on(store).view
    url = f"http://127.0.0.1:{port}"
    try:
        from pvccli.client import ApiError, Client

        client = Client(url, key, timeout=5)
        import time

        deadline = time.monotonic() + 30
        while True:  # gunicorn is starting in another process: poll its health, under a deadline
            try:
                client.health()
                break
            except ApiError:
                if api.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pvcapid did not start: {(work / 'api.log').read_text()}")
                time.sleep(0.1)
        yield type("Live", (), {"url": url, "key": key, "read_key": "live-read-key", "store": store, "view": view,
                                "local": local, "api": api, "log": work / "api.log"})
    finally:
        api.terminate()
        api.wait(20)
        log.close()
        view.stop()
        local.stop()
        delete_tree(store.client, root)
        store.close()

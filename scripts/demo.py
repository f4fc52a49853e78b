"""The local demo cluster: a ZooKeeper, three pvcnoded on libvirt test:/// hypervisors,
the API under gunicorn, sample VMs, and a `demo` connection for the `pvc` CLI.

    make demo        # up (or, when already up, status)
    make demo-stop   # down

Everything lives under .demo/ (ZooKeeper data, hypervisor descriptions, logs, the
API's config with its key) and keeps running after the command returns.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from pvccli.client import ApiError, Client
from pvccli.connection import save_connection

from pvccore.demo.cluster import LocalCluster, sample_domain_xml
from pvccore.demo.zookeeper import LocalZooKeeper
from pvccore.operations import Operations
from pvccore.plugins import load_plugins
from pvccore.zk.auth import AUTH_ENV
from pvccore.zk.store import Store
from pvccore.zk.session import Session

HERE = Path(__file__).resolve().parent.parent
DEMO = HERE / ".demo"
STATE = DEMO / "state.json"
ZK_PORT = int(os.environ.get("PVC_DEMO_ZK_PORT", "21810"))
API_PORT = int(os.environ.get("PVC_DEMO_API_PORT", "7370"))
ROOT = "/pvc"
SAMPLES = (
    # name, MiB, vCPUs, metadata
    ("web1", 512, 1, {"node_limit": ["hv1", "hv2"], "node_selector": "mem"}),
    ("web2", 512, 1, {"node_limit": ["hv1", "hv2"], "node_selector": "vms"}),
    ("db1", 2048, 2, {"node_limit": ["hv3"], "migration_method": "shutdown"}),
    ("cache1", 1024, 2, {"node_selector": "memprov"}),
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _state() -> dict | None:
    if not STATE.exists():
        return None
    state = json.loads(STATE.read_text())
    return state if all(_alive(p) for p in state["pids"].values()) else None


def _zk_auth() -> str:
    """The demo cluster's ZooKeeper identity, made once and kept (mode 0600) with its data."""
    path = DEMO / "zookeeper.auth"
    if not path.exists():
        DEMO.mkdir(exist_ok=True)
        path.touch(0o600)
        path.write_text(f"digest:pvc-demo:{secrets.token_urlsafe(18)}")
    return path.read_text().strip()


def _connect(hosts: str):
    store = Store.connect(hosts, ROOT, auth=_zk_auth())
    view = Session.on(store).view
    return store, view, Operations(store, view, load_plugins())


def status(hosts: str) -> None:
    store, view, _ = _connect(hosts)
    snap = view.snapshot()
    print(f"\nnodes ({hosts}{ROOT}):")
    print(f"  {'name':<6} {'daemon':<7} {'domain':<8} {'free MiB':>9} {'VMs':>4}  running")
    for n in snap.nodes.values():
        print(f"  {n.name:<6} {n.daemon_state:<7} {n.domain_state:<8} {n.memory_free_mib:>9} {n.vm_count:>4}  "
              f"{', '.join(n.running_vms)}")
    print("\nVMs:")
    print(f"  {'name':<7} {'state':<7} {'node':<5} {'last':<5} {'limit':<9} {'selector':<8} {'autostart':<9} method")
    for v in sorted(snap.vms.values(), key=lambda v: v.name):
        m = v.meta
        print(f"  {v.name:<7} {v.state:<7} {v.node:<5} {v.last_node or '-':<5} {','.join(m.node_limit) or 'any':<9} "
              f"{m.node_selector:<8} {str(m.node_autostart).lower():<9} {m.migration_method}")
    view.stop()
    store.close()


def up() -> None:
    state = _state()
    if state:
        print("the demo cluster is already running")
        status(state["hosts"])
        dashboard(state["api"])
        return
    DEMO.mkdir(exist_ok=True)
    zk = LocalZooKeeper(data_dir=str(DEMO / "zookeeper"), port=ZK_PORT).start()
    # Every node a coordinator: one is primary (it fences, recovers, drives flushes and keeps the faults).
    cluster = LocalCluster(zk.hosts, ROOT, workdir=str(DEMO / "cluster"), env={AUTH_ENV: _zk_auth()},
                           flags=("--keepalive-interval", "1", "--shutdown-timeout", "10"),
                           node_flags={n: ("--coordinator",) for n in ("hv1", "hv2", "hv3")})
    (DEMO / "cluster").mkdir(exist_ok=True)
    cluster.start()
    api, url, key = start_api(zk.hosts)
    pids = {"zookeeper": zk.proc.pid, **{n: p.pid for n, p in cluster.procs.items()}, "api": api.pid}
    STATE.write_text(json.dumps({"hosts": zk.hosts, "root": ROOT, "pids": pids, "api": url}))
    store, view, ops = _connect(zk.hosts)
    for name, mib, cpus, meta in SAMPLES:
        if name not in view.snapshot().vms:
            ops.define_vm(sample_domain_xml(name, mib, cpus), meta)
    view.wait_for(lambda c: all(v.name in c.nodes[v.node].running_vms for v in c.vms.values()), 20)
    view.stop()
    store.close()
    cli_config = save_connection("demo", url, key)
    print(f"demo cluster up: ZooKeeper {zk.hosts}, root {ROOT}, API {url}; logs in {DEMO}/")
    print(f"the pvc CLI's connection 'demo' is in {cli_config}")
    status(zk.hosts)
    dashboard(url)
    print("\ntry: .venv/bin/pvc cluster status; .venv/bin/pvc vm list; stop it all with: make demo-stop")


def dashboard(url: str) -> None:
    """Where the web dashboard is, and the keys to sign in with (from the API's configuration)."""
    cfg = tomllib.loads((DEMO / "api.toml").read_text())
    print(f"\ndashboard: {url}/dashboard (open it in a browser on this machine)")
    for key in cfg.get("api_keys", []):
        print(f"  API key:           {key}")
    for key in cfg.get("read_only_keys", []):
        print(f"  read-only API key: {key}  (sees everything, changes nothing)")


def start_api(hosts: str) -> tuple[subprocess.Popen, str, str]:
    """pvcapid under gunicorn, with a fresh API key; returns once it answers."""
    cfg = DEMO / "api.toml"
    key, read_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    cfg.touch(0o600)
    cfg.chmod(0o600)  # it holds the API key and the ZooKeeper identity
    cfg.write_text(f'zookeeper_hosts = "{hosts}"\nzookeeper_root = "{ROOT}"\nlisten = "127.0.0.1:{API_PORT}"\n'
                   f'workers = 2\napi_keys = ["{key}"]\nread_only_keys = ["{read_key}"]\n'
                   f'zookeeper_auth = "{_zk_auth()}"\n')
    log = open(DEMO / "api.log", "ab")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "pvcapid"), "-c", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{API_PORT}"
    client = Client(url, key, timeout=2)
    deadline = time.monotonic() + 30
    while True:  # gunicorn starting in another process: poll its health under a deadline
        try:
            client.health()
            return proc, url, key
        except ApiError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the API did not start; see {DEMO / 'api.log'}")
            time.sleep(0.1)


def down() -> None:
    if not STATE.exists():
        print("the demo cluster is not running")
        return
    pids = json.loads(STATE.read_text())["pids"]
    order = [n for n in pids if n != "zookeeper"] + ["zookeeper"]  # API and daemons first, ZooKeeper last
    for name in order:
        pid = pids[name]
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)  # waiting for another process to exit, under a deadline
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    STATE.unlink()
    print("demo cluster stopped")


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "up"
    if command == "up":
        up()
    elif command == "down":
        down()
    elif command == "status":
        state = _state()
        if not state:
            print("the demo cluster is not running (make demo)")
            return 1
        status(state["hosts"])
    else:
        print(f"usage: {argv[0]} up|down|status", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

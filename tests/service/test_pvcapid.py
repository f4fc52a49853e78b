"""Two pvcapid on one machine: neither takes anything from the other (gunicorn's control socket is off)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from gunicorn.config import _get_default_control_socket

from pvccli.client import ApiError, Client
from pvccore.demo.zookeeper import free_port


def start(zk_server, zk_root, work: Path, name: str):
    port = free_port()
    cfg = work / f"{name}.toml"
    cfg.write_text(f'zookeeper_hosts = "{zk_server.hosts}"\nzookeeper_root = "{zk_root}"\n'
                   f'listen = "127.0.0.1:{port}"\nworkers = 1\napi_keys = ["k"]\n')
    proc = subprocess.Popen([str(Path(sys.executable).parent / "pvcapid"), "-c", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = Client(f"http://127.0.0.1:{port}", "k", timeout=5)
    deadline = time.monotonic() + 30
    while True:  # gunicorn starting in another process: poll its health under a deadline
        try:
            client.health()
            return proc, client
        except ApiError:
            assert proc.poll() is None and time.monotonic() < deadline, f"{name} did not start"
            time.sleep(0.1)


def test_a_second_pvcapid_stopping_leaves_the_first_serving(zk_server, zk_root, store, tmp_path):
    control = Path(_get_default_control_socket())
    existed = control.exists()
    first, first_client = start(zk_server, zk_root, tmp_path, "first")
    second, second_client = start(zk_server, zk_root, tmp_path, "second")
    try:
        assert control.exists() == existed  # neither made gunicorn's one-per-user control socket
        second.terminate()
        assert second.wait(20) == 0
        assert first_client.health()["zookeeper"] == "connected" and first_client.vms() == []
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(20)

"""Two pvcapid on one machine: neither takes anything from the other (gunicorn's control socket is off)."""

from __future__ import annotations

from pathlib import Path

from gunicorn.config import _get_default_control_socket

from tests.tools.pvcapid import start_pvcapid


def start(zk_server, zk_root, work: Path, name: str):
    proc, _, client = start_pvcapid(zk_server.hosts, zk_root, work, name)
    return proc, client


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

"""Cluster settings against the nodes' timing: refused where a healthy node could be fenced."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pvccore.errors import ValidationError
from pvccore.domain.models import Node
from pvccore.operations import Operations
from pvccore.zk.session import Session


@pytest.fixture
def ops(store, plugins):
    view = Session.on(store).view
    yield Operations(store, view, plugins)
    view.stop()


def test_settings_are_checked_against_the_slowest_node(ops, store):
    store.create_node(Node("fast", daemon_state="run", keepalive_interval=0.5, session_timeout=2.0))
    ops.view.wait_for(lambda c: "fast" in c.nodes, 10)
    ops.set_config({"keepalive_limit": 1.5, "fence_grace": 1.0, "self_fence_deadline": 3.0})  # fits 0.5 s / 2 s
    store.create_node(Node("slow", daemon_state="stop", keepalive_interval=2.0, session_timeout=8.0))
    ops.view.wait_for(lambda c: "slow" in c.nodes, 10)
    with pytest.raises(ValidationError, match=r"3 x 2s = 6s") as exc:
        ops.set_config({"fence_grace": 30})  # the stored limit no longer fits the slow node either
    assert exc.value.field == "keepalive_limit"
    with pytest.raises(ValidationError, match=r"\(8s \+ 2s = 10s\)") as exc:
        ops.set_config({"keepalive_limit": 6, "fence_grace": 3})
    assert exc.value.field == "fence_grace"
    ops.set_config({"keepalive_limit": 6, "fence_grace": 4, "self_fence_deadline": 12})
    with pytest.raises(ValidationError, match="give at least one setting"):
        ops.set_config({})
    assert store.get_config().keepalive_limit == 6.0


def test_nan_or_infinite_setting_changes_nothing(ops, store):
    before = store.get_config()
    for value in (float("nan"), float("inf"), 1e308):
        with pytest.raises(ValidationError, match="keepalive_limit must be a number of seconds from"):
            ops.set_config({"keepalive_limit": value})
    assert store.get_config() == before


def test_daemon_whose_timing_does_not_fit_refuses_to_start(zk_server, zk_root, store):
    exe = Path(sys.executable).parent / "pvcnoded"
    out = subprocess.run([str(exe), "--node", "slow", "--zookeeper", zk_server.hosts, "--root", zk_root,
                          "--libvirt", "test:///default", "--keepalive-interval", "2"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pvcnoded: error: this node's keepalive_interval (2s)")
    assert "3 x 2s = 6s" in lines[0]
    assert store.node_names() == []  # it registered nothing

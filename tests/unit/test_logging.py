"""Daemon logs: one line per event, with the node's name, and the VM's for VM events."""

import io
import json
import logging

import pytest

from pvccore.node.daemon import setup_logging


@pytest.fixture
def capture():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()

    def setup(fmt: str) -> io.StringIO:
        setup_logging("hv7", "info", fmt)
        root.handlers[0].setStream(stream)
        return stream

    yield setup
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_node_and_vm(capture):
    out = capture("json")
    log = logging.getLogger("pvccore.test")
    log.info("VM %s: migrated from %s to %s", "web1", "hv1", "hv2")
    log.warning("node %s: no keepalive", "hv3")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert (first["node"], first["vm"], first["message"]) == ("hv7", "web1", "VM web1: migrated from hv1 to hv2")
    assert second["node"] == "hv7" and "vm" not in second and second["level"] == "WARNING"


def test_text_lines_carry_node_and_vm(capture):
    out = capture("text")
    log = logging.getLogger("pvccore.test")
    log.info("VM %s: started", "db1")
    log.debug("VM %s: below the level", "db1")
    log.error("flush of %s: done", "hv7")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert " INFO node=hv7 vm=db1 pvccore.test: VM db1: started" in lines[0]
    assert " ERROR node=hv7 pvccore.test: flush of hv7: done" in lines[1]

"""The cluster-in-a-box tier: real QEMU hypervisors in network namespaces (see harness.py).

``PVC_SOAK=N`` runs every fault scenario N times (``make soak``); the summary at
the end counts the invariant checks made and the violations found, and the real
guests' disk journals checked and those showing two writers or a lost record.
"""

from __future__ import annotations

import os

import pytest

from pvccore.demo.netlab import NetLab
from tests.conftest import Events

from .harness import ClusterBox, missing_tools

SOAK = int(os.environ.get("PVC_SOAK", "1"))
TALLY = {"checks": 0, "violations": [], "journals": 0, "journal_problems": []}


def pytest_generate_tests(metafunc):
    if "round_" in metafunc.fixturenames:
        metafunc.parametrize("round_", range(1, SOAK + 1), ids=lambda r: f"round{r}")


def pytest_terminal_summary(terminalreporter):
    if TALLY["checks"]:
        terminalreporter.write_line(f"cluster box: {TALLY['checks']} invariant checks, "
                                    f"{len(TALLY['violations'])} violations")
        for v in TALLY["violations"]:
            terminalreporter.write_line(f"  {v}")
    if TALLY["journals"]:
        terminalreporter.write_line(f"real guests: {TALLY['journals']} disk journals checked, "
                                    f"{len(TALLY['journal_problems'])} with two writers or a lost record")
        for v in TALLY["journal_problems"]:
            terminalreporter.write_line(f"  {v}")


def record(label: str, found: list[str]) -> list[str]:
    TALLY["checks"] += 1
    TALLY["violations"] += [f"{label}: {v}" for v in found]
    return found


def record_journals(label: str, guests) -> list[str]:
    """Check each guest's disk journal (one writer at a time, no lost record) and tally it."""
    found = []
    for guest in guests:
        TALLY["journals"] += 1
        found += [f"{guest.name}: {p}" for p in guest.journal_problems()]
    TALLY["journal_problems"] += [f"{label}: {f}" for f in found]
    return found


@pytest.fixture(scope="session")
def box_ready():
    ok, why = NetLab.available()
    if not ok:
        pytest.skip(f"cluster-in-a-box tier needs network namespaces: {why}")
    missing = missing_tools()
    assert not missing, f"missing {', '.join(missing)}: `make test` installs them (scripts/debs.sh)"


@pytest.fixture
def make_box(box_ready, recorder_site, tmp_path, request):
    """``make_box(**kw)`` brings a ClusterBox up (torn down after the test, logs shown on failure)."""
    boxes = []

    def make(**kw) -> ClusterBox:
        events = tmp_path / "events.jsonl"
        env = {"PYTHONPATH": str(recorder_site), "PVC_TEST_EVENTS": str(events)}
        box = ClusterBox(str(tmp_path / f"box{len(boxes)}"), env=env, **kw)
        boxes.append(box)
        box.up()
        box.events = Events(events)
        box.check = lambda label, timeout=60.0: record(f"{request.node.name} {label}", box.settled(timeout))
        return box

    yield make
    for box in boxes:
        failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
        if failed:
            print(box.logs())
        box.down()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)

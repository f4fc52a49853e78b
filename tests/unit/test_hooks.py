"""Every hookspec is documented (docstring and docs/plugins.md) and has a test named test_hook_<name>.

The ``test_hook_*`` tests here check delivery of each hook through the plugin set;
the node-daemon, fencing and handover tests check that pvc fires them at the right time.
"""

import inspect
import logging
import re
from pathlib import Path

import pytest

from pvccore import hookimpl, hookspecs
from pvccore.hookspecs import Fencer, FenceResult, Selector
from pvccore.plugins import load_plugins

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("pvc_"))


def test_hook_list_is_what_design_promises():
    assert HOOKS == ["pvc_handover_phase", "pvc_migration_finished", "pvc_node_fenced", "pvc_node_recovered",
                     "pvc_node_state_changed", "pvc_register_fencers", "pvc_register_selectors",
                     "pvc_vm_state_changed"]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    assert (getattr(hookspecs, hook).__doc__ or "").strip(), f"{hook} has no docstring"
    docs = (ROOT / "docs" / "plugins.md").read_text()
    assert re.search(rf"^#+ `{hook}\(", docs, re.M), f"{hook} has no section in docs/plugins.md"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    assert f"def test_hook_{hook}(" in sources


class Recorder:
    def __init__(self):
        self.calls = []

    @hookimpl
    def pvc_node_state_changed(self, node, kind, new):  # takes fewer arguments than the spec
        self.calls.append(("node", node, kind, new))

    @hookimpl
    def pvc_vm_state_changed(self, vm, node, old, new, reason):
        self.calls.append(("vm", vm, node, old, new, reason))

    @hookimpl
    def pvc_migration_finished(self, vm, source, target, method, seconds, ok):
        self.calls.append(("migration", vm, source, target, method, seconds, ok))

    @hookimpl
    def pvc_node_fenced(self, node, result):
        self.calls.append(("fenced", node, result.off))

    @hookimpl
    def pvc_handover_phase(self, phase, node, role, old_primary, new_primary):
        self.calls.append(("handover", phase, node, role, old_primary, new_primary))

    @hookimpl
    def pvc_node_recovered(self, node, moved, parked):
        self.calls.append(("recovered", node, moved, parked))


class Raiser:
    @hookimpl
    def pvc_node_state_changed(self, node):
        raise RuntimeError("plugin bug")


@pytest.fixture
def rec():
    r = Recorder()
    # Raiser is registered last so pluggy would call it first: it must not stop Recorder.
    return r, load_plugins(entry_points=False, extra=[r, Raiser()])


def test_hook_pvc_register_selectors():
    class P:
        @hookimpl
        def pvc_register_selectors(self):
            return [Selector("spread", "test", lambda vm, node, cluster: 1.0)]

    assert load_plugins(entry_points=False, extra=[P()]).selectors["spread"].description == "test"


def test_hook_pvc_register_fencers():
    class P:
        @hookimpl
        def pvc_register_fencers(self):
            return [Fencer("null", "test", lambda node, params: FenceResult(True, "ok"))]

    plugins = load_plugins(entry_points=False, extra=[P()])
    assert plugins.fencers["null"].fence("hv1", {}).off is True
    assert [r["kinds"] for r in plugins.describe()] == [["fencer"]]


def test_hook_pvc_node_state_changed(rec, caplog):
    r, plugins = rec
    with caplog.at_level(logging.ERROR):
        plugins.notify("pvc_node_state_changed", node="hv1", kind="domain", old="ready", new="flush")
    assert r.calls == [("node", "hv1", "domain", "flush")]
    assert "failed in pvc_node_state_changed" in caplog.text


def test_hook_pvc_vm_state_changed(rec):
    r, plugins = rec
    plugins.notify("pvc_vm_state_changed", vm="web1", node="hv1", old="start", new="fail", reason="no disk")
    assert r.calls == [("vm", "web1", "hv1", "start", "fail", "no disk")]


def test_hook_pvc_migration_finished(rec):
    r, plugins = rec
    plugins.notify("pvc_migration_finished", vm="web1", source="hv1", target="hv2", method="live", seconds=0.8,
                   ok=True)
    assert r.calls == [("migration", "web1", "hv1", "hv2", "live", 0.8, True)]


def test_hook_pvc_node_fenced(rec):
    r, plugins = rec
    plugins.notify("pvc_node_fenced", node="hv3", result=FenceResult(True, "chassis power is off"))
    assert r.calls == [("fenced", "hv3", True)]


def test_hook_pvc_handover_phase(rec):
    r, plugins = rec
    plugins.notify("pvc_handover_phase", phase="move-ips", node="hv1", role="relinquish", old_primary="hv1",
                   new_primary="hv2")
    assert r.calls == [("handover", "move-ips", "hv1", "relinquish", "hv1", "hv2")]


def test_hook_pvc_node_recovered(rec):
    r, plugins = rec
    plugins.notify("pvc_node_recovered", node="hv3", moved={"a": "hv1"}, parked=["b"])
    assert r.calls == [("recovered", "hv3", {"a": "hv1"}, ["b"])]

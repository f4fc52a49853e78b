"""Every hookspec is documented (docstring, and docs/plugins.md with its exact arguments) and has a test named
test_hook_<name> that makes pvc fire it: the registration hooks here, the lifecycle hooks where the part that
fires them runs (tests/unit/test_node_parts.py against fakes, tests/service/test_daemon.py for the daemon's own).
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
                     "pvc_node_started", "pvc_node_state_changed", "pvc_node_stopped", "pvc_register_fencers",
                     "pvc_register_selectors", "pvc_vm_state_changed"]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    assert (getattr(hookspecs, hook).__doc__ or "").strip(), f"{hook} has no docstring"
    docs = (ROOT / "docs" / "plugins.md").read_text()
    args = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert re.search(rf"^#+ `{hook}\({re.escape(args)}\)`", docs, re.M), \
        f"docs/plugins.md has no section `{hook}({args})`"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    assert f"def test_hook_{hook}(" in sources


class Raiser:
    @hookimpl
    def pvc_node_state_changed(self, node):
        raise RuntimeError("plugin bug")


class Keeper:
    def __init__(self):
        self.calls = []

    @hookimpl
    def pvc_node_state_changed(self, node, kind, new):  # takes fewer arguments than the spec
        self.calls.append((node, kind, new))


def test_a_plugin_that_raises_is_logged_and_the_others_still_hear(caplog):
    keeper = Keeper()
    # Raiser is registered last so pluggy calls it first: it must not stop Keeper.
    plugins = load_plugins(entry_points=False, extra=[keeper, Raiser()])
    with caplog.at_level(logging.ERROR):
        plugins.notify("pvc_node_state_changed", node="hv1", kind="domain", old="ready", new="flush")
    assert keeper.calls == [("hv1", "domain", "flush")]
    assert "failed in pvc_node_state_changed" in caplog.text


def test_the_unit_recorder_takes_every_argument_of_every_lifecycle_hook():
    """tests/unit/fakes.Recorder keeps all arguments: a spec that grows is noticed by the hook tests."""
    from .fakes import Recorder

    for hook in HOOKS:
        if hook.startswith("pvc_register_"):
            continue
        spec = list(inspect.signature(getattr(hookspecs, hook)).parameters)
        impl = list(inspect.signature(getattr(Recorder, hook)).parameters)[1:]
        assert impl == spec, hook


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

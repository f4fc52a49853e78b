"""The plugin manager: entry points, blocking, duplicate names, misspelt hooks, bad objects."""

import pytest

from pvccore import hookimpl
from pvccore.errors import PluginError
from pvccore.hookspecs import Fencer, FenceResult, Selector
from pvccore.plugins import load_plugins


class Plugin:
    """A plugin object registering the given selectors/fencers."""

    def __init__(self, selectors=(), fencers=()):
        self._s, self._f = list(selectors), list(fencers)

    @hookimpl
    def pvc_register_selectors(self):
        return self._s

    @hookimpl
    def pvc_register_fencers(self):
        return self._f


def sel(name):
    return Selector(name, "test selector", lambda vm, node, cluster: 0.0)


def test_builtins_come_from_entry_points():
    plugins = load_plugins(disabled=())
    assert {"mem", "load", "vcpus", "vms", "memprov"} <= set(plugins.selectors)
    rows = {r["name"]: r for r in plugins.describe()}
    assert rows["mem"]["distribution"] == "pvc" and rows["mem"]["kinds"] == ["selector"]


def test_disable_by_environment(monkeypatch):
    monkeypatch.setenv("PVC_DISABLE_PLUGINS", "load, vms")
    plugins = load_plugins()
    assert "load" not in plugins.selectors and "vms" not in plugins.selectors
    assert "mem" in plugins.selectors
    assert "load" not in {r["name"] for r in plugins.describe()}


def test_duplicate_selector_names_both_plugins():
    with pytest.raises(PluginError) as err:
        load_plugins(disabled=(), extra=[Plugin([sel("mem")])])
    assert "'mem' is registered by both plugin 'mem' and plugin" in err.value.message


def test_duplicate_fencer_names_both_plugins():
    f = Fencer("ipmi", "x", lambda node, params: FenceResult(True))
    a, b = Plugin(fencers=[f]), Plugin(fencers=[f])
    with pytest.raises(PluginError, match="fencer name 'ipmi' is registered by both plugin"):
        load_plugins(entry_points=False, extra=[a, b])


def test_misspelt_hook_is_an_error():
    class Typo:
        @hookimpl
        def pvc_register_selector(self):  # missing "s"
            return []

    with pytest.raises(PluginError, match="pvc_register_selector"):
        load_plugins(entry_points=False, extra=[Typo()])


@pytest.mark.parametrize("bad", [object(), Selector("", "x", lambda *a: 0), Selector("default", "x", lambda *a: 0),
                                 Selector("ok", None, lambda *a: 0), Selector("ok", "x", None)])
def test_malformed_selector_is_rejected(bad):
    with pytest.raises(PluginError):
        load_plugins(entry_points=False, extra=[Plugin([bad])])


def test_a_plugin_failing_to_register_is_named():
    class Broken:
        @hookimpl
        def pvc_register_selectors(self):
            raise RuntimeError("no config")

    with pytest.raises(PluginError, match="failed in pvc_register_selectors: no config"):
        load_plugins(entry_points=False, extra=[Broken()])

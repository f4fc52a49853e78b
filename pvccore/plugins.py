"""Plugin manager factory: loads the ``pvc.plugins`` entry points into a fresh set.

Built-in selectors and fencers are registered through the same entry-point group
a third party uses. ``PVC_DISABLE_PLUGINS=name,name`` blocks plugins by
entry-point name.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from . import hookspecs
from pvccore.errors import PluginError

ENTRY_POINT_GROUP = "pvc.plugins"
DISABLE_ENV = "PVC_DISABLE_PLUGINS"

log = logging.getLogger(__name__)


@dataclass
class PluginSet:
    """A loaded plugin manager with its registered selectors and fencers, by name."""

    pm: pluggy.PluginManager
    selectors: dict[str, hookspecs.Selector] = field(default_factory=dict)
    fencers: dict[str, hookspecs.Fencer] = field(default_factory=dict)
    #: (kind, name) -> plugin name that registered it
    owners: dict[tuple[str, str], str] = field(default_factory=dict)

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call a lifecycle hook on every plugin; one that raises is logged and skipped."""
        caller = getattr(self.pm.hook, hook)
        for impl in caller.get_hookimpls():
            args = {name: kwargs[name] for name in impl.argnames}
            try:
                impl.function(**args)
            except Exception:  # a plugin must not stop the cluster
                log.exception("plugin %s failed in %s", impl.plugin_name, hook)

    def describe(self) -> list[dict]:
        """One row per registered plugin: name, kinds it provides, distribution, version."""
        dists = {id(plugin): dist for plugin, dist in self.pm.list_plugin_distinfo()}
        rows = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda p: p[0]):
            if plugin is None:  # blocked
                continue
            kinds = sorted(
                {kind for (kind, _), owner in self.owners.items() if owner == name}
                | {
                    "lifecycle"
                    for impl in _impls_of(self.pm, plugin)
                    if not impl.function.__name__.startswith("pvc_register_")
                }
            )
            dist = dists.get(id(plugin))
            rows.append(
                {
                    "name": name,
                    "kinds": kinds,
                    "distribution": dist.project_name if dist else None,
                    "version": dist.version if dist else None,
                }
            )
        return rows


def _impls_of(pm: pluggy.PluginManager, plugin: object):
    for caller in pm.get_hookcallers(plugin) or ():
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin:
                yield impl


def disabled_from_env() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def load_plugins(
    *,
    disabled: Iterable[str] | None = None,
    extra: Iterable[object] = (),
    entry_points: bool = True,
) -> PluginSet:
    """Build a new plugin set.

    :param disabled: entry-point names to block; defaults to ``PVC_DISABLE_PLUGINS``.
    :param extra: plugin objects to register directly (tests, embedding).
    :param entry_points: load the ``pvc.plugins`` entry-point group.
    :raises PluginError: a hook name no spec knows, or a duplicate selector/fencer name.
    """
    pm = pluggy.PluginManager("pvc")
    pm.add_hookspecs(hookspecs)
    for name in disabled_from_env() if disabled is None else disabled:
        pm.set_blocked(name)
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r}: {exc}") from exc

    plugins = PluginSet(pm)
    _collect(plugins, "selector", "pvc_register_selectors", plugins.selectors, "score")
    _collect(plugins, "fencer", "pvc_register_fencers", plugins.fencers, "fence")
    return plugins


def _collect(plugins: PluginSet, kind: str, hook: str, into: dict, method: str) -> None:
    # Call each implementation on its own so a duplicate can name both plugins.
    for impl in getattr(plugins.pm.hook, hook).get_hookimpls():  # registration order
        owner = impl.plugin_name
        try:
            items = impl.function() or []
        except Exception as exc:
            raise PluginError(f"plugin {owner!r} failed in {hook}: {exc}") from exc
        for item in items:
            name = getattr(item, "name", None)
            if not isinstance(name, str) or not name or name == "default":
                raise PluginError(f"plugin {owner!r} registered a {kind} with an invalid name {name!r}")
            if not callable(getattr(item, method, None)) or not isinstance(getattr(item, "description", None), str):
                raise PluginError(f"plugin {owner!r}: {kind} {name!r} needs a description and a callable {method}()")
            if name in into:
                first = plugins.owners[(kind, name)]
                raise PluginError(f"{kind} name {name!r} is registered by both plugin {first!r} and plugin {owner!r}")
            into[name] = item
            plugins.owners[(kind, name)] = owner

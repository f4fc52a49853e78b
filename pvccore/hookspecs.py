"""The plugin contract: every hook pvc calls, and the objects plugins hand back.

Third-party plugins code against this module. A plugin is a module (or object)
named by an entry point in the ``pvc.plugins`` group that carries functions
decorated with ``pvccore.hookimpl``. Hooks are called with keyword arguments; an
implementation may accept fewer arguments than its spec, so specs can grow.

Registration hooks return lists of named objects. Names are unique across the
whole plugin set; a duplicate is a start-up error naming both plugins.

Lifecycle hooks are notifications. Their return values are ignored, and an
implementation that raises is logged and skipped: a plugin cannot stop the
cluster from doing its work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import pluggy

hookspec = pluggy.HookspecMarker("pvc")


# --------------------------------------------------------------------------
# Objects returned by registration hooks
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    """A placement strategy.

    ``score(vm, node, cluster)`` returns a float (higher is better) or ``None``
    when ``node`` cannot host ``vm``. It only sees nodes that already passed the
    core's filters (daemon ``run``, domain ``ready``, inside the VM's node limit,
    not the VM's current node, room for its memory). ``vm`` is a
    :class:`pvccore.domain.models.VM`, ``node`` a :class:`pvccore.domain.models.Node` and
    ``cluster`` a read-only :class:`pvccore.domain.models.Cluster`. Ties go to the node
    name that sorts first. ``score`` must not block: it runs inside every
    placement decision.
    """

    name: str
    description: str
    score: Callable[[Any, Any, Any], Optional[float]]


@dataclass(frozen=True)
class FenceResult:
    """What a fencer achieved: ``off`` is True only when the node is confirmed powered off."""

    off: bool
    message: str = ""


@dataclass(frozen=True)
class Fencer:
    """A way to power a node off.

    ``fence(node, params)`` receives the node name and the ``params`` dict of one
    entry of that node's fence configuration, and returns a :class:`FenceResult`.
    It must confirm the power state, not merely send a command, and must never
    put credentials from ``params`` into its message.

    Which params are credentials, masked as ``***`` in every answer (and kept when a
    configuration read back is posted again with ``***``), the fencer declares:

    - ``secret`` names them, and every other param may be shown; or
    - ``public`` names the params that may be shown, and every other one is secret:
      for a wrapper that passes any param through (a typo never shows a credential);
    - a param named in ``secret`` is secret whatever ``public`` says, and a fencer that
      declares neither has every param secret.

    Optionally ``is_off(node, params)`` looks at the power without changing it and returns True
    only when the node is reported powered off right now (False when on or unknown). The
    primary asks it as soon as a node is suspect: a node already off (a power loss) is fenced
    at once, without the saving throw that protects a healthy node which is only slow. It runs
    in its own thread and should give up within a few seconds.
    """

    name: str
    description: str
    fence: Callable[[str, dict], FenceResult]
    #: params that hold credentials
    secret: frozenset[str] = frozenset()
    #: params that may be shown; when given, every param not named here is secret
    public: frozenset[str] = frozenset()
    #: a read-only power check: True only when the node is reported off (see above)
    is_off: Optional[Callable[[str, dict], bool]] = None

    def is_secret(self, param: str) -> bool:
        """Whether ``param`` is masked, by the rules above."""
        if param in self.secret:
            return True
        if self.public:
            return param not in self.public
        return not self.secret

    def scrub(self, text: str, params: dict) -> str:
        """``text`` with the value of every secret param (of 3 characters or more) replaced by ``***``:
        for messages built from a tool's output, which may echo what it was given."""
        values = {str(v) for k, v in params.items() if self.is_secret(k) and len(str(v)) >= 3}
        for value in sorted(values, key=len, reverse=True):
            text = text.replace(value, "***")
        return text


# --------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------


@hookspec
def pvc_register_selectors():
    """Return a list of :class:`Selector` objects this plugin provides.

    Called once when the plugin set is loaded. Each selector's ``name`` is what a
    VM's ``node_selector`` metadata and the cluster's ``default_selector`` refer to.
    """


@hookspec
def pvc_register_fencers():
    """Return a list of :class:`Fencer` objects this plugin provides.

    Called once when the plugin set is loaded. A node's fence configuration names
    fencers by their ``name``.
    """


# --------------------------------------------------------------------------
# Lifecycle notifications
# --------------------------------------------------------------------------


@hookspec
def pvc_node_started(node, config):
    """The node daemon of ``node`` is up (registered, its first keepalive written).

    :param config: the daemon's settings (a :class:`pvccore.config.DaemonConfig`); a plugin that runs a
        service reads what it needs from it here (the ``api`` plugin: ``api_config``).
    """


@hookspec
def pvc_node_stopped(node):
    """The node daemon of ``node`` stopped (its primary role, if any, handed over or given up)."""


@hookspec
def pvc_node_state_changed(node, kind, old, new):
    """A node's state changed.

    :param node: node name.
    :param kind: which state: ``"daemon"``, ``"coordinator"`` or ``"domain"``.
    :param old: previous value (``None`` when first seen).
    :param new: new value.
    """


@hookspec
def pvc_vm_state_changed(vm, node, old, new, reason):
    """A VM's state changed, as observed by the node daemon that runs it.

    :param vm: VM name.
    :param node: the node the VM is on.
    :param old: previous state (``None`` when first seen).
    :param new: new state.
    :param reason: why, for ``fail`` and automatic actions; otherwise ``""``.
    """


@hookspec
def pvc_migration_finished(vm, source, target, method, seconds, ok):
    """A migration of ``vm`` from ``source`` to ``target`` ended.

    :param method: ``"live"`` or ``"shutdown"`` (the method actually used).
    :param seconds: wall time from start of the migration to the VM running on target.
    :param ok: False when the migration failed and the VM stayed on ``source``.
    """


@hookspec
def pvc_node_fenced(node, result):
    """The primary tried to fence ``node``; ``result`` is the :class:`FenceResult` of the last fencer tried."""


@hookspec
def pvc_node_recovered(node, moved, parked):
    """The VMs of fenced node ``node`` were recovered.

    :param moved: ``{vm: new node}`` for the VMs now starting elsewhere.
    :param parked: VM names left stopped with ``node_autostart`` (no valid target);
        they start on ``node``'s next ready.
    """


@hookspec
def pvc_handover_phase(phase, node, role, old_primary, new_primary):
    """A phase of a primary-coordinator handover is running on ``node``.

    Called on both nodes of the handover, in phase order, from the handover
    subthread, while that side holds the phase's lock. A plugin stops a cluster
    service when ``role == "relinquish"`` and ``phase == "stop-services"``, and
    starts it when ``role == "takeover"`` and ``phase == "start-services"``.

    :param phase: ``"stop-services"``, ``"move-ips"`` or ``"start-services"``.
    :param node: the node this call runs on.
    :param role: ``"relinquish"`` (old primary) or ``"takeover"`` (new primary).
    :param old_primary: the node giving up primary (``None`` on a fresh election).
    :param new_primary: the node becoming primary.
    """

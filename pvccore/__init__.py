"""pvc core: plugin contract, models, ZooKeeper store, placement and operations.

Plugins import only :data:`hookimpl` from here, plus the value types in
:mod:`pvccore.hookspecs` (``Selector``, ``Fencer``, ``FenceResult``).
"""

import pluggy

__version__ = "0.1.0"

#: Marker for plugin hook implementations: ``@hookimpl def pvc_register_selectors(): ...``
hookimpl = pluggy.HookimplMarker("pvc")

__all__ = ["hookimpl", "__version__"]

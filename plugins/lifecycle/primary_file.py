"""Lifecycle plugin ``primary-file``: a file that exists only on the primary coordinator.

An example of a cluster service that moves with the primary, in the right
handover phases: created in ``start-services`` on the node taking over, removed
in ``stop-services`` on the node giving up. Monitoring or a script (DNS, DHCP, a
metadata service) can key on it. Off unless ``PVC_PRIMARY_FILE`` names the path;
``{node}`` in it is replaced by the node's name.
"""

import os
import time

from pvccore import hookimpl


def _path(node: str) -> str | None:
    template = os.environ.get("PVC_PRIMARY_FILE")
    return template.replace("{node}", node) if template else None


@hookimpl
def pvc_handover_phase(phase, node, role, old_primary, new_primary):
    path = _path(node)
    if path is None:
        return
    if phase == "start-services" and role == "takeover":
        with open(path, "w") as fh:
            fh.write(f"{node} primary since {time.time():.3f} (after {old_primary or 'none'})\n")
    elif phase == "stop-services" and role == "relinquish":
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

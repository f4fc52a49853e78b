"""Lifecycle plugin ``handover-log``: logs every phase of a primary handover on the node running it.

A real plugin would stop a service on the old primary in ``stop-services`` and
start it on the new one in ``start-services`` (DNS, DHCP, a metadata API...).
"""

import logging

from pvccore import hookimpl

log = logging.getLogger("pvc.example.handover")


@hookimpl
def pvc_handover_phase(phase, node, role, old_primary, new_primary):
    log.info("handover phase %s on %s as %s (%s -> %s)", phase, node, role, old_primary, new_primary)

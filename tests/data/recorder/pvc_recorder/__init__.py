"""Appends every lifecycle notification to the file named by $PVC_TEST_EVENTS, one JSON line each."""

import json
import os

from pvccore import hookimpl


def _record(hook, **fields):
    path = os.environ.get("PVC_TEST_EVENTS")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"hook": hook, **fields}, default=repr) + "\n")


@hookimpl
def pvc_node_started(node, config):
    _record("node_started", node=node, coordinator=config.coordinator)


@hookimpl
def pvc_node_stopped(node):
    _record("node_stopped", node=node)


@hookimpl
def pvc_node_state_changed(node, kind, old, new):
    _record("node_state", node=node, kind=kind, old=old, new=new)


@hookimpl
def pvc_vm_state_changed(vm, node, old, new, reason):
    _record("vm_state", vm=vm, node=node, old=old, new=new, reason=reason)


@hookimpl
def pvc_migration_finished(vm, source, target, method, seconds, ok):
    _record("migration", vm=vm, source=source, target=target, method=method, seconds=seconds, ok=ok)


@hookimpl
def pvc_node_fenced(node, result):
    import time

    _record("fenced", node=node, off=result.off, message=result.message, at=time.time())


@hookimpl
def pvc_node_recovered(node, moved, parked):
    import time

    _record("recovered", node=node, moved=moved, parked=parked, at=time.time())


@hookimpl
def pvc_handover_phase(phase, node, role, old_primary, new_primary):
    import time

    _record("handover", phase=phase, node=node, role=role, old_primary=old_primary, new_primary=new_primary,
            at=time.time())
    # $PVC_TEST_SLOW_PHASE=phase:role:seconds holds that phase (and its lock) open during a handover
    # (not an election or a rollback), so a test can look at the locks or kill a daemon mid-handover.
    slow = os.environ.get("PVC_TEST_SLOW_PHASE", "")
    if slow and old_primary and new_primary:
        want_phase, want_role, seconds = slow.split(":")
        if (phase, role) == (want_phase, want_role):
            _record("slow", phase=phase, node=node, role=role)
            time.sleep(float(seconds))

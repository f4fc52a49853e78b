"""Lifecycle plugin ``api``: pvcapid runs on the primary coordinator and moves with it.

Started in the ``start-services`` phase on the node taking over (or resuming) the primary role,
stopped in ``stop-services`` on the node giving it up, when the node daemon's ``api_config`` names a
pvcapid configuration file. The daemon holds the API's stdin: when the daemon ends, even by SIGKILL,
the API reads end-of-file and stops (``--lifeline``), so no API outlives the primary it served.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

from pvccore import hookimpl

log = logging.getLogger(__name__)

_lock = threading.Lock()
_config: dict[str, str] = {}  # node -> pvcapid config file (several daemons may share a process in tests)
_running: dict[str, subprocess.Popen] = {}


@hookimpl
def pvc_node_started(node, config):
    with _lock:
        if getattr(config, "api_config", ""):
            _config[node] = config.api_config


@hookimpl
def pvc_node_stopped(node):
    _stop(node)
    with _lock:
        _config.pop(node, None)


@hookimpl
def pvc_handover_phase(phase, node, role, old_primary, new_primary):
    if phase == "start-services" and role == "takeover":
        _start(node)
    elif phase == "stop-services" and role == "relinquish":
        _stop(node)


def _start(node: str) -> None:
    with _lock:
        path, api = _config.get(node), _running.get(node)
        if not path or (api is not None and api.poll() is None):
            return  # not wanted here, or already serving
        if api is not None:  # it died: let go of its lifeline before starting another
            api.stdin.close()
        _running[node] = subprocess.Popen([sys.executable, "-m", "pvcapi.server", "-c", path, "--lifeline"],
                                          stdin=subprocess.PIPE)
        log.info("API started on %s (pid %d)", node, _running[node].pid)


def _stop(node: str) -> None:
    with _lock:
        api = _running.pop(node, None)
    if api is None:
        return
    if api.poll() is None:
        api.terminate()
        try:
            api.wait(15)
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait()
    api.stdin.close()
    log.info("API stopped on %s", node)

"""Fencer ``ipmi``: power a node off over IPMI (lanplus) with ipmitool, then confirm it is off.

Params: ``host`` (BMC address, required), ``username``, ``password``, ``port``
(623), ``cipher`` (3: without it every lanplus call spends ~10 s on cipher-suite
discovery), ``retries`` (2: ipmitool's tries after the first, 1 s each; its own
default spends 20 s on a BMC that does not answer), ``timeout`` (seconds to see
the power go off, 10). The password goes
to ipmitool through its environment (``-E``), never on a command line, in a log
or in a result message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from pvccore import hookimpl
from pvccore.hookspecs import Fencer, FenceResult


def _ipmitool(params: dict, *command: str) -> tuple[int, str]:
    exe = shutil.which("ipmitool")
    if exe is None:
        return 127, "ipmitool is not installed"
    retries = int(params.get("retries", 2))
    cmd = [exe, "-I", "lanplus", "-C", str(params.get("cipher", 3)), "-H", str(params["host"]),
           "-p", str(params.get("port", 623)), "-U", str(params.get("username", "")), "-E",
           "-N", "1", "-R", str(retries), *command]
    env = {**os.environ, "IPMI_PASSWORD": str(params.get("password", ""))}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5 + 2 * (retries + 1), env=env)
    except subprocess.TimeoutExpired:
        return 124, "ipmitool timed out"
    text = (out.stdout + out.stderr).strip().splitlines()
    return out.returncode, text[-1] if text else ""


def fence(node: str, params: dict) -> FenceResult:
    result = _fence(params)
    return FenceResult(result.off, FENCER.scrub(result.message, params))


def _fence(params: dict) -> FenceResult:
    if not params.get("host"):
        return FenceResult(False, "ipmi: no host in params")
    rc, msg = _ipmitool(params, "chassis", "power", "off")
    if rc != 0:
        return FenceResult(False, f"power off refused by {params['host']}: {msg}")
    deadline = time.monotonic() + float(params.get("timeout", 10))
    while True:
        rc, msg = _ipmitool(params, "chassis", "power", "status")
        if rc == 0 and msg.strip().lower().endswith("off"):
            return FenceResult(True, f"{params['host']}: chassis power is off")
        if time.monotonic() > deadline:
            return FenceResult(False, f"{params['host']}: power not confirmed off ({msg})")
        time.sleep(0.2)  # polling the BMC for the power state, under the deadline above


def is_off(node: str, params: dict) -> bool:
    """The BMC reports the chassis power off (one status query; no power command)."""
    if not params.get("host"):
        return False
    rc, msg = _ipmitool(params, "chassis", "power", "status")
    return rc == 0 and msg.strip().lower().endswith("off")


FENCER = Fencer("ipmi", "power off over IPMI lanplus (ipmitool), then confirm", fence,
                secret=frozenset({"password"}),
                public=frozenset({"host", "port", "username", "cipher", "retries", "timeout"}), is_off=is_off)


@hookimpl
def pvc_register_fencers():
    return [FENCER]

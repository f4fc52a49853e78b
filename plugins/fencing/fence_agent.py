"""Fencer ``fence-agent``: any agent of the fence-agents collection (fence_ipmilan, fence_apc, ...).

Params: ``agent`` (the agent's name, e.g. ``fence_ipmilan``, found on PATH) and
every other key passed to the agent on stdin as ``key=value`` lines, the
standard interface of fence-agents; ``action`` is set by this fencer (``off``,
then ``status`` to confirm). ``timeout`` (seconds, 60) bounds each call.

The agents take hundreds of params, so this fencer declares the ones that carry no
credential (:data:`PUBLIC`) and every other param is secret: masked in every answer,
and scrubbed from the agent's output before it becomes a result message.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from pvccore import hookimpl
from pvccore.hookspecs import Fencer, FenceResult

_AGENT = re.compile(r"^fence_[A-Za-z0-9_]+$")
#: fence-agents parameters that carry no credential; any other (the agents take hundreds, among them
#: passwd, password_script, identity_file, hexadecimal_kg, snmp_priv_passwd) is masked
PUBLIC = frozenset({"agent", "timeout", "ip", "ipaddr", "ipport", "port", "plug", "username", "login", "lanplus",
                    "cipher", "method", "ssl", "ssl_insecure", "notls", "inet4_only", "inet6_only", "privlvl",
                    "auth", "power_timeout", "power_wait", "shell_timeout", "login_timeout", "retry_on",
                    "delay", "verbose"})


def _run(agent: str, params: dict, action: str) -> tuple[int, str]:
    lines = [f"{k}={v}" for k, v in params.items() if k not in ("agent", "action", "timeout") and "\n" not in str(v)]
    stdin = "\n".join([f"action={action}", *lines]) + "\n"
    try:
        out = subprocess.run([agent], input=stdin, capture_output=True, text=True,
                             timeout=float(params.get("timeout", 60)))
    except subprocess.TimeoutExpired:
        return 124, f"{action} timed out"
    text = (out.stdout.strip() or out.stderr.strip()).splitlines()  # stderr may hold only warnings
    return out.returncode, text[-1] if text else ""


def fence(node: str, params: dict) -> FenceResult:
    result = _fence(params)
    return FenceResult(result.off, FENCER.scrub(result.message, params))


def _fence(params: dict) -> FenceResult:
    name = str(params.get("agent", ""))
    if not _AGENT.match(name):
        return FenceResult(False, f"fence-agent: 'agent' must name a fence agent like fence_ipmilan, got {name!r}")
    agent = shutil.which(name)
    if agent is None:
        return FenceResult(False, f"fence-agent: {name} is not installed")
    rc, msg = _run(agent, params, "off")
    if rc != 0:
        return FenceResult(False, f"{name} off failed (exit {rc}): {msg}")
    rc, msg = _run(agent, params, "status")
    if rc == 2 or msg.strip().lower().endswith("off"):  # fence-agents: status exit 2 means off
        return FenceResult(True, f"{name}: status off")
    return FenceResult(False, f"{name}: not confirmed off (exit {rc}): {msg}")


def is_off(node: str, params: dict) -> bool:
    """The agent's ``status`` action reports the node off (exit 2, by the fence-agents convention)."""
    name = str(params.get("agent", ""))
    agent = shutil.which(name) if _AGENT.match(name) else None
    if agent is None:
        return False
    rc, msg = _run(agent, params, "status")
    return rc == 2 or msg.strip().lower().endswith("off")


FENCER = Fencer("fence-agent", "any fence-agents agent (stdin key=value interface)", fence,
                secret=frozenset({"password", "passwd", "hexadecimal_kg", "kg", "community"}), public=PUBLIC,
                is_off=is_off)


@hookimpl
def pvc_register_fencers():
    return [FENCER]

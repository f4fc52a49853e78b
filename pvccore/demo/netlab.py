"""Hosts in network namespaces on 198.18.0.0/24, for multi-node tests and benchmarks on one machine.

A bridge in the root namespace holds 198.18.0.254/24; host ``i`` (1-based) is a
namespace with ``eth0`` = 198.18.0.i/24 on that bridge. Nothing is routed
anywhere else. ``down()`` removes everything, also after a failed run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

SUBNET = "198.18.0"
BRIDGE_IP = f"{SUBNET}.254"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


class NetLab:
    def __init__(self, hosts: int = 3, tag: str | None = None):
        tag = tag or f"{os.getpid() % 100000}"
        self.bridge = f"pvcbr{tag}"[:15]
        self.names = [f"pvc{tag}n{i}"[:15] for i in range(1, hosts + 1)]

    @staticmethod
    def available() -> tuple[bool, str]:
        """Whether this machine lets us create network namespaces (and why not)."""
        probe = f"pvcprobe{os.getpid() % 100000}"
        res = _ip("netns", "add", probe, check=False)
        if res.returncode != 0:
            return False, f"cannot create network namespaces: {res.stderr.strip()}"
        _ip("netns", "del", probe, check=False)
        return True, ""

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i}"

    def ns(self, i: int) -> str:
        return self.names[i - 1]

    def exec(self, i: int) -> list[str]:
        """Command prefix that runs a program on host ``i``."""
        return ["ip", "netns", "exec", self.ns(i)]

    def up(self) -> "NetLab":
        self.down()
        if BRIDGE_IP in _ip("-o", "addr", "show").stdout:
            raise RuntimeError(f"{BRIDGE_IP} is already in use on this machine (another lab running?)")
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{BRIDGE_IP}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, name in enumerate(self.names, start=1):
            veth = self._veth(i)
            _ip("netns", "add", name)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
            _ip("link", "set", veth, "master", self.bridge, "up")
            _ip("-n", name, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "lo", "up")
        return self

    def _veth(self, i: int) -> str:
        return f"{self.bridge[:9]}v{i}"

    def down(self) -> None:
        # Whatever still runs in our namespaces (a run that was killed before its own clean-up)
        # goes with them. The kernel destroys a deleted namespace (and its end of the veth)
        # asynchronously: delete our ends now, which removes both, so that up() finds the names free.
        for i, name in enumerate(self.names, start=1):
            for pid in _ip("netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("link", "del", self._veth(i), check=False)
            _ip("netns", "del", name, check=False)
        _ip("link", "del", self.bridge, check=False)

    def has_address(self, i: int, address: str) -> bool:
        out = _ip("-n", self.ns(i), "-o", "addr", "show", "dev", "eth0").stdout
        return re.search(rf"inet {re.escape(address)}/", out) is not None

    def __enter__(self) -> "NetLab":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()


class Pinger:
    """``ping -i interval`` from host ``i`` until stopped; then the counts."""

    def __init__(self, lab: NetLab, i: int, target: str, interval: float = 0.025):
        self.proc = subprocess.Popen([*lab.exec(i), "ping", "-n", "-i", f"{interval:g}", "-W", "1", target],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> tuple[int, int]:
        """Stop pinging; return ``(sent, received)``."""
        self.proc.send_signal(2)  # SIGINT: ping prints its summary
        out, _ = self.proc.communicate(timeout=10)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        if not m:
            raise RuntimeError(f"no ping summary in: {out[-500:]}")
        return int(m.group(1)), int(m.group(2))

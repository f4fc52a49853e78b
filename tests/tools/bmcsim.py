"""A simulated BMC answering real IPMI (RMCP+/lanplus) on a UDP port, for fencing tests.

"The node" it powers is a set of processes: a process group (``--pgid-file``: a
node daemon with its in-memory hypervisor), or a PID namespace (``--pidns-file``:
a cluster-in-a-box node, whose libvirtd, QEMU processes and daemon all live in
it). Power is on while a live process of that set remains; power off kills them
all. The file names the set (a pgid, or a ``pid:[inode]`` link) and is rewritten
when the node boots again. Built on pyghmi's BMC server.

With ``--netns NS`` (the node's network namespace), power off also takes the node's
network stack down as a real power cut does: the TCP connections its killed processes
leave behind are reset. Otherwise the kernel would go on sending what they had queued
(a guest's last disk write, say) and deliver it when a cut link comes back, long
after the node was fenced. Sockets of processes that outlive the node (a ZooKeeper
server in the same namespace) are left alone.

    python bmcsim.py --address 127.0.0.1 --port 6231 --user admin --password secret \
        (--pgid-file F | --pidns-file F) [--netns NS] [--refuse]
"""

import argparse
import os
import signal
import subprocess
import time
from pathlib import Path

import pyghmi.ipmi.bmc as bmc


def _live_pids():
    """``(pid, /proc/<pid>, stat fields after the command name)`` of every process that is not a zombie."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            yield int(proc.name), proc, fields


def pgid_members(pgid: str) -> list[int]:
    return [pid for pid, _proc, fields in _live_pids() if fields[2] == pgid]


def pidns_members(link: str) -> list[int]:
    out = []
    for pid, proc, _fields in _live_pids():
        try:
            if os.readlink(proc / "ns" / "pid") == link:
                out.append(pid)
        except OSError:
            continue
    return out


def kill_members(members, timeout: float) -> list[int]:
    """SIGKILL every process ``members()`` names until none is left; the survivors at ``timeout``."""
    deadline = time.monotonic() + timeout
    while (pids := members()) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)  # the kernel is reaping the killed processes
    return pids


class NodeBmc(bmc.Bmc):
    def __init__(self, authdata, port, address, domain_file: Path, members, refuse: bool, netns: str = ""):
        super().__init__(authdata, port=port, address=address)
        self.domain_file, self.members, self.refuse, self.netns = domain_file, members, refuse, netns

    def _pids(self) -> list[int]:
        try:
            key = self.domain_file.read_text().strip()
        except OSError:
            return []
        return self.members(key) if key else []

    def get_power_state(self):
        return "on" if self._pids() else "off"

    def power_off(self):
        if self.refuse:
            return 0xD5  # command not supported in present state: a BMC that will not power off
        kill_members(self._pids, 5)  # like cutting the power: once the command returns, the status reads off
        if self.netns:
            drop_orphaned_connections(self.netns)
        return None

    def power_on(self):
        return 0xD5

    def power_reset(self):
        return self.power_off()

    def power_shutdown(self):
        return self.power_off()


def drop_orphaned_connections(netns: str) -> None:
    """Reset every TCP connection in ``netns`` that no live process owns (see the module docstring)."""
    listing = subprocess.run(["ip", "netns", "exec", netns, "ss", "-tanpH"], capture_output=True, text=True)
    for line in listing.stdout.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[0] in ("LISTEN", "TIME-WAIT") or "users:" in line:  # (TIME-WAIT: no data)
            continue
        subprocess.run(["ip", "netns", "exec", netns, "ss", "-K", "-tn", "src", fields[3], "dst", fields[4]],
                       capture_output=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--port", type=int, default=623)
    p.add_argument("--user", default="admin")
    p.add_argument("--password", default="secret")
    domain = p.add_mutually_exclusive_group(required=True)
    domain.add_argument("--pgid-file")
    domain.add_argument("--pidns-file")
    p.add_argument("--netns", default="")
    p.add_argument("--refuse", action="store_true")
    a = p.parse_args()
    members = pgid_members if a.pgid_file else pidns_members
    NodeBmc({a.user: a.password}, a.port, a.address, Path(a.pgid_file or a.pidns_file), members, a.refuse,
            a.netns).listen()


if __name__ == "__main__":
    main()

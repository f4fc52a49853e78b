"""A simulated BMC answering real IPMI (RMCP+/lanplus) on a UDP port, for fencing tests.

It powers "the node" off by killing a process group (the node daemon with its
in-memory hypervisor), and reports power on while a process in that group lives.
Built on pyghmi's BMC server.

    python bmcsim.py --address 127.0.0.1 --port 6231 --user admin --password secret --pgid-file F [--refuse]
"""

import argparse
import os
import signal
from pathlib import Path

import pyghmi.ipmi.bmc as bmc


class NodeBmc(bmc.Bmc):
    def __init__(self, authdata, port, address, pgid_file: Path, refuse: bool):
        super().__init__(authdata, port=port, address=address)
        self.pgid_file = pgid_file
        self.refuse = refuse

    def _pgid(self):
        try:
            return int(self.pgid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def get_power_state(self):
        """On while a live (not zombie) process of the group remains."""
        pgid = self._pgid()
        if pgid is None:
            return "off"
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return "on"
        return "off"

    def power_off(self):
        if self.refuse:
            return 0xD5  # command not supported in present state: a BMC that will not power off
        pgid = self._pgid()
        if pgid is not None:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return None

    def power_on(self):
        return 0xD5

    def power_reset(self):
        return self.power_off()

    def power_shutdown(self):
        return self.power_off()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", default="admin")
    p.add_argument("--password", default="secret")
    p.add_argument("--pgid-file", required=True)
    p.add_argument("--refuse", action="store_true")
    a = p.parse_args()
    NodeBmc({a.user: a.password}, a.port, a.address, Path(a.pgid_file), a.refuse).listen()


if __name__ == "__main__":
    main()

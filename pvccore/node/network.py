"""Floating IP addresses: add with gratuitous ARP, remove. Runs ``ip`` and ``arping`` (Habets) in the foreground."""

from __future__ import annotations

import ipaddress
import logging
import re
import subprocess
from dataclasses import dataclass

from pvccore.errors import ValidationError

log = logging.getLogger(__name__)
_IFACE = re.compile(r"^[A-Za-z0-9_.@:-]{1,15}$")


@dataclass(frozen=True)
class FloatingIP:
    """``address/prefix@interface``, e.g. ``198.18.0.100/24@eth0``."""

    address: str  # with prefix
    interface: str

    @classmethod
    def parse(cls, text: str) -> "FloatingIP":
        addr, sep, iface = text.rpartition("@")
        try:
            iface_addr = ipaddress.ip_interface(addr)
        except ValueError:
            iface_addr = None
        if not sep or iface_addr is None or "/" not in addr or not _IFACE.match(iface):
            raise ValidationError(f"floating_ips: expected ADDRESS/PREFIX@INTERFACE, got {text!r}", "floating_ips")
        return cls(str(iface_addr), iface)

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    def __str__(self) -> str:
        return f"{self.address}@{self.interface}"


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def present(fip: FloatingIP) -> bool:
    out = _run(["ip", "-o", "addr", "show", "dev", fip.interface]).stdout
    return f" {fip.address} " in out or f" {fip.address}\n" in out


def add(fip: FloatingIP, arp_count: int, arp_interval: float) -> None:
    """Configure the address, then announce it so neighbours update their ARP caches at once.

    The announcements are gratuitous ARP *requests* (sender IP = target IP): Linux takes
    those even for a neighbour entry younger than its ``locktime`` (1 s), while
    unsolicited *replies* (``arping -P``) with a broadcast target MAC are ignored then;
    measured here, replies lost up to 46 pings at 25 ms, requests none.
    """
    res = _run(["ip", "addr", "add", fip.address, "dev", fip.interface])
    if res.returncode != 0 and "File exists" not in res.stderr:
        raise OSError(f"ip addr add {fip}: {res.stderr.strip()}")
    if ipaddress.ip_interface(fip.address).version == 4 and arp_count > 0:
        res = _run(["arping", "-q", "-U", "-W", f"{arp_interval:g}", "-c", str(arp_count),
                    "-i", fip.interface, "-S", fip.ip, fip.ip])
        if res.returncode not in (0, 1):  # 1: no replies, which an unsolicited announcement never gets
            log.warning("arping for %s failed: %s", fip, res.stderr.strip())


def remove(fip: FloatingIP) -> None:
    res = _run(["ip", "addr", "del", fip.address, "dev", fip.interface])
    if res.returncode != 0 and "Cannot assign requested address" not in res.stderr:
        raise OSError(f"ip addr del {fip}: {res.stderr.strip()}")

"""Real guests in the cluster in a box: booted Linux (tests/tools/guestimage.py) with a disk on shared
storage and an address on the nodes' network.

- **Network**: every node namespace gets a bridge ``pvcguest`` whose uplink (``eth1``) is a veth on the
  lab's own bridge, the L2 segment the nodes, the client and the management host are on. A guest's tap
  joins ``pvcguest`` on whichever node runs it, so the guest keeps its address (198.18.0.150 and up)
  wherever it runs, and the client reaches it directly. A link cut takes ``eth1`` down with ``eth0``.
- **Storage**: each guest's disk is a raw file in the box's shared directory, served over NBD by a
  ``qemu-storage-daemon`` in the management namespace (198.18.0.N+2), the way a cluster reaches a
  storage server over its network. libvirt counts a network disk as shared, so live migration is safe
  and needs no ``--unsafe``; a plain directory the node namespaces share would be refused (libvirt 9.0
  sees a local file system, and this kernel has no NFS client to make it one). The cache mode is
  ``directsync`` (no host cache, and a write cache the guest sees as off): each journal write is on the
  storage when it returns, which the guest's one long-lived writer relies on instead of a flush.
- **Disk locks**: each disk has a lease ``<key>`` in the nodes' virtlockd lockspace (``shared/leases``,
  see the harness). libvirt locks file and block disks by itself but hands network disks to no lock
  manager, so the domain XML names the lease; a second QEMU with the same disk is refused at start,
  and a live migration hands the lease over when the source pauses.
- **Accelerator**: KVM when ``/dev/kvm`` works and is not PVM (``/sys/module/kvm_pvm``: it runs only
  guests built for it, and Debian's kernel is not); TCG otherwise. Every figure records which.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import libvirt

from tests.tools.guestimage import GuestImage, build, journal_problems, new_disk, read_journal

BRIDGE = "pvcguest"
NBD_PORT = 10809
FIRST_GUEST = 150  # guests take 198.18.0.150 and up


def accelerator() -> str:
    """``kvm`` when this host's KVM runs a stock Linux guest, else ``qemu`` (TCG)."""
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError:
        return "qemu"
    return "qemu" if Path("/sys/module/kvm_pvm").exists() else "kvm"


@dataclass
class Guest:
    name: str
    address: str
    disk: Path
    console: Path
    storage: subprocess.Popen

    def journal(self) -> list[tuple[str, int]]:
        return read_journal(self.disk)

    def journal_problems(self) -> list[str]:
        return journal_problems(self.journal())

    def boots(self) -> list[str]:
        """The boot ids in the journal, in the order they wrote (one entry per run of records)."""
        out: list[str] = []
        for boot_id, _ in self.journal():
            if not out or out[-1] != boot_id:
                out.append(boot_id)
        return out


class GuestLab:
    """The guest network, shared storage and guest image of one :class:`ClusterBox`."""

    def __init__(self, box):
        self.box = box
        self.dir = box.dir / "shared"
        self.image: GuestImage | None = None
        self.guests: dict[str, Guest] = {}
        self.domain_type = accelerator()

    def up(self) -> "GuestLab":
        self.image = build()
        self.dir.mkdir(parents=True, exist_ok=True)
        lab = self.box.net
        for node in self.box.nodes.values():
            veth = f"{lab.bridge[:8]}g{node.index}"
            # A box torn down a moment ago may still hold this pair: the kernel removes the end in a deleted
            # namespace (and so the pair) asynchronously. Deleting our end removes both now.
            subprocess.run(["ip", "link", "del", veth], capture_output=True, timeout=30)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth1", "netns", node.ns)
            _ip("link", "set", veth, "master", lab.bridge, "up")
            _ip("-n", node.ns, "link", "add", BRIDGE, "type", "bridge")
            _ip("-n", node.ns, "link", "set", "eth1", "master", BRIDGE, "up")
            _ip("-n", node.ns, "link", "set", BRIDGE, "up")
        return self

    @property
    def storage_address(self) -> str:
        return self.box.net.address(self.box.mgmt)

    def define(self, name: str, node: str, memory_mib: int = 128, dirty_mib: int = 0, start: bool = True,
               meta: dict | None = None) -> Guest:
        """A guest with a fresh journal disk, defined through pvc on ``node``."""
        guest, xml = self.prepare(name, memory_mib, dirty_mib)
        self.box.ops.define_vm(xml, meta or {}, target=node, start=start)
        return guest

    def prepare(self, name: str, memory_mib: int = 128, dirty_mib: int = 0) -> tuple[Guest, str]:
        """A guest's fresh journal disk, its lease and its storage server: the guest and its domain XML,
        for any cluster manager to define."""
        index = len(self.guests)
        address = f"198.18.0.{FIRST_GUEST + index}"
        disk = new_disk(self.dir / f"{name}.img")
        (self.box.lockspace / disk.name).touch()  # a lease file is made with the disk, as its lock
        port = NBD_PORT + index
        log = open(self.dir / f"{name}.storage.log", "ab")
        storage = subprocess.Popen(
            [*self.box.net.exec(self.box.mgmt), "qemu-storage-daemon",
             "--blockdev", f"driver=file,node-name=file0,filename={disk},cache.direct=on",
             "--blockdev", "driver=raw,node-name=disk0,file=file0",
             "--nbd-server", f"addr.type=inet,addr.host={self.storage_address},addr.port={port}",
             "--export", f"type=nbd,id=export0,node-name=disk0,name={name},writable=on"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.box.reap.append(storage)
        _wait_port(self.box.net.exec(self.box.mgmt), self.storage_address, port, storage)
        guest = Guest(name, address, disk, self.dir / f"{name}.console", storage)
        self.guests[name] = guest
        return guest, self.xml(guest, port, memory_mib, dirty_mib)

    def xml(self, guest: Guest, port: int, memory_mib: int, dirty_mib: int) -> str:
        cmdline = f"console=ttyS0 quiet panic=-1 pvc.ip={guest.address}/24"
        if dirty_mib:
            cmdline += f" pvc.dirty={dirty_mib}"
        mac = "52:54:00:12:%02x:%02x" % divmod(int(guest.address.rsplit(".", 1)[1]), 256)
        return f"""<domain type='{self.domain_type}'>
  <name>{guest.name}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{self.image.kernel}</kernel><initrd>{self.image.initrd}</initrd><cmdline>{cmdline}</cmdline></os>
  <on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='directsync'/>
      <source protocol='nbd' name='{guest.name}'><host name='{self.storage_address}' port='{port}'/></source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'><source bridge='{BRIDGE}'/><model type='virtio'/><mac address='{mac}'/></interface>
    <lease><lockspace>{self.box.lockspace.name}</lockspace><key>{guest.disk.name}</key>
      <target path='{self.box.lockspace.parent}'/></lease>
    <serial type='file'><source path='{guest.console}' append='on'/></serial>
    <memballoon model='none'/><controller type='usb' model='none'/>
  </devices>
</domain>"""

    def second_copy(self, guest: Guest, node: str) -> str | None:
        """Start a copy of ``guest`` (same disk and lease, another name) on ``node``'s libvirt behind pvc's
        back: libvirt's error, or None if it started (it is stopped and removed again either way)."""
        conn = libvirt.open(self.box.nodes[node].uri)
        try:
            root = ET.fromstring(self.box.store.get_vm_xml(guest.name))
            root.find("name").text = f"{guest.name}-copy"
            root.find("uuid").text = str(uuid.uuid4())
            root.find("devices/interface/mac").set("address", "52:54:00:ff:ff:ff")
            root.find("devices/serial/source").set("path", f"{guest.console}-copy")
            dom = conn.defineXML(ET.tostring(root, encoding="unicode"))
            try:
                dom.create()
            except libvirt.libvirtError as exc:
                return str(exc)
            finally:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            return None
        finally:
            conn.close()

    def answers(self, guest: Guest, timeout: float = 60.0) -> float | None:
        """Seconds until ``guest`` answers a ping from the client host, or None by the deadline."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            res = subprocess.run([*self.box.net.exec(self.box.client), "ping", "-n", "-c", "1", "-W", "1",
                                  guest.address], capture_output=True)
            if res.returncode == 0:
                return time.monotonic() - start
        return None

    def console(self, guest: Guest) -> str:
        try:
            return guest.console.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no console output)"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _wait_port(prefix: list[str], host: str, port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Until something listens on ``host:port`` in the namespace of ``prefix`` (polled, with a deadline)."""
    probe = f"import socket; socket.create_connection(({host!r}, {port}), 0.5).close()"
    deadline = time.monotonic() + timeout
    while subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"qemu-storage-daemon did not listen on {host}:{port}")
        time.sleep(0.05)

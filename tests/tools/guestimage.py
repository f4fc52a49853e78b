"""A real Linux guest for the cluster in a box, built from Debian packages alone and cached.

- kernel: the one ``linux-image-amd64`` depends on, unpacked with ``dpkg-deb -x`` (never installed
  on this host), booted directly by QEMU: its uncompressed ELF image (taken out of the bzImage) when
  that carries a PVH entry note, which QEMU enters in 64-bit mode straight away (under TCG a guest
  reaches /init in about half the time of the bzImage, which decompresses itself first), the
  bzImage otherwise;
- initramfs: ``busybox-static``, the virtio modules the guest needs (their dependencies read from
  each module's own ``depends=``), and an ``/init`` that takes its address from the kernel command
  line (``pvc.ip=ADDRESS/PREFIX``), answers ICMP (the kernel does), and runs the workload:

  - the **journal**: every 100 ms one 512-byte record ``pvc <boot id> <sequence>`` is written to the
    next sector of its virtio disk (``/dev/vda``) with O_DIRECT, on a disk whose write cache is off
    (the domain's ``cache='directsync'``), so each record is on the storage when its write returns;
    a guest that boots again finds the end of the journal by binary search and goes on after it,
    with a new boot id and sequence 0;
  - the **dirtier**: with ``pvc.dirty=N`` it rewrites N MiB of memory (a tmpfs file) continuously.

:func:`read_journal` reads a disk image back, and :func:`journal_problems` says what a reader of
that disk would object to: two boot ids interleaved (two writers at once), a sequence that goes
back or skips within one boot (a flushed record lost).

    python3 tests/tools/guestimage.py          (build into the cache, print the paths)
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("PVC_GUEST_CACHE", "/var/cache/pvc-guest"))
#: what the guest loads, in this order after their dependencies
WANTED = ("virtio_pci", "virtio_blk", "virtio_net")
RECORD = 512  # one journal record per sector
JOURNAL_SECTORS = 131072  # a 64 MiB disk: over 3 hours of records at 10 a second

INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /bin /sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
for m in $(cat /etc/modules); do insmod /lib/modules/$m.ko; done
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^pvc\.$1=//p"; }
IP=$(arg ip)
ip link set lo up
ip link set eth0 up
[ -n "$IP" ] && ip addr add "$IP" dev eth0
[ -n "$IP" ] && arping -U -c 2 -I eth0 "${IP%/*}" >/dev/null 2>&1 &
BOOT=$(cut -c1-8 /proc/sys/kernel/random/boot_id)
echo "pvc-guest: boot $BOOT address ${IP:-none}" > /dev/console
DIRTY=$(arg dirty)
if [ -n "$DIRTY" ]; then
    ( while :; do dd if=/dev/zero of=/tmp/dirty bs=1M count="$DIRTY" conv=notrunc 2>/dev/null; done ) &
fi
n=0
while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
used() { [ "$(dd if=/dev/vda bs=512 skip="$1" count=1 2>/dev/null | head -c 3)" = "pvc" ]; }
lo=0
hi=$(( $(cat /sys/block/vda/size) ))
while [ $lo -lt $hi ]; do
    mid=$(( (lo + hi) / 2 ))
    if used $mid; then lo=$((mid + 1)); else hi=$mid; fi
done
slot=$lo
seq=0
echo "pvc-guest: journal from sector $slot" > /dev/console
# One writer for the whole boot: a dd that reads whole 512-byte records from a FIFO and writes them
# with O_DIRECT (its 4 KiB buffer is page-aligned, as O_DIRECT needs; a smaller one would make it fall
# back to the page cache) to a disk whose write cache is off (the domain's cache='directsync'): a
# record is on the storage when its write returns, as with a flush after each, without a process
# started per record (a dd ... conv=fsync per record took 13% of a core under TCG; this takes 3%).
# The 100 ms wait is a read with a timeout on a FIFO nobody writes: the shell's builtins do the rest.
mkfifo /tmp/records /tmp/tick
dd if=/tmp/records of=/dev/vda bs=4096 seek=$((slot * 512)) oflag=direct,seek_bytes conv=notrunc 2>/dev/console &
exec 5> /tmp/records
exec 3<> /tmp/tick
while :; do
    printf '%-511s\n' "pvc $BOOT $seq" >&5
    seq=$((seq + 1))
    read -t 0.1 _ <&3
done
"""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    version: str


def _run(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, cwd=cwd).stdout


def _download(package: str, into: Path) -> Path:
    found = sorted(into.glob(f"{package}_*.deb"))
    if not found:
        _run("apt-get", "download", package, cwd=into)
        found = sorted(into.glob(f"{package}_*.deb"))
    return found[-1]


def _kernel_package() -> str:
    """The versioned kernel package ``linux-image-amd64`` stands for (the package lists read first if this
    machine has none yet)."""
    for attempt in (1, 2):
        res = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True)
        m = re.search(r"Depends: (linux-image-[0-9][^\s]*-amd64)", res.stdout)
        if m:
            return m.group(1)
        if attempt == 1:
            _run("apt-get", "update", "-qq")
    raise RuntimeError(f"cannot tell which kernel linux-image-amd64 stands for:\n{res.stdout}{res.stderr}")


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.suffix == ".xz" else data


def _depends(module: bytes) -> list[str]:
    m = re.search(rb"depends=([A-Za-z0-9_,-]*)\x00", module)
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d] if m else []


def _load_order(modules: dict[str, Path]) -> list[str]:
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for dep in _depends(_module_bytes(modules[name])):
            visit(dep)
        order.append(name)

    for name in WANTED:
        visit(name)
    return order


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A ``newc`` cpio archive of ``(path, mode, data)`` entries (directories have mode 0o040755)."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\x00"
        header = "070701" + "".join(f"{v:08x}" for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0,
                                                          len(encoded), 0))
        out.write(header.encode() + encoded)
        out.write(b"\x00" * (-(110 + len(encoded)) % 4))
        out.write(data)
        out.write(b"\x00" * (-len(data) % 4))
    return out.getvalue()


def _pvh_elf(bzimage: bytes) -> bytes | None:
    """The uncompressed kernel inside ``bzimage`` if it is an ELF image with a PVH entry (a Xen note of
    type XEN_ELFNOTE_PHYS32_ENTRY), else None. The payload is found by its xz or gzip magic."""
    for magic, unpack in ((b"\xfd7zXZ\x00", lambda b: lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(b)),
                          (b"\x1f\x8b\x08", lambda b: zlib.decompressobj(wbits=31).decompress(b))):
        at = bzimage.find(magic)
        if at < 0:
            continue
        try:
            elf = unpack(bzimage[at:])
        except (lzma.LZMAError, zlib.error):
            continue
        try:
            if elf[:5] == b"\x7fELF\x02" and _has_pvh_note(elf):
                return elf
        except struct.error:  # cut short: not a whole ELF image
            continue
    return None


def _has_pvh_note(elf: bytes) -> bool:
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, offset, _vaddr, _paddr, size = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        at, end = offset, offset + size
        while at + 12 <= end:
            namesz, descsz, kind = struct.unpack_from("<III", elf, at)
            name = elf[at + 12:at + 12 + namesz].rstrip(b"\x00")
            if name == b"Xen" and kind == 18:
                return True
            at += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def build(cache: Path = CACHE) -> GuestImage:
    """The kernel and initramfs, built once into ``cache`` (again when the kernel package changes)."""
    cache.mkdir(parents=True, exist_ok=True)
    package = _kernel_package()
    version = package.removeprefix("linux-image-")
    bzimage, elf, initrd = cache / f"vmlinuz-{version}", cache / f"vmlinux-{version}", cache / f"initrd-{version}.gz"
    stamp = cache / f"initrd-{version}.init"
    if bzimage.exists() and initrd.exists() and stamp.exists() and stamp.read_text() == INIT:
        return GuestImage(elf if elf.exists() else bzimage, initrd, version)
    with tempfile.TemporaryDirectory(prefix="pvc-guest-") as tmp:
        work = Path(tmp)
        for deb in (_download(package, cache), _download("busybox-static", cache)):
            _run("dpkg-deb", "-x", str(deb), str(work))
        modules = {p.name.split(".ko")[0].replace("-", "_"): p
                   for p in (work / "lib" / "modules" / version).rglob("*.ko*")}
        order = _load_order(modules)
        entries = [(d, 0o040755, b"") for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp")]
        entries += [("bin/busybox", 0o100755, (work / "bin" / "busybox").read_bytes()),
                    ("init", 0o100755, INIT.encode()),
                    ("etc/modules", 0o100644, "\n".join(order).encode() + b"\n")]
        entries += [(f"lib/modules/{name}.ko", 0o100644, _module_bytes(modules[name])) for name in order]
        partial = initrd.with_suffix(".part")
        partial.write_bytes(gzip.compress(_cpio(entries), 6))
        pvh = _pvh_elf((work / "boot" / f"vmlinuz-{version}").read_bytes())
        if pvh is not None:
            part = cache / f"{elf.name}.part"
            part.write_bytes(pvh)
            part.rename(elf)
        shutil.copyfile(work / "boot" / f"vmlinuz-{version}", bzimage)
        partial.rename(initrd)
        stamp.write_text(INIT)
    return GuestImage(elf if elf.exists() else bzimage, initrd, version)


def new_disk(path: Path, sectors: int = JOURNAL_SECTORS) -> Path:
    """An empty journal disk (raw, all zeros, sparse)."""
    with open(path, "wb") as fh:
        fh.truncate(sectors * RECORD)
    return path


def read_journal(path: Path) -> list[tuple[str, int]]:
    """The ``(boot id, sequence)`` records of a journal disk, in sector order, up to the first empty sector."""
    out = []
    with open(path, "rb") as fh:
        while (sector := fh.read(RECORD)) and sector.startswith(b"pvc "):
            _, boot, seq = sector.split(None, 3)[:3]
            out.append((boot.decode(), int(seq)))
    return out


def journal_problems(records: list[tuple[str, int]]) -> list[str]:
    """What a reader of the disk would object to: interleaved writers, a lost or repeated record."""
    problems, finished = [], set()
    for i, (boot, seq) in enumerate(records):
        prev = records[i - 1] if i else None
        if prev is None or prev[0] != boot:
            if boot in finished:
                problems.append(f"sector {i}: boot {boot} writes again after another boot wrote (two writers)")
            if prev is not None:
                finished.add(prev[0])
            if seq != 0:
                problems.append(f"sector {i}: boot {boot} starts at sequence {seq}, not 0")
        elif seq != prev[1] + 1:
            problems.append(f"sector {i}: boot {boot} goes from {prev[1]} to {seq} (a record lost or repeated)")
    return problems


if __name__ == "__main__":
    image = build()
    print(f"kernel {image.kernel}\ninitrd {image.initrd}", file=sys.stdout)

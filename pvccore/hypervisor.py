"""The libvirt layer: one node's hypervisor, the same code for QEMU/KVM and libvirt's test driver.

Whether a hypervisor can live-migrate is read from its capabilities
(``<migration_features><live/>``), not from its name: the test driver reports
none and so takes the shutdown + start path.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from .errors import ValidationError
from .models import check_name

log = logging.getLogger(__name__)

# libvirt prints every error to stderr by default; we raise them instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

#: libvirt's memory units, in bytes (integers: a long number times a unit never overflows)
_UNIT_BYTES = {"b": 1, "bytes": 1, "kb": 1000, "k": 1024, "kib": 1024, "mb": 1000 ** 2, "m": 1024 ** 2,
               "mib": 1024 ** 2, "gb": 1000 ** 3, "g": 1024 ** 3, "gib": 1024 ** 3, "tb": 1000 ** 4, "t": 1024 ** 4,
               "tib": 1024 ** 4}
#: ASCII only, no sign, no spaces: str.isdigit() takes '²' and other scripts' digits, and libvirt refuses
#: a number with a space after it; 20 digits bound the arithmetic before any unit is applied
_DIGITS = re.compile(r"[0-9]{1,20}")
#: what libvirt's virUUIDParse takes, less its oddities (Python's UUID() also takes 'urn:uuid:' and braces,
#: which libvirt refuses)
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
_ASCII_SPACE = " \t\r\n"
MAX_MEMORY_MIB = 16 * 1024 * 1024  # 16 TiB: more than any hypervisor has
MAX_VCPUS = 1024  # QEMU's own ceiling for an x86 guest


class HypervisorError(Exception):
    """A libvirt operation failed; the message is libvirt's, fit for a VM's ``reason``."""


@dataclass(frozen=True)
class DomainSpec:
    """What pvc reads from a domain XML."""

    name: str
    uuid: str
    memory_mib: int
    vcpus: int
    xml: str
    #: the XML had no UUID and ``uuid`` is a new one (added to ``xml``)
    generated_uuid: bool = False


def parse_domain_xml(xml: str) -> DomainSpec:
    """Read name, UUID, memory and vCPUs from libvirt domain XML; add a UUID when there is none.

    Strict where libvirt would fail later (the VM would be stored, then end in ``fail``), and
    reading each field as libvirt does (the text of the element and its children): one
    ``<name>`` exactly as written, one ``<memory>`` and at most one ``<vcpu>`` (libvirt's
    default: 1) of ASCII digits within sane bounds (integer arithmetic: no overflow), a
    ``current`` vCPU count no larger than ``<vcpu>``, at most one ``<uuid>`` in a form libvirt
    reads. No DOCTYPE: a domain needs none, and entity declarations only serve expansion attacks.

    :raises ValidationError: not domain XML, or a field is missing or malformed (field ``xml``).
    """
    root = _parse(xml)
    if root.tag != "domain":
        raise ValidationError(f"expected a <domain> document, got <{root.tag[:64]}>", "xml")
    name = _text(_one(root, "name"))
    if not name.strip():
        raise ValidationError("domain XML has no <name>", "xml")
    if name != name.strip():
        raise ValidationError(f"<name> {name[:80]!r} has spaces around it; libvirt would keep them", "xml")
    check_name(name, "VM", "xml")
    memory_mib = _memory_mib(_one(root, "memory"))
    vcpus = _vcpus(_one(root, "vcpu", optional=True))
    uuid_el = _one(root, "uuid", optional=True)
    if uuid_el is None or not _text(uuid_el).strip(_ASCII_SPACE):
        uuid_el = uuid_el if uuid_el is not None else ET.SubElement(root, "uuid")
        uuid_el[:] = []
        uuid_el.text = str(uuidlib.uuid4())
        return DomainSpec(name, uuid_el.text, memory_mib, vcpus, ET.tostring(root, encoding="unicode"), True)
    given = _text(uuid_el).strip(_ASCII_SPACE)
    if not _UUID.fullmatch(given):
        raise ValidationError(f"bad <uuid> {given[:64]!r}: give 32 hexadecimal digits, as in "
                              "6f1c1a0e-51a3-4b8e-9d0c-3b2f4f0d8a11", "xml")
    return DomainSpec(name, str(uuidlib.UUID(given)), memory_mib, vcpus, xml)


class _NoDoctype(ET.TreeBuilder):
    def doctype(self, name, pubid, system):
        raise ValidationError("domain XML must not have a DOCTYPE (nor entity declarations)", "xml")


def _parse(xml: str) -> ET.Element:
    parser = ET.XMLParser(target=_NoDoctype())
    try:
        parser.feed(xml)
        return parser.close()
    except ET.ParseError as exc:
        raise ValidationError(f"not valid XML: {exc}", "xml") from exc


def _text(el: ET.Element) -> str:
    """An element's text as libvirt's XPath ``string()`` reads it: its own and its children's."""
    return "".join(el.itertext())


def _one(root: ET.Element, tag: str, optional: bool = False) -> ET.Element | None:
    found = root.findall(tag)
    if len(found) > 1:
        raise ValidationError(f"domain XML has {len(found)} <{tag}> elements; give one", "xml")
    if not found and not optional:
        raise ValidationError(f"domain XML has no <{tag}>", "xml")
    return found[0] if found else None


def _whole(text: str, what: str, low: int, high: int) -> int:
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise ValidationError(f"{what} must be a whole number from {low} to {high} (ASCII digits, no spaces); "
                              f"got {text[:32]!r}", "xml")
    return int(text)


def _vcpus(el: ET.Element | None) -> int:
    if el is None:
        return 1
    vcpus = _whole(_text(el), "<vcpu>", 1, MAX_VCPUS)
    if el.get("current") is not None:
        _whole(el.get("current"), "<vcpu current=...>", 1, vcpus)
    return vcpus


def _memory_mib(mem: ET.Element) -> int:
    unit = (mem.get("unit") or "KiB").lower()
    if unit not in _UNIT_BYTES:
        raise ValidationError(f"unknown memory unit {mem.get('unit')[:16]!r}; use one of b, KiB, MiB, GiB, TiB, "
                              "KB, MB, GB, TB", "xml")
    text = _text(mem)
    if not _DIGITS.fullmatch(text):
        raise ValidationError(f"<memory> must be a whole number (ASCII digits, at most 20, no spaces); "
                              f"got {text[:32]!r}", "xml")
    mib = int(text) * _UNIT_BYTES[unit] // 1024 ** 2
    if not 1 <= mib <= MAX_MEMORY_MIB:
        raise ValidationError(f"domain memory must be from 1 MiB to {MAX_MEMORY_MIB} MiB (16 TiB); got {mib} MiB",
                              "xml")
    return mib


@dataclass(frozen=True)
class Domain:
    name: str
    running: bool
    memory_mib: int
    vcpus: int


class Hypervisor:
    """One libvirt connection with the operations the node daemon needs.

    Thread-safe: libvirt connections are; the lock only guards reconnection.
    """

    def __init__(self, uri: str):
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()

    # -- connection ----------------------------------------------------------------

    def open(self) -> "Hypervisor":
        try:
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot connect to libvirt at {self.uri}: {exc}") from exc
        return self

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except libvirt.libvirtError:
                pass
            self._conn = None

    @property
    def conn(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is None or not self._conn.isAlive():
                self.open()
            return self._conn

    def can_live_migrate(self) -> bool:
        caps = ET.fromstring(self.conn.getCapabilities())
        return caps.find("host/migration_features/live") is not None

    # -- figures ----------------------------------------------------------------------

    def domains(self) -> dict[str, Domain]:
        out = {}
        for dom in self.conn.listAllDomains():
            try:
                state, max_kib, _cur, vcpus, _t = dom.info()
                out[dom.name()] = Domain(dom.name(), state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED,
                                                               libvirt.VIR_DOMAIN_BLOCKED), max_kib // 1024, vcpus)
            except libvirt.libvirtError:  # undefined between list and info
                continue
        return out

    def figures(self, domains: dict[str, Domain] | None = None) -> dict:
        """Memory, CPU and load figures of this node, as published by keepalive."""
        domains = self.domains() if domains is None else domains
        _model, total_mib, cpus, *_ = self.conn.getInfo()
        running = [d for d in domains.values() if d.running]
        used_by_vms = sum(d.memory_mib for d in running)
        try:
            host_free = self.conn.getFreeMemory() // (1024 * 1024)
        except libvirt.libvirtError:
            host_free = 0
        # The test driver reports no free memory: count what its running VMs take.
        free = max(0, min(host_free, total_mib - used_by_vms) if host_free else total_mib - used_by_vms)
        return {
            "memory_total_mib": total_mib,
            "memory_free_mib": free,
            "memory_used_mib": total_mib - free,
            "cpu_count": cpus,
            "load_1m": os.getloadavg()[0],
            "vcpus_allocated": sum(d.vcpus for d in running),
            "running_vms": tuple(sorted(d.name for d in running)),
        }

    # -- lifecycle -----------------------------------------------------------------------

    def _dom(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise HypervisorError(str(exc)) from exc

    def is_running(self, name: str) -> bool:
        dom = self._dom(name)
        return bool(dom and dom.isActive())

    def define(self, xml: str) -> None:
        try:
            self.conn.defineXML(xml)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"define failed: {exc}") from exc

    def start(self, name: str, xml: str) -> None:
        """Define (or redefine) from ``xml`` and start; already running is fine."""
        dom = self._dom(name)
        if dom is not None and dom.isActive():
            return
        self.define(xml)
        try:
            self.conn.lookupByName(name).create()
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"start failed: {exc}") from exc

    def destroy(self, name: str) -> None:
        dom = self._dom(name)
        if dom is None or not dom.isActive():
            return
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if dom.isActive():
                raise HypervisorError(f"stop failed: {exc}") from exc

    def shutdown(self, name: str, timeout: float, stopping: threading.Event | None = None) -> bool:
        """Ask the guest to shut down; destroy it after ``timeout``. True if it went gracefully."""
        dom = self._dom(name)
        if dom is None or not dom.isActive():
            return True
        try:
            dom.shutdown()
        except libvirt.libvirtError as exc:
            log.warning("graceful shutdown of %s refused (%s); stopping it", name, exc)
        deadline = time.monotonic() + timeout
        waiter = stopping or threading.Event()
        delay = 0.05
        while dom.isActive():
            if time.monotonic() >= deadline:
                self.destroy(name)
                return False
            # Guests give no event we can wait on through every driver: poll with a deadline.
            waiter.wait(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)
        return True

    def undefine(self, name: str) -> None:
        dom = self._dom(name)
        if dom is None:
            return
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"undefine failed: {exc}") from exc

    def migrate_live(self, name: str, dest_uri: str, timeout: float) -> None:
        """Peer-to-peer live migration to ``dest_uri``; the domain ends persistent there and gone here."""
        dom = self._dom(name)
        if dom is None or not dom.isActive():
            raise HypervisorError(f"{name} is not running here")
        flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
                 | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
        # libvirt has no overall migration timeout: abort the job from a timer.
        watchdog = threading.Timer(timeout, self._abort_job, args=(dom,))
        watchdog.daemon = True
        watchdog.start()
        try:
            dom.migrateToURI3(dest_uri, {}, flags)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"live migration failed: {exc}") from exc
        finally:
            watchdog.cancel()

    @staticmethod
    def _abort_job(dom: libvirt.virDomain) -> None:
        try:
            dom.abortJob()
        except libvirt.libvirtError:
            pass

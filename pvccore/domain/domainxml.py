"""Reading libvirt domain XML as libvirt reads it: what pvc needs of a VM (name, UUID, memory, vCPUs).

Pure: no libvirt import, so the API can check a definition without a hypervisor.
"""

from __future__ import annotations

import re
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from pvccore.domain.fields import check_name
from pvccore.errors import ValidationError

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


def with_name(xml: str, name: str) -> str:
    """The domain XML with another ``<name>``."""
    root = ET.fromstring(xml)
    root.find("name").text = name
    return ET.tostring(root, encoding="unicode")


def with_uuid(xml: str, uuid: str) -> str:
    root = ET.fromstring(xml)
    el = root.find("uuid")
    if el is None:
        el = ET.SubElement(root, "uuid")
    el.text = uuid
    return ET.tostring(root, encoding="unicode")



def devices(xml: str) -> dict:
    """The guest's disks and network interfaces as its XML declares them (``pvc vm info``); empty lists for XML
    that cannot be read."""
    try:
        root = _parse(xml)
    except ValidationError:
        return {"disks": [], "networks": []}

    def attr(el: ET.Element | None, *names: str) -> str:
        if el is None:
            return ""
        return next((el.get(n) for n in names if el.get(n)), "")

    disks = []
    for disk in root.findall("./devices/disk"):
        source, target, driver = disk.find("source"), disk.find("target"), disk.find("driver")
        where = attr(source, "file", "dev", "dir", "volume")
        if source is not None and source.get("protocol"):  # a network disk: protocol://host:port/name
            host = source.find("host")
            server = attr(host, "name", "socket") + (f":{host.get('port')}" if host is not None and host.get("port")
                                                     else "")
            where = f"{source.get('protocol')}://{server}/{source.get('name') or ''}".rstrip("/")
        disks.append({"device": disk.get("device") or "disk", "type": disk.get("type") or "", "target":
                      attr(target, "dev"), "bus": attr(target, "bus"), "format": attr(driver, "type"),
                      "source": where})
    networks = []
    for nic in root.findall("./devices/interface"):
        networks.append({"type": nic.get("type") or "", "source": attr(nic.find("source"), "bridge", "network", "dev"),
                         "mac": attr(nic.find("mac"), "address"), "model": attr(nic.find("model"), "type")})
    return {"disks": disks, "networks": networks}


def console_path(xml: str) -> str:
    """Where libvirt writes the guest's serial console on its node: the first ``<serial>`` or ``<console>`` of type
    ``file`` (its source path), or one with a ``<log file=...>``; empty when there is none."""
    try:
        root = _parse(xml)
    except ValidationError:
        return ""
    for dev in [*root.findall("./devices/serial"), *root.findall("./devices/console")]:
        logged = dev.find("log")
        if logged is not None and logged.get("file"):
            return logged.get("file")
        source = dev.find("source")
        if dev.get("type") == "file" and source is not None and source.get("path"):
            return source.get("path")
    return ""

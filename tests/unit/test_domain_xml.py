"""Domain XML is read strictly: what libvirt would refuse later is refused when it is given.

libvirt's test driver runs in this process (no service): what pvc accepts is checked against
what libvirt reads from the same XML, so the two cannot drift apart.
"""

from __future__ import annotations

import libvirt
import pytest

from pvccore.errors import ValidationError
from pvccore.domain.domainxml import parse_domain_xml


def dom(name="<name>web1</name>", memory="<memory unit='MiB'>512</memory>", vcpu="<vcpu>2</vcpu>", extra=""):
    return f"<domain type='kvm'>{name}{memory}{vcpu}{extra}</domain>"


def test_a_plain_domain_is_read():
    spec = parse_domain_xml(dom())
    assert (spec.name, spec.memory_mib, spec.vcpus) == ("web1", 512, 2) and "<uuid>" in spec.xml


@pytest.mark.parametrize("memory, mib", [
    ("<memory>1048576</memory>", 1024), ("<memory unit='b'>1073741824</memory>", 1024),
    ("<memory unit='GB'>2</memory>", 1907), ("<memory unit='T'>1</memory>", 1024 * 1024),
    ("<memory unit='mib'>2048</memory>", 2048), ("<memory unit=''>2097152</memory>", 2048),
])
def test_memory_units_in_integer_arithmetic(memory, mib):
    assert parse_domain_xml(dom(memory=memory)).memory_mib == mib


@pytest.mark.parametrize("xml, message", [
    (dom(memory="<memory>²</memory>"), "<memory> must be a whole number (ASCII digits"),
    (dom(memory="<memory>\u0663\u0662</memory>"), "<memory> must be a whole number (ASCII digits"),  # Arabic-Indic
    (dom(memory="<memory unit='MiB'>512 </memory>"), "no spaces"),  # libvirt: "Invalid value '512 '"
    (dom(memory="<memory unit='MiB'>\u00a0512</memory>"), "no spaces"),
    (dom(memory="<memory unit='MiB'>+512</memory>"), "<memory> must be a whole number"),
    (dom(memory="<memory unit='b'>" + "9" * 400 + "</memory>"), "<memory> must be a whole number"),
    (dom(memory="<memory unit='b'>1000</memory>"), "from 1 MiB to"),
    (dom(memory="<memory unit='TiB'>17</memory>"), "from 1 MiB to 16777216 MiB"),
    (dom(memory="<memory unit='parsec'>1</memory>"), "unknown memory unit"),
    (dom(memory=""), "domain XML has no <memory>"),
    (dom(memory="<memory>1</memory><memory>2</memory>"), "2 <memory> elements"),
    (dom(vcpu="<vcpu>²</vcpu>"), "<vcpu> must be a whole number from 1 to 1024"),
    (dom(vcpu="<vcpu>1000000</vcpu>"), "<vcpu> must be a whole number from 1 to 1024"),
    (dom(vcpu="<vcpu>0</vcpu>"), "<vcpu> must be a whole number from 1 to 1024"),
    (dom(vcpu="<vcpu> 2</vcpu>"), "<vcpu> must be a whole number from 1 to 1024 (ASCII digits, no spaces)"),
    (dom(vcpu="<vcpu current='4'>2</vcpu>"), "<vcpu current=...> must be a whole number from 1 to 2"),
    (dom(vcpu="<vcpu>1</vcpu><vcpu>2</vcpu>"), "2 <vcpu> elements"),
    (dom(name="<name> ws1 </name>"), "has spaces around it"),
    (dom(name="<name>ws1</name><name>ws2</name>"), "2 <name> elements"),
    (dom(name="<name>a/b</name>"), "invalid VM name"),
    (dom(name=""), "domain XML has no <name>"),
    (dom(extra="<uuid>not-a-uuid</uuid>"), "bad <uuid>"),
    (dom(extra="<uuid>urn:uuid:6f1c1a0e-51a3-4b8e-9d0c-3b2f4f0d8a11</uuid>"), "bad <uuid>"),  # Python takes it
    (dom(extra="<uuid>{6f1c1a0e-51a3-4b8e-9d0c-3b2f4f0d8a11}</uuid>"), "bad <uuid>"),  # Python takes it
    ("<!DOCTYPE domain [<!ENTITY n 'web1'>]>" + dom(name="<name>&n;</name>"), "must not have a DOCTYPE"),
    ("<!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>]>"  # expansion
     + dom(name="<name>&b;</name>"), "must not have a DOCTYPE"),
    (dom(extra="<uuid>6f1c1a0e-51a3-4b8e-9d0c-3b2f4f0d8a11</uuid><uuid>x</uuid>"), "2 <uuid> elements"),
    ("<network><name>x</name></network>", "expected a <domain> document"),
    ("<domain", "not valid XML"),
])
def test_bad_domain_xml_is_refused_naming_the_problem(xml, message):
    with pytest.raises(ValidationError) as exc:
        parse_domain_xml(xml)
    assert message in exc.value.message and exc.value.field == "xml"


def test_a_given_uuid_is_kept_as_written_and_read_in_canonical_form():
    xml = dom(extra="<uuid> 6F1C1A0E51A34B8E9D0C3B2F4F0D8A11 </uuid>")
    spec = parse_domain_xml(xml)
    assert (spec.uuid, spec.xml, spec.generated_uuid) == ("6f1c1a0e-51a3-4b8e-9d0c-3b2f4f0d8a11", xml, False)
    assert parse_domain_xml(dom()).generated_uuid and parse_domain_xml(dom(extra="<uuid/>")).generated_uuid


# Each field is read as libvirt reads it: the text of the element and of its children.
ODD_BUT_VALID = [
    dom(name="<name>web<b/>1</name>"),
    dom(name="<name>web<!-- a comment -->1</name>"),
    dom(name="<name><![CDATA[web1]]></name>"),
    dom(memory="<memory unit='MiB'>5<!-- -->12</memory>"),
    dom(memory="<memory unit='b'>536870912</memory>"),
    dom(memory="<memory unit='GiB'>1</memory>", vcpu="<vcpu current='1'>2</vcpu>"),
    dom(vcpu=""),
    dom(extra="<uuid>6f1c1a0e51a34b8e9d0c3b2f4f0d8a11</uuid>"),
    dom(extra="<uuid>\n  6f1c1a0e-51a3-4b8e-9d0c-3b2f4f0d8a11\n</uuid>"),
]

# What an earlier, laxer reading accepted and libvirt refuses when the daemon defines it.
LIBVIRT_REFUSES = [
    dom(memory="<memory unit='MiB'>512 </memory>"),
    dom(memory="<memory unit='MiB'>\n512\n</memory>"),
    dom(vcpu="<vcpu> 2 </vcpu>"),
    dom(vcpu="<vcpu current='4'>2</vcpu>"),
    dom(extra="<uuid>urn:uuid:6f1c1a0e-51a3-4b8e-9d0c-3b2f4f0d8a11</uuid>"),
    dom(extra="<uuid>{6f1c1a0e-51a3-4b8e-9d0c-3b2f4f0d8a11}</uuid>"),
]


@pytest.fixture(scope="module")
def libvirt_test():
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


def _for_libvirt(xml: str) -> str:
    """The test driver needs an <os> and a type it knows."""
    return xml.replace("type='kvm'", "type='test'").replace("</domain>", "<os><type>hvm</type></os></domain>")


@pytest.mark.parametrize("xml", ODD_BUT_VALID)
def test_what_pvc_reads_is_what_libvirt_reads(libvirt_test, xml):
    spec = parse_domain_xml(xml)
    domain = libvirt_test.defineXML(_for_libvirt(spec.xml))
    try:
        max_kib = domain.info()[1]
        assert (domain.name(), domain.UUIDString(), max_kib // 1024, domain.vcpusFlags(
            libvirt.VIR_DOMAIN_VCPU_MAXIMUM | libvirt.VIR_DOMAIN_AFFECT_CONFIG)) == \
            (spec.name, spec.uuid, spec.memory_mib, spec.vcpus)
    finally:
        domain.undefine()


@pytest.mark.parametrize("xml", LIBVIRT_REFUSES)
def test_what_libvirt_refuses_is_refused_when_given(libvirt_test, xml):
    with pytest.raises(libvirt.libvirtError):
        libvirt_test.defineXML(_for_libvirt(xml)).undefine()
    with pytest.raises(ValidationError) as exc:
        parse_domain_xml(xml)
    assert exc.value.field == "xml"

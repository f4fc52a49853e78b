"""Domain XML is read strictly: what libvirt would refuse later is refused when it is given."""

from __future__ import annotations

import pytest

from pvccore.errors import ValidationError
from pvccore.hypervisor import parse_domain_xml


def dom(name="<name>web1</name>", memory="<memory unit='MiB'>512</memory>", vcpu="<vcpu>2</vcpu>", extra=""):
    return f"<domain type='kvm'>{name}{memory}{vcpu}{extra}</domain>"


def test_a_plain_domain_is_read():
    spec = parse_domain_xml(dom())
    assert (spec.name, spec.memory_mib, spec.vcpus) == ("web1", 512, 2) and "<uuid>" in spec.xml


@pytest.mark.parametrize("memory, mib", [
    ("<memory>1048576</memory>", 1024), ("<memory unit='b'>1073741824</memory>", 1024),
    ("<memory unit='GB'>2</memory>", 1907), ("<memory unit='T'>1</memory>", 1024 * 1024),
    ("<memory unit='KiB'> 2097152 </memory>", 2048),
])
def test_memory_units_in_integer_arithmetic(memory, mib):
    assert parse_domain_xml(dom(memory=memory)).memory_mib == mib


@pytest.mark.parametrize("xml, message", [
    (dom(memory="<memory>²</memory>"), "<memory> must be a whole number (ASCII digits"),
    (dom(memory="<memory>\u0663\u0662</memory>"), "<memory> must be a whole number (ASCII digits"),  # Arabic-Indic
    (dom(memory="<memory unit='b'>" + "9" * 400 + "</memory>"), "<memory> must be a whole number"),
    (dom(memory="<memory unit='b'>1000</memory>"), "from 1 MiB to"),
    (dom(memory="<memory unit='TiB'>17</memory>"), "from 1 MiB to 16777216 MiB"),
    (dom(memory="<memory unit='parsec'>1</memory>"), "unknown memory unit"),
    (dom(memory=""), "domain XML has no <memory>"),
    (dom(memory="<memory>1</memory><memory>2</memory>"), "2 <memory> elements"),
    (dom(vcpu="<vcpu>²</vcpu>"), "<vcpu> must be a whole number from 1 to 1024"),
    (dom(vcpu="<vcpu>1000000</vcpu>"), "<vcpu> must be a whole number from 1 to 1024"),
    (dom(vcpu="<vcpu>0</vcpu>"), "<vcpu> must be a whole number from 1 to 1024"),
    (dom(name="<name> ws1 </name>"), "has spaces around it"),
    (dom(name="<name>ws1</name><name>ws2</name>"), "2 <name> elements"),
    (dom(name="<name>a/b</name>"), "invalid VM name"),
    (dom(name=""), "domain XML has no <name>"),
    (dom(extra="<uuid>not-a-uuid</uuid>"), "bad <uuid>"),
    (dom(extra="<uuid>6f1c1a0e-51a3-4b8e-9d0c-3b2f4f0d8a11</uuid><uuid>x</uuid>"), "2 <uuid> elements"),
    ("<network><name>x</name></network>", "expected a <domain> document"),
    ("<domain", "not valid XML"),
])
def test_bad_domain_xml_is_refused_naming_the_problem(xml, message):
    with pytest.raises(ValidationError) as exc:
        parse_domain_xml(xml)
    assert message in exc.value.message and exc.value.field == "xml"

"""VM tags: their form, protected tags kept, a selector that reads them; the disks and networks of a domain XML."""

import pytest

from pvccore.domain.domainxml import devices
from pvccore.domain.models import VM, Cluster, VMMeta
from pvccore.domain.placement import place
from pvccore.errors import ValidationError
from pvccore.hookspecs import Selector
from pvccore.operations import kept_protected
from tests.conftest import make_node


def test_tags_are_names_kept_sorted_and_once():
    meta = VMMeta().updated({"tags": ["web", "prod", "web"], "protected_tags": ["keep"]})
    assert (meta.tags, meta.protected_tags) == (("prod", "web"), ("keep",))
    for bad in (["has space"], ["x" * 65], [""], "web", [1], [["nested"]]):
        with pytest.raises(ValidationError) as err:
            VMMeta().updated({"tags": bad})
        assert err.value.field == "tags"


def test_a_change_that_drops_a_protected_tag_is_refused_and_a_tag_is_in_one_list():
    old = VMMeta().updated({"protected_tags": ["prod"]})
    with pytest.raises(ValidationError, match="tag 'prod' is protected"):
        kept_protected(old, old.updated({"protected_tags": []}))
    new = kept_protected(old, old.updated({"tags": ["prod", "web"]}))
    assert (new.tags, new.protected_tags) == (("web",), ("prod",))


def test_a_selector_can_place_by_tags(plugins):
    """A third party's selector: VMs tagged ssd only on nodes whose name says so."""
    ssd = Selector("ssd", "ssd-tagged VMs on ssd nodes",
                   lambda vm, node, cluster: (None if "ssd" in vm.meta.tags and "ssd" not in node.name
                                              else float(node.memory_free_mib)))
    nodes = [make_node("hv1", memory_free_mib=9000), make_node("hv2-ssd", memory_free_mib=4000)]
    tagged = VM("db", "u", 1024, 1, meta=VMMeta(node_selector="ssd", tags=("ssd",)))
    plain = VM("web", "v", 1024, 1, meta=VMMeta(node_selector="ssd"))
    selectors = {**plugins.selectors, "ssd": ssd}
    assert place(tagged, Cluster.build(nodes), selectors).target == "hv2-ssd"
    assert place(plain, Cluster.build(nodes), selectors).target == "hv1"


def test_devices_lists_the_disks_and_networks_the_xml_declares():
    xml = """<domain type='kvm'><name>g</name><memory unit='MiB'>512</memory><devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/var/lib/g.qcow2'/>
        <target dev='vda' bus='virtio'/></disk>
      <disk type='network' device='disk'><driver name='qemu' type='raw'/>
        <source protocol='nbd' name='g1'><host name='198.18.0.10' port='10809'/></source><target dev='vdb'/></disk>
      <disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk>
      <interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/><model type='virtio'/></interface>
      <interface type='network'><source network='default'/></interface>
    </devices></domain>"""
    found = devices(xml)
    assert [(d["target"], d["source"], d["format"], d["bus"], d["device"]) for d in found["disks"]] == [
        ("vda", "/var/lib/g.qcow2", "qcow2", "virtio", "disk"), ("vdb", "nbd://198.18.0.10:10809/g1", "raw", "", "disk"),
        ("sda", "", "", "sata", "cdrom")]
    assert found["networks"] == [{"type": "bridge", "source": "br0", "mac": "52:54:00:00:00:01", "model": "virtio"},
                                 {"type": "network", "source": "default", "mac": "", "model": ""}]
    assert devices("<not xml") == {"disks": [], "networks": []}

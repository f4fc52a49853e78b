"""Cluster in a box, planned operations: real QEMU VMs driven through the CLI and the API on the
primary's floating IP, live migration between real libvirtds. Each step ends with the invariants
checked from every node's libvirt."""

from __future__ import annotations

import time

import libvirt

from .harness import DuplicateWatch, tiny_domain_xml

T = 60


def vm_json(box, name):
    return box.cli_json("vm", "info", name)


def runs_on(box, name) -> list[str]:
    return sorted(n for n, names in box.running().items() if name in names)


def test_lifecycle_migration_limits_and_autostart(make_box, tmp_path):
    box = make_box()
    xml = tmp_path / "web1.xml"
    xml.write_text(tiny_domain_xml("web1"))
    box.cli("vm", "define", str(xml), "--target", "hv1", "--limit", "hv1,hv2", "--node-selector", "vms")
    assert not box.check("define and start")
    assert runs_on(box, "web1") == ["hv1"]
    info = vm_json(box, "web1")
    assert info["meta"]["node_limit"] == ["hv1", "hv2"] and info["meta"]["node_selector"] == "vms"

    # Live migration to the only other node of its limit, and back.
    box.cli("vm", "migrate", "web1", "--wait")
    assert not box.check("migrate")
    assert runs_on(box, "web1") == ["hv2"]
    assert box.events.wait(1, "migration", vm="web1", target="hv2", ok=True)[0]["method"] == "live"
    assert vm_json(box, "web1")["last_node"] == "hv1"
    box.cli("vm", "unmigrate", "web1", "--wait")
    assert not box.check("unmigrate")
    assert runs_on(box, "web1") == ["hv1"]

    # A target outside the limit is refused and changes nothing; a permanent move after widening it.
    refused = box.cli("vm", "move", "web1", "--target", "hv3", check=False)
    assert refused.returncode != 0 and "limit" in refused.stderr
    assert runs_on(box, "web1") == ["hv1"]
    box.cli("vm", "meta", "web1", "--limit", "")
    box.cli("vm", "move", "web1", "--target", "hv3", "--wait")
    assert not box.check("move")
    assert runs_on(box, "web1") == ["hv3"] and not vm_json(box, "web1")["last_node"]

    # A VM whose method is `shutdown` is never migrated live.
    (tmp_path / "db1.xml").write_text(tiny_domain_xml("db1"))
    box.cli("vm", "define", str(tmp_path / "db1.xml"), "--target", "hv2", "--method", "shutdown")
    assert not box.check("define db1")
    box.cli("vm", "migrate", "db1", "--target", "hv1", "--wait")
    assert not box.check("migrate by shutdown")
    assert runs_on(box, "db1") == ["hv1"]
    assert box.events.wait(1, "migration", vm="db1", ok=True)[0]["method"] == "shutdown"

    # Autostart: a VM allowed only on hv3 has nowhere to go when hv3 is flushed; it is stopped,
    # marked autostart, and starts again when hv3 is ready. web1 leaves and comes back.
    (tmp_path / "pin1.xml").write_text(tiny_domain_xml("pin1"))
    box.cli("vm", "define", str(tmp_path / "pin1.xml"), "--target", "hv3", "--limit", "hv3")
    assert not box.check("define pin1")
    box.cli("node", "flush", "hv3", "--wait")
    assert not box.check("flush hv3")
    assert box.running()["hv3"] == set()
    pin = vm_json(box, "pin1")
    assert pin["state"] == "stop" and pin["meta"]["node_autostart"] is True
    assert runs_on(box, "web1") in (["hv1"], ["hv2"])
    box.cli("node", "ready", "hv3", "--wait")
    assert not box.check("ready hv3")
    assert box.running()["hv3"] == {"web1", "pin1"}
    assert vm_json(box, "pin1")["meta"]["node_autostart"] is False


def test_flush_and_ready_with_each_selector(make_box):
    """Per selector: VMs on hv1 with limits go where their limits allow; with a free choice the
    deterministic selectors (fewest VMs, fewest vCPUs) pick the emptier node. Then all come back."""
    box = make_box()
    selectors = [s["name"] for s in box.cli_json("selector", "list")]
    assert {"mem", "load", "vcpus", "vms", "memprov"} <= set(selectors)
    for other in ("ballast1", "ballast2"):  # hv2 carries two VMs, hv3 none
        box.ops.define_vm(tiny_domain_xml(other), {"node_limit": ["hv2"]}, target="hv2")
    for sel in ("mem", "load", "vcpus", "vms", "memprov"):
        box.ops.define_vm(tiny_domain_xml(f"lim-{sel}"), {"node_limit": ["hv1", "hv2"], "node_selector": sel},
                          target="hv1")
        box.ops.define_vm(tiny_domain_xml(f"any-{sel}"), {"node_selector": sel}, target="hv1")
        assert not box.check(f"define {sel}")
        box.cli("node", "flush", "hv1", "--wait")
        assert not box.check(f"flush {sel}")
        assert box.running()["hv1"] == set()
        assert runs_on(box, f"lim-{sel}") == ["hv2"]
        if sel in ("vms", "vcpus"):
            assert runs_on(box, f"any-{sel}") == ["hv3"]
        else:
            assert runs_on(box, f"any-{sel}") in (["hv2"], ["hv3"])
        box.cli("node", "ready", "hv1", "--wait")
        assert not box.check(f"ready {sel}")
        assert box.running()["hv1"] == {f"lim-{sel}", f"any-{sel}"}
        for name in (f"lim-{sel}", f"any-{sel}"):
            box.ops.undefine(name, force=True)
        assert not box.check(f"undefine {sel}")


def test_the_checks_catch_a_second_copy(make_box):
    """The duplicate watcher and the invariants are not blind: one domain started on two nodes
    behind pvc's back (pvc leaves domains it does not know alone) is reported by both."""
    box = make_box()
    xml = tiny_domain_xml("rogue")
    with DuplicateWatch(box) as watch:
        for node in ("hv1", "hv2"):
            conn = libvirt.open(box.nodes[node].uri)
            try:
                conn.createXML(xml, 0)
            finally:
                conn.close()
        deadline = time.monotonic() + T
        while not watch.seen and time.monotonic() < deadline:
            time.sleep(0.1)  # the watcher polls every 0.1 s: wait for its verdict, under a deadline
    assert watch.seen and "VM rogue ran on" in watch.seen[0]
    found = box.violations()
    assert "VM rogue runs on 2 nodes: hv1, hv2" in found and any("pvc does not know it" in v for v in found)

"""Cluster in a box with real guests (tests/cluster/guests.py): booted Linux guests with their disks on
shared storage (NBD, disk-locked) and addresses on the nodes' network, through live migration, flush and
ready, power loss, a link cut and a ZooKeeper election; every guest's disk journal must show one writer
at a time and no lost record. ``make soak`` runs these with the other fault scenarios."""

from __future__ import annotations

import subprocess
import time

import pytest

from .conftest import record_journals
from .guests import GuestLab

T = 120


def grown(guest, past: int, timeout: float = 30.0) -> bool:
    """Whether the guest's journal grows past ``past`` records within ``timeout`` (polled)."""
    deadline = time.monotonic() + timeout
    while len(guest.journal()) <= past:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)  # the guest writes every 100 ms; the disk has no watch to wait on
    return True


def test_a_real_guest_boots_and_migrates_live_while_pinged_and_keeps_its_journal(make_box, round_):
    box = make_box()
    lab = GuestLab(box).up()
    guest = lab.define("g1", "hv1")
    boot = lab.answers(guest, T)
    assert boot is not None, f"g1 never answered ping; console:\n{lab.console(guest)}"
    assert grown(guest, 5), f"g1 writes no journal; console:\n{lab.console(guest)}"
    # pvc vm log: the guest's serial console as its node's daemon published it, through the CLI and the API.
    deadline = time.monotonic() + T
    while not (shown := box.cli("vm", "log", "g1", "--lines", "20").stdout.strip()):
        assert time.monotonic() < deadline, f"no console published; console:\n{lab.console(guest)}"
        time.sleep(0.5)  # published every 2 s: polled under the deadline above
    assert shown.splitlines()[-1].strip() in guest.console.read_text(errors="replace")

    # The disk lock: a second copy of g1 started behind pvc's back on another node is refused.
    refused = lab.second_copy(guest, "hv2")
    assert refused is not None and "is locked" in refused, refused
    print(f"a second copy of g1 on hv2: {refused}")

    box.cli("vm", "meta", "g1", "--max-downtime", "250")
    assert box.cli_json("vm", "info", "g1")["meta"]["migration_max_downtime"] == 250
    heading, row = (line.split() for line in box.cli("vm", "list").stdout.splitlines()[:2])
    assert row[heading.index("DOWNTIME")] == "250"

    pinger = box.pinger(guest.address, 0.01)
    box.ops.migrate("g1", "hv2")
    assert box.ops.wait_settled("g1", T)
    sent, received = pinger.stop()
    vm = box.view.vm("g1")
    assert (vm.node, vm.state) == ("hv2", "start"), vm.reason
    assert box.events.wait(1, "migration", vm="g1", target="hv2", ok=True)[0]["method"] == "live"
    assert not box.check("guest migrated")
    print(f"guest g1 ({lab.domain_type}): answered after {boot:.1f}s; {sent - received} of {sent} pings lost "
          "across the live migration")
    assert received > 0 and lab.answers(guest, 10) is not None  # it answers from hv2

    # The journal goes on after the migration with the same boot: nothing lost, one writer.
    at_migration = len(guest.journal())
    assert grown(guest, at_migration + 5), f"g1 stopped writing after the migration:\n{lab.console(guest)}"
    records = guest.journal()
    assert not record_journals("g1 migrated live", [guest])
    assert records and len(guest.boots()) == 1
    # The lease went with the migration: now the node it left refuses a second copy.
    refused = lab.second_copy(guest, "hv1")
    assert refused is not None and "is locked" in refused, refused
    assert guest.journal_problems() == [] and len(guest.boots()) == 1


def test_a_guest_dirtying_memory_faster_than_the_link_still_migrates(make_box):
    """64 MiB rewritten continuously: auto-converge slows the guest until the rest fits in its downtime.

    Under TCG (this machine: KVM is PVM, which cannot run Debian's kernel) QEMU 7.2 brought such a guest
    up corrupted on the target in about half the runs, whatever the downtime and with or without
    auto-converge (kernel panics in timer and page-fault code; the journal-only guest of the test above
    never did): a fault of the emulator, not of pvc, so this scenario runs where guests run under KVM."""
    box = make_box()
    lab = GuestLab(box).up()
    if lab.domain_type != "kvm":
        pytest.skip("needs KVM guests: QEMU 7.2's TCG corrupts a memory-rewriting guest it live-migrates")
    guest = lab.define("busy", "hv1", memory_mib=256, dirty_mib=64)
    assert lab.answers(guest, T) is not None, lab.console(guest)
    started = time.monotonic()
    box.cli("vm", "migrate", "busy", "--target", "hv2", "--wait", timeout=T + 30)
    took = time.monotonic() - started
    vm = box.view.vm("busy")
    assert (vm.node, vm.state) == ("hv2", "start"), vm.reason
    assert box.events.wait(1, "migration", vm="busy", target="hv2", ok=True)[0]["method"] == "live"
    assert not box.check("dirtying guest migrated")
    print(f"guest busy ({lab.domain_type}, dirtying 64 MiB): live migration took {took:.1f}s")
    at_migration = len(guest.journal())
    assert grown(guest, at_migration + 3) and guest.journal_problems() == []


def test_a_real_guest_on_a_node_that_loses_power_boots_elsewhere_and_its_journal_shows_one_writer(make_box, round_):
    """Power loss: the node is fenced over IPMI, the guest boots on another node from the same disk, and its
    journal shows the old boot's records, then the new boot's, never both at once."""
    from .harness import DuplicateWatch
    from .test_faults import state

    box = make_box()
    lab = GuestLab(box).up()
    guest = lab.define("g3", "hv3")
    assert lab.answers(guest, T) is not None, lab.console(guest)
    assert grown(guest, 10)
    with DuplicateWatch(box) as watch:
        t0 = time.monotonic()
        box.bmc("hv3", "chassis", "power", "off")
        assert state(box, "hv3", "fenced", T), box.logs()
        back = lab.answers(guest, T)
        took = time.monotonic() - t0
        assert back is not None, f"g3 did not come back; console:\n{lab.console(guest)}"
        assert not box.check("guest recovered")
    assert not watch.seen, watch.seen
    vm = box.view.vm("g3")
    assert vm.node in ("hv1", "hv2") and vm.state == "start"
    print(f"guest g3 ({lab.domain_type}): power loss -> answering ping on {vm.node} in {took:.1f}s")
    assert grown(guest, len(guest.journal()) + 5)
    assert not record_journals("g3 after power loss", [guest]) and len(guest.boots()) == 2
    # The power-off freed hv3's disk lock (the recovery could start g3); the new copy holds it now.
    other = ({"hv1", "hv2"} - {vm.node}).pop()
    assert "is locked" in (lab.second_copy(guest, other) or "it started")


def test_a_cut_off_node_fenced_through_its_bmc_leaves_no_late_write_and_its_guest_one_writer(make_box, round_):
    """Link cut with the BMC reachable: the node is fenced, the guest boots elsewhere, and when the link comes
    back nothing the dead QEMU had queued for the disk reaches it. A real power cut takes the host's TCP
    stack with it; the box's BMC resets the connections the node's killed processes leave behind (before
    that, Pacemaker's side-by-side run found the recovered guest's first record overwritten by such a
    write in every cut, bench/peer_pacemaker.py)."""
    from .harness import DuplicateWatch
    from .test_faults import power_on_and_ready, state

    box = make_box()
    lab = GuestLab(box).up()
    guest = lab.define("k3", "hv3")
    assert lab.answers(guest, T) is not None, lab.console(guest)
    assert grown(guest, 10)
    hv3 = box.nodes["hv3"]
    with DuplicateWatch(box) as watch:
        hv3.link(False)
        assert state(box, "hv3", "fenced", T), box.logs()
        assert not hv3.powered()
        left = subprocess.run(["ip", "netns", "exec", hv3.ns, "ss", "-tnH", "dst", lab.storage_address],
                              capture_output=True, text=True, check=True).stdout
        assert not left.strip(), f"the fenced node still holds connections to the storage:\n{left}"
        assert lab.answers(guest, T) is not None, lab.console(guest)
        assert not box.check("guest recovered after the fence")
        hv3.link(True)
        power_on_and_ready(box, "hv3")
        assert not box.check("hv3 rejoined")
    assert not watch.seen, watch.seen
    assert grown(guest, len(guest.journal()) + 5)
    assert not record_journals("k3 after link cut", [guest]) and len(guest.boots()) == 2


def test_flush_and_ready_move_running_guests_away_and_back_without_a_reboot(make_box, round_):
    box = make_box()
    lab = GuestLab(box).up()
    guests = [lab.define(f"f{i}", "hv1") for i in range(3)]
    assert all(lab.answers(g, T) is not None for g in guests), [lab.console(g) for g in guests]
    box.cli("node", "flush", "hv1", "--wait", timeout=T + 30)
    assert not box.check("flushed")
    assert all(box.view.vm(g.name).node != "hv1" for g in guests)
    assert all(lab.answers(g, 10) is not None for g in guests)
    box.cli("node", "ready", "hv1", "--wait", timeout=T + 30)
    assert not box.check("ready")
    assert all(box.view.vm(g.name).node == "hv1" for g in guests)
    for g in guests:
        at = len(g.journal())
        assert grown(g, at + 3), lab.console(g)
        assert len(g.boots()) == 1  # never rebooted
    assert not record_journals("flush and ready", guests)


def test_a_cut_off_node_with_a_shared_bmc_stops_its_guest_which_boots_elsewhere_with_one_writer(make_box, round_):
    """The link cut takes the node's storage path and guest uplink too; the node self-fences (its guest
    is destroyed, then the host is reset), the cluster recovers the guest past the deadline, and the
    disk never has two writers.

    The reset matters: without it the destroyed QEMU's last write to the disk sat in the cut-off host's
    TCP queue and reached the storage when the link came back, over the record the recovered guest
    had written meanwhile (seen once in this test: the new boot's first record gone). The box resets
    a host the way a reboot would for what counts here: the node's connections to the storage
    dropped, every process of the node killed; the node then boots again."""
    from .harness import DuplicateWatch
    from .test_faults import state

    storage = "198.18.0.5"  # the management host of a 3-node box, which serves the guests' disks
    box = make_box(bmc="shared", settings={"failed_fence": "recover"},
                   daemon_flags=("--self-fence-command", f"ss -K dst {storage}; kill -9 -1"))
    lab = GuestLab(box).up()
    assert lab.storage_address == storage
    guest = lab.define("c3", "hv3", meta={"node_limit": ["hv2", "hv3"]})
    assert lab.answers(guest, T) is not None, lab.console(guest)
    assert grown(guest, 10)
    hv3 = box.nodes["hv3"]
    with DuplicateWatch(box) as watch:
        t0 = time.monotonic()
        hv3.link(False)
        assert state(box, "hv3", "fenced", T), box.logs()
        back = lab.answers(guest, T)
        took = time.monotonic() - t0
        assert back is not None, f"c3 did not come back; console:\n{lab.console(guest)}"
        assert box.view.vm("c3").node == "hv2" and not hv3.powered(), box.logs()  # stopped, then reset
        assert "self-fence: resetting the host" in hv3.daemon_log.read_text()
        assert not box.check("guest recovered after the self-fence")
        hv3.link(True)
        hv3.power_on()  # the reset host boots again
        assert box.view.wait_for(lambda c: c.nodes["hv3"].daemon_state == "run", T), box.logs()
        assert not box.check("hv3 rejoined")
    assert not watch.seen, watch.seen
    print(f"guest c3 ({lab.domain_type}): link cut -> answering ping on hv2 in {took:.1f}s")
    assert grown(guest, len(guest.journal()) + 5)
    assert not record_journals("c3 after link cut", [guest]) and len(guest.boots()) == 2
    # hv3 is back, and cannot open the disk the recovered guest holds.
    assert "is locked" in (lab.second_copy(guest, "hv3") or "it started")


def test_the_zookeeper_leader_killed_under_running_guests_moves_and_reboots_nothing(make_box, round_):
    box = make_box()
    lab = GuestLab(box).up()
    guests = [lab.define(f"z{i}", node) for i, node in enumerate(("hv1", "hv2", "hv3"))]
    assert all(lab.answers(g, T) is not None for g in guests), [lab.console(g) for g in guests]
    before = {g.name: box.view.vm(g.name).node for g in guests}
    leader = next(z for z in box.zk if z.mode() == "leader")
    cfg = box.view.config
    killed_at = time.time()
    leader.kill()
    assert box.view.wait_for(lambda c: all(n.keepalive > killed_at for n in c.nodes.values()), T)
    window = cfg.keepalive_limit + cfg.fence_grace + 2  # long enough for a false verdict to show
    changed = box.view.wait_for(lambda c: any(n.daemon_state != "run" for n in c.nodes.values())
                                or {g.name: c.vms[g.name].node for g in guests} != before, window)
    assert not changed, box.view.snapshot()
    leader.start()
    assert not box.events.all("fenced") and not box.check("after the election")
    for g in guests:
        assert lab.answers(g, 10) is not None
        assert grown(g, len(g.journal()) + 3)
        assert len(g.boots()) == 1  # never rebooted
    assert not record_journals("ZooKeeper leader killed", guests)

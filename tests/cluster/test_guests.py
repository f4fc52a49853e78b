"""Cluster in a box with real guests (tests/cluster/guests.py): a booted Linux guest with its disk on
shared storage (NBD) and an address on the nodes' network, live-migrated while the client pings it;
its disk journal must show one writer and no lost record."""

from __future__ import annotations

import time

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


def test_a_real_guest_boots_and_migrates_live_while_pinged_and_keeps_its_journal(make_box):
    box = make_box()
    lab = GuestLab(box).up()
    guest = lab.define("g1", "hv1")
    boot = lab.answers(guest, T)
    assert boot is not None, f"g1 never answered ping; console:\n{lab.console(guest)}"
    assert grown(guest, 5), f"g1 writes no journal; console:\n{lab.console(guest)}"

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
    assert guest.journal_problems() == []
    assert len({boot_id for boot_id, _ in records}) == 1

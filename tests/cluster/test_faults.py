"""Cluster in a box, faults: power loss through a BMC, a node cut off the network (with a BMC on a
management network, and with a shared-LOM BMC that goes down with the link), the ZooKeeper leader
killed, the whole ensemble down for 20 s, planned handovers under a 25 ms ping, the primary killed.

While each fault plays out, a watcher polls every node's libvirt and records any moment a VM runs
on two nodes; at the end the invariants are checked from every node's libvirt. ``PVC_SOAK=N`` runs
each scenario N times (``make soak``).
"""

from __future__ import annotations

import subprocess
import time

from .harness import DuplicateWatch, tiny_domain_xml

T = 60


def runs_on(box, name) -> list[str]:
    return sorted(n for n, names in box.running().items() if name in names)


def define_on(box, node: str, vms: dict[str, list[str]]) -> None:
    for name, limit in vms.items():
        box.ops.define_vm(tiny_domain_xml(name), {"node_limit": limit}, target=node)
    assert not box.check(f"define on {node}")
    assert box.running()[node] == set(vms)


def state(box, node: str, want: str, timeout: float = T) -> bool:
    return box.view.wait_for(lambda c: c.nodes[node].daemon_state == want, timeout)


def power_on_and_ready(box, node: str) -> None:
    """Boot a node again; its daemon rejoins and readies it; nothing may start twice."""
    box.nodes[node].power_on()
    box.wait_running([node])
    box.wait_primary()  # the node may have been primary: its API moved to the new one
    box.cli("node", "ready", node, "--wait")


def test_power_loss_fenced_over_ipmi_and_recovered(make_box, round_):
    box = make_box()
    define_on(box, "hv3", {"lim": ["hv2", "hv3"], "free": [], "pinned": ["hv3"]})
    plan = box.cli_json("node", "what-if-fail", "hv3")  # asked before the failure, through the CLI and the API
    assert {p["vm"] for p in plan["parked"]} == {"pinned"}
    with DuplicateWatch(box) as watch:
        t0 = time.monotonic()
        box.bmc("hv3", "chassis", "power", "off")  # power loss: daemon, libvirtd and QEMU gone at once
        assert box.bmc("hv3", "chassis", "power", "status").endswith("off")
        assert state(box, "hv3", "fenced"), box.logs()
        assert not box.check("recovery")
        recovered = time.monotonic() - t0
    assert not watch.seen, watch.seen
    fenced = box.events.wait(1, "fenced", node="hv3")
    assert fenced and fenced[0]["off"] is True
    assert runs_on(box, "lim") == ["hv2"] and runs_on(box, "free") in (["hv1"], ["hv2"])
    # The recovery placed every VM exactly where the what-if said, on real hypervisors.
    said = {m["vm"]: m["target"] for m in plan["moves"]}
    recovered_event = box.events.wait(1, "recovered", node="hv3")[0]
    assert recovered_event["moved"] == said and recovered_event["parked"] == ["pinned"]
    assert all(runs_on(box, vm) == [target] for vm, target in said.items())
    pinned = box.store.get_vm("pinned")
    assert pinned.state == "stop" and pinned.meta.node_autostart  # no valid target: parked
    print(f"power loss -> VMs running elsewhere in {recovered:.2f}s")

    power_on_and_ready(box, "hv3")
    assert not box.check("hv3 back")
    assert "pinned" in box.running()["hv3"]


def test_network_cut_with_bmc_reachable_is_fenced_and_rejoins(make_box, round_):
    box = make_box()
    define_on(box, "hv3", {"a": ["hv1", "hv3"], "b": []})
    with DuplicateWatch(box) as watch:
        box.nodes["hv3"].link(False)
        assert state(box, "hv3", "fenced"), box.logs()
        assert not box.nodes["hv3"].powered()  # the fence powered it off through the management network
        assert not box.check("recovery")
        assert runs_on(box, "a") == ["hv1"]
        box.nodes["hv3"].link(True)
        power_on_and_ready(box, "hv3")
        assert not box.check("rejoined")
    assert not watch.seen, watch.seen
    assert len(box.events.all("recovered", node="hv3")) == 1


def test_network_cut_with_shared_bmc_self_fences_then_recovers_once(make_box, round_):
    """The BMC shares the node's link, so no fencer can reach it: the node stops its own VMs once it
    has been cut off from ZooKeeper for the self-fence deadline, and only after that deadline has
    provably passed does the cluster (``failed_fence = recover``) start them elsewhere. When the link
    comes back, the node rejoins without starting a second copy of anything."""
    box = make_box(bmc="shared", settings={"failed_fence": "recover"})
    define_on(box, "hv3", {"a": ["hv2", "hv3"], "b": []})
    hv3 = box.nodes["hv3"]
    with DuplicateWatch(box) as watch:
        t0 = time.monotonic()
        hv3.link(False)
        deadline = t0 + T
        while hv3.running_domains() and time.monotonic() < deadline:
            time.sleep(0.1)  # watching its libvirt for the self-fence, under a deadline
        self_fenced = time.monotonic() - t0
        assert hv3.running_domains() == set(), box.logs()
        assert hv3.powered()  # nobody could fence it: it stopped its VMs itself
        assert not box.check("recovery")
        recovered = time.monotonic() - t0
        assert runs_on(box, "a") == ["hv2"]
        assert state(box, "hv3", "fenced")  # by its own deadline: every fencer failed
        box.wait_primary()  # hv3 may have been primary: the API moves with the role
        fencing = box.cli_json("cluster", "status")["fencing"]["hv3"]
        assert fencing["state"] == "self-fenced" and "past its self-fence deadline" in fencing["message"], fencing
        hv3.link(True)
        assert box.view.wait_for(lambda c: c.nodes["hv3"].daemon_state == "run"
                                 and c.nodes["hv3"].keepalive > time.time() - 2, T), box.logs()
        box.wait_primary()
        box.cli("node", "ready", "hv3", "--wait")
        assert not box.check("rejoined")
    assert not watch.seen, watch.seen
    assert len(box.events.all("recovered", node="hv3")) == 1
    print(f"cut -> self-fenced after {self_fenced:.1f}s, recovered elsewhere after {recovered:.1f}s")


def test_zookeeper_leader_killed_fences_nobody_moves_nothing(make_box, round_):
    box = make_box()
    for node in ("hv1", "hv2", "hv3"):
        define_on(box, node, {f"vm-{node}": []})
    before = {name: vm.node for name, vm in box.view.snapshot().vms.items()}
    leader = next(z for z in box.zk if z.mode() == "leader")
    cfg = box.view.config
    with DuplicateWatch(box) as watch:
        killed_at = time.time()
        leader.kill()
        # Long enough for a false verdict to show: a keepalive limit and a grace period past the
        # moment every daemon has written again through the new leader.
        assert box.view.wait_for(lambda c: all(n.keepalive > killed_at for n in c.nodes.values()), T)
        window = cfg.keepalive_limit + cfg.fence_grace + 2
        changed = box.view.wait_for(
            lambda c: any(n.daemon_state != "run" for n in c.nodes.values())
            or {name: vm.node for name, vm in c.vms.items()} != before, window)
        assert not changed, box.view.snapshot()
        leader.start()
    assert not watch.seen
    assert not box.events.all("fenced")
    assert not box.check("after the election")
    assert {name: vm.node for name, vm in box.view.snapshot().vms.items()} == before


OUTAGE = 20.0  # seconds the whole ensemble is down: twice the default self-fence deadline


def test_whole_zookeeper_ensemble_down_stops_no_vm_moves_nothing(make_box, round_):
    """Default settings (failed_fence = none): nobody recovers without a confirmed fence, so no node
    stops its VMs while cut off, however long, and nothing moves when ZooKeeper returns."""
    box = make_box()
    for node in ("hv1", "hv2", "hv3"):
        define_on(box, node, {f"vm-{node}": []})
    before = {name: vm.node for name, vm in box.view.snapshot().vms.items()}
    expected = box.running()
    with DuplicateWatch(box) as watch:
        for z in box.zk:
            z.kill()
        down_at = time.monotonic()
        # The fault lasts OUTAGE seconds; meanwhile every node's libvirt keeps running every VM.
        while time.monotonic() - down_at < OUTAGE:
            assert box.running() == expected, f"{time.monotonic() - down_at:.1f}s into the outage"
            time.sleep(1.0)
        back_at = time.time()
        for z in box.zk:
            z.start(wait=False)
        assert box.view.wait_for(lambda c: all(n.keepalive > back_at for n in c.nodes.values()), T), box.logs()
        cfg = box.view.config
        changed = box.view.wait_for(
            lambda c: any(n.daemon_state != "run" for n in c.nodes.values())
            or {name: vm.node for name, vm in c.vms.items()} != before, cfg.keepalive_limit + cfg.fence_grace + 2)
        assert not changed, box.view.snapshot()
    assert not watch.seen
    assert box.running() == expected
    assert not box.events.all("fenced")
    assert not any("self-fence" in n.daemon_log.read_text(errors="replace") for n in box.nodes.values())
    assert not box.check("after the outage")


def test_planned_handovers_lose_no_pings(make_box, round_):
    box = make_box()
    first = box.view.snapshot().primary.node
    other = next(n for n in box.nodes if n != first)
    assert subprocess.run([*box.net.exec(box.client), "ping", "-c", "1", "-W", "2", "198.18.0.100"],
                          capture_output=True).returncode == 0
    pinger = box.pinger()
    try:
        for target in (other, first):
            box.cli("node", "primary", target, "--wait")
            assert box.view.snapshot().primary.node == target
            assert box.cli_json("cluster", "status")["primary"] == target  # the API moved with it
    finally:
        sent, received = pinger.stop()
    print(f"2 handovers: {sent} pings, {sent - received} lost")
    assert sent > 20 and sent - received <= 1


def test_primary_killed_another_takes_over_after_the_fence(make_box, round_):
    box = make_box()
    old = box.view.snapshot().primary.node
    define_on(box, old, {"on-primary": []})
    with DuplicateWatch(box) as watch:
        box.bmc(old, "chassis", "power", "off")
        assert state(box, old, "fenced"), box.logs()
        new = box.wait_primary()  # elected after the fence, and its API answers on the floating IP
        assert new != old
        assert box.cli_json("cluster", "status")["primary"] == new
        assert not box.check("recovery")
    assert not watch.seen
    fenced = box.events.wait(1, "fenced", node=old)
    assert fenced and fenced[0]["off"] is True
    power_on_and_ready(box, old)
    assert not box.check("old primary back")


def test_a_clean_reboot_flushes_the_node_and_readies_it_with_no_vm_stopped(make_box, round_):
    """flush_on_shutdown and ready_on_boot: the daemon's stop (systemctl stop before a reboot) live-migrates the
    node's VMs away; the node powers off and on; its daemon's start takes them back live."""
    box = make_box(daemon_flags=("--flush-on-shutdown", "--ready-on-boot", "--flush-timeout", "60"))
    define_on(box, "hv3", {"r1": [], "r2": ["hv2", "hv3"]})
    with DuplicateWatch(box) as watch:
        box.nodes["hv3"].stop_daemon()  # returns once the daemon exited: flushed by then
        assert box.running()["hv3"] == set()
        assert runs_on(box, "r1") in (["hv1"], ["hv2"]) and runs_on(box, "r2") == ["hv2"]
        box.bmc("hv3", "chassis", "power", "off")  # the reboot itself
        box.nodes["hv3"].power_on()
        box.wait_running(["hv3"])
        box.wait_primary()  # hv3 may have been primary: its API moved
        assert box.view.wait_for(lambda c: c.nodes["hv3"].domain_state == "ready"
                                 and all(c.vms[v].node == "hv3" and c.vms[v].migration is None
                                         for v in ("r1", "r2")), T), box.logs()
        assert not box.check("after the reboot")
    assert not watch.seen, watch.seen
    assert box.running()["hv3"] == {"r1", "r2"}
    moves = box.events.all("migration")
    # Every move was live (no VM stopped), away and back: two per VM.
    assert sorted((m["vm"], m["method"], m["ok"]) for m in moves) == [
        ("r1", "live", True), ("r1", "live", True), ("r2", "live", True), ("r2", "live", True)], moves
    assert not box.events.all("vm_state", new="stop")

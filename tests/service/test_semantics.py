"""What operators do in maintenance windows, on three daemons: homes survive chained moves, a start
never lands on a flushed, stopped or full node, a forced undefine waits out a migration and then stops
the VM."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from pvccore.errors import ConflictError
from pvccore.demo.cluster import sample_domain_xml

T = 30


def settled_on(ops, name, node) -> bool:
    return ops.view.wait_for(lambda c: (v := c.vms.get(name)) is not None and v.node == node
                             and v.migration is None and v.state == "start" and name in c.nodes[node].running_vms, T)


def domain_state(ops, node, state) -> bool:
    return ops.wait_node(node, lambda n: n.domain_state == state, T)


def test_rolling_maintenance_brings_every_vm_home(cluster):
    cluster.define_vm(sample_domain_xml("web1", 512, 1), target="hv1")
    assert settled_on(cluster, "web1", "hv1")
    cluster.flush("hv1")
    assert domain_state(cluster, "hv1", "flushed")
    first = cluster.view.snapshot().vms["web1"].node
    assert first in ("hv2", "hv3") and cluster.view.snapshot().vms["web1"].last_node == "hv1"
    other = "hv3" if first == "hv2" else "hv2"
    cluster.flush(first)  # the VM moves on, away from its home a second time
    assert domain_state(cluster, first, "flushed")
    assert settled_on(cluster, "web1", other)
    assert cluster.view.snapshot().vms["web1"].last_node == "hv1"  # still its home
    cluster.ready("hv1")
    assert domain_state(cluster, "hv1", "ready")
    assert settled_on(cluster, "web1", "hv1")  # home
    assert cluster.view.snapshot().vms["web1"].last_node == ""
    cluster.ready(first)
    assert domain_state(cluster, first, "ready")
    assert cluster.view.snapshot().vms["web1"].node == "hv1"


def test_start_of_a_vm_parked_on_a_flushed_node_places_it_or_refuses(cluster):
    cluster.define_vm(sample_domain_xml("pinned", 512, 1), {"node_limit": ["hv1"]}, target="hv1")
    assert settled_on(cluster, "pinned", "hv1")
    cluster.flush("hv1")
    assert domain_state(cluster, "hv1", "flushed")
    parked = cluster.store.get_vm("pinned")
    assert (parked.node, parked.state, parked.meta.node_autostart) == ("hv1", "stop", True)
    with pytest.raises(ConflictError, match="cannot start: its node hv1 is flushed"):
        cluster.set_state("pinned", "start")  # its limit leaves it nowhere else
    assert cluster.store.get_vm("pinned").state == "stop"
    # Figures are published as soon as they are read, a moment after the VM stopped: wait for them.
    assert cluster.view.wait_for(lambda c: "pinned" not in c.nodes["hv1"].running_vms, 5)

    cluster.set_meta("pinned", {"node_limit": ["hv1", "hv2"]})
    started = cluster.set_state("pinned", "start")
    assert (started.node, started.last_node, started.meta.node_autostart) == ("hv2", "hv1", False)
    assert settled_on(cluster, "pinned", "hv2")
    cluster.ready("hv1")
    assert settled_on(cluster, "pinned", "hv1")  # and home with its node


def test_forced_undefine_during_a_migration_stops_the_vm_once_it_settles(cluster):
    cluster.define_vm(sample_domain_xml("mover", 512, 1), target="hv1")
    assert settled_on(cluster, "mover", "hv1")
    cluster.local.signal("hv2", signal.SIGSTOP)  # the target cannot answer: the migration waits for it
    try:
        cluster.migrate("mover", "hv2")
        outcome = []
        worker = threading.Thread(target=lambda: outcome.append(_undefine(cluster, "mover")))
        worker.start()
        assert cluster.view.wait_for(lambda c: c.vms["mover"].migration is not None, T)
        assert worker.is_alive()  # waiting for the migration, not refused at once, not cutting it off
        with pytest.raises(ConflictError, match="is migrating to hv2; replace its XML once that is done"):
            cluster.replace_xml("mover", sample_domain_xml("mover", 1024, 1))  # hv2 was chosen for 512 MiB
    finally:
        cluster.local.signal("hv2", signal.SIGCONT)
    worker.join(T)
    assert outcome == ["undefined"]
    assert cluster.view.wait_for(lambda c: "mover" not in c.vms
                                 and all("mover" not in n.running_vms for n in c.nodes.values()), T)


def _undefine(ops, name) -> str:
    try:
        ops.undefine(name, force=True, timeout=T)
        return "undefined"
    except ConflictError as exc:
        return exc.message


def test_a_home_readied_while_its_vm_is_in_flight_elsewhere_still_gets_it_back(cluster):
    # The home is the primary, which drives every flush and ready: the node frozen below is never the one
    # that must notice the ready.
    home = cluster.view.snapshot().primary.node
    cluster.define_vm(sample_domain_xml("roamer", 512, 1), target=home)
    assert settled_on(cluster, "roamer", home)
    cluster.flush(home)
    assert domain_state(cluster, home, "flushed")
    first = cluster.view.snapshot().vms["roamer"].node
    other = ({"hv1", "hv2", "hv3"} - {home, first}).pop()
    cluster.local.signal(other, signal.SIGSTOP)  # the next hop cannot answer yet: the VM stays in flight
    try:
        cluster.flush(first)
        assert cluster.wait_vm("roamer", lambda v: v.migration is not None and v.migration.target == other, T)
        cluster.ready(home)  # the operator readies the home while the VM is still moving on
        assert _logged(cluster, home, f"VM roamer is on its way to {other}; it comes home once it lands")
    finally:
        cluster.local.signal(other, signal.SIGCONT)
    assert settled_on(cluster, "roamer", home) and cluster.view.snapshot().vms["roamer"].last_node == ""
    assert domain_state(cluster, home, "ready")
    cluster.ready(first)
    assert domain_state(cluster, first, "ready") and cluster.view.snapshot().vms["roamer"].node == home


def test_start_of_a_stopped_vm_whose_node_is_full_or_down_places_it_and_keeps_its_home(cluster):
    cluster.define_vm(sample_domain_xml("big", 12288, 1), target="hv1", start=False)
    cluster.define_vm(sample_domain_xml("filler", 8192, 1), target="hv1")  # fits: big is stopped
    assert settled_on(cluster, "filler", "hv1")
    started = cluster.set_state("big", "start")  # hv1 has 8192 MiB free: big would overcommit it
    assert (started.node, started.last_node) == ("hv2", "hv1")
    assert "its node hv1 has 8192 MiB free, 12288 MiB needed" in started.reason
    assert settled_on(cluster, "big", "hv2")

    cluster.set_state("big", "shutdown")
    assert cluster.wait_vm("big", lambda v: v.state == "stop", T)
    cluster.local.signal("hv2", signal.SIGTERM)
    assert cluster.wait_node("hv2", lambda n: n.daemon_state == "stop", T)
    started = cluster.set_state("big", "start")  # its node's daemon is stopped; hv1 is still full
    assert (started.node, started.last_node) == ("hv3", "hv1") and "its node hv2 is stop" in started.reason
    assert settled_on(cluster, "big", "hv3")


def _logged(ops, node: str, line: str) -> bool:
    """Poll a daemon's log file (written by another process) for ``line``, under the test's deadline."""
    deadline = time.monotonic() + T
    while line not in ops.local.log(node):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True

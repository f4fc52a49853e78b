"""Faults: conditions found in a cluster, folded into records with their history; the ZooKeeper probe."""

import socket
import threading

import pytest

from pvccore.domain.faults import REFRESH, conditions, merged
from pvccore.domain.models import VM, Cluster, Fault, FenceStatus, VMMeta
from pvccore.errors import ValidationError
from pvccore.node.faults import probe, servers
from tests.conftest import make_node


def sick_cluster() -> Cluster:
    nodes = [make_node("hv1"), make_node("hv2", daemon_state="dead"), make_node("hv3", daemon_state="fenced")]
    vms = [VM("ok", "u1", 512, 1, state="start", node="hv1"),
           VM("bad", "u2", 512, 1, state="fail", node="hv1", reason="libvirt refused it"),
           VM("parked", "u3", 512, 1, state="stop", node="hv3", reason="hv3 fenced; no node can host VM 'parked'",
              meta=VMMeta(node_autostart=True)),
           VM("off", "u4", 512, 1, state="stop", node="hv1", meta=VMMeta(node_autostart=True))]  # the operator's
    return Cluster.build(nodes, vms)


def test_conditions_name_each_thing_that_needs_an_operator_once():
    fencing = {"hv2": FenceStatus("failed", "BMC refused"), "hv3": FenceStatus("fenced", "ok"),
               "hv4": FenceStatus("held")}
    found = conditions(sick_cluster(), fencing, {"10.0.0.3:2181": "Connection refused"})
    assert sorted(found) == ["fence-failed.hv2", "node-dead.hv2", "node-fenced.hv3", "node-silent.hv4",
                             "vm-failed.bad", "vm-stopped.parked", "zookeeper-down.10.0.0.3:2181"]
    assert "BMC refused" in found["fence-failed.hv2"].message
    assert "starts with node hv3's next ready" in found["vm-stopped.parked"].message
    assert conditions(Cluster.build([make_node("hv1")]), {}, {}) == {}


def test_a_fault_is_raised_refreshed_cleared_and_counted_when_it_comes_back():
    [c] = conditions(Cluster.build([make_node("hv2", daemon_state="dead")]), {}, {}).values()
    new = merged(None, c, 100.0)
    assert (new.id, new.count, new.first_seen, new.last_seen, new.active) == ("node-dead.hv2", 1, 100.0, 100.0, True)
    assert merged(new, c, 100.0 + REFRESH / 2) is None  # nothing to write yet
    assert merged(new, c, 100.0 + REFRESH).last_seen == 100.0 + REFRESH
    acked = Fault.from_dict({**new.to_dict(), "acknowledged": True})
    cleared = merged(acked, None, 200.0)
    assert not cleared.active and cleared.acknowledged and cleared.last_seen == 100.0
    assert merged(cleared, None, 300.0) is None
    back = merged(cleared, c, 400.0)
    assert (back.count, back.active, back.acknowledged, back.first_seen, back.last_seen) == (2, True, False, 100.0,
                                                                                             400.0)


@pytest.mark.parametrize("raw", [{"id": "../x"}, {"id": "node-dead.hv1", "kind": "nosuch"}, {"id": ""},
                                 {"id": "node-dead." + "x" * 300}])
def test_a_fault_record_that_is_not_one_is_refused(raw):
    base = {"id": "node-dead.hv1", "kind": "node-dead", "subject": "hv1", "message": "m", "first_seen": 1.0,
            "last_seen": 1.0}
    with pytest.raises(ValidationError):
        Fault.from_dict({**base, **raw})


def test_the_connect_string_is_parsed_into_servers():
    assert servers("a:2181,b:2182/pvc") == [("a", 2181), ("b", 2182)]
    assert servers("[::1]:2181, c") == [("::1", 2181), ("c", 2181)]
    assert servers("::1") == [("::1", 2181)]


def test_a_server_that_refuses_is_down_one_that_answers_or_keeps_quiet_is_up():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    assert probe("127.0.0.1", port) != ""
    # four-letter words on; ruok not allowed (3.5+'s default); or a server that takes the connection and says nothing
    for answer in (b"imok", b"ruok is not executed because it is not in the whitelist.\n", None):
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()

            def serve(a=answer, s=server):
                conn, _ = s.accept()
                with conn:
                    conn.recv(4)
                    if a:
                        conn.sendall(a)
                    else:
                        conn.recv(1)  # until the prober hangs up

            t = threading.Thread(target=serve, daemon=True)
            t.start()
            assert probe("127.0.0.1", server.getsockname()[1], timeout=0.3) == ""
            t.join(5)

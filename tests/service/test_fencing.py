"""Dead-node detection, fencing over real IPMI (simulated BMCs), recovery, self-fence.

Each node's BMC (pyghmi, answering ipmitool's lanplus on loopback) powers the
node off by killing its daemon's process group, and with it the daemon's
in-memory hypervisor and VMs. After every case: no VM runs on two nodes, none
is lost.
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pvccore.errors import ConflictError, NotFoundError, ValidationError
from pvccore.domain.transitions import invariant_violations
from pvccore.demo.cluster import LocalCluster, sample_domain_xml as domain
from pvccore.demo.zookeeper import free_port
from pvccore.operations import Operations
from pvccore.plugins import load_plugins
from pvccore.zk.store import Store, delete_tree
from pvccore.zk.session import Session
from tests.conftest import Events
from tests.tools.tcpproxy import TcpProxy

T = 30
NODES = ("hv1", "hv2", "hv3")
BMCSIM = Path(__file__).resolve().parents[1] / "tools" / "bmcsim.py"


class Box:
    """Three coordinator daemons, a BMC each, and a way to cut hv3 off from ZooKeeper."""

    def __init__(self, zk_server, root, recorder_site, tmp_path, refuse=(), settings=None, hosts=None):
        self.dir = tmp_path
        self.events = Events(tmp_path / "events.jsonl")
        self.proxy = TcpProxy("127.0.0.1", zk_server.port)
        self.store = Store.connect(zk_server.hosts, root)
        self.store.update_config(lambda c: c.updated({"keepalive_limit": 1.5, "fence_grace": 2.0,
                                                      **(settings or {})}))
        self.local = LocalCluster(zk_server.hosts, root, workdir=str(tmp_path), env={
            "PYTHONPATH": str(recorder_site), "PVC_TEST_EVENTS": str(self.events.path)},
            node_flags={"hv1": ("--coordinator", "--zookeeper", hosts or zk_server.hosts),
                        "hv2": ("--coordinator", "--zookeeper", hosts or zk_server.hosts),
                        "hv3": ("--coordinator", "--zookeeper", self.proxy.hosts)})
        self.bmcs, self.ports = {}, {}
        for node in NODES:
            self.ports[node] = free_port()
            self.bmcs[node] = subprocess.Popen(
                [sys.executable, str(BMCSIM), "--port", str(self.ports[node]), "--pgid-file",
                 str(tmp_path / f"{node}.pgid")] + (["--refuse"] if node in refuse else []))
        self.local.start()
        for node in NODES:
            self.pgid(node)
        self.view = Session.on(self.store).view
        self.ops = Operations(self.store, self.view, load_plugins(disabled=()))
        for node in NODES:
            self.ops.set_fence_config(node, [self.ipmi(node)])

    def ipmi(self, node, password="secret"):
        return {"fencer": "ipmi", "params": {"host": "127.0.0.1", "port": self.ports[node], "username": "admin",
                                             "password": password, "timeout": 5}}

    def pgid(self, node):
        (self.dir / f"{node}.pgid").write_text(str(self.local.procs[node].pid))

    def restart(self, node):
        self.local.start_node(node)
        self.pgid(node)
        self.local.wait_running([node])

    def state(self, node, state) -> bool:
        return self.view.wait_for(lambda c: c.nodes[node].daemon_state == state, T)

    def settled(self) -> list[str]:
        """Wait until the invariants hold (VMs run where they should, once); return what still does not."""
        self.view.wait_for(lambda c: not invariant_violations(c), T)
        return invariant_violations(self.view.snapshot())

    def close(self):
        self.view.stop()
        self.local.stop()
        for bmc in self.bmcs.values():
            bmc.terminate()
        self.proxy.close()


@pytest.fixture
def box(zk_server, zk_root, recorder_site, tmp_path):
    boxes = []

    def make(**kw):
        boxes.append(Box(zk_server, zk_root, recorder_site, tmp_path, **kw))
        return boxes[-1]

    yield make
    for b in boxes:
        b.close()
        delete_tree(b.store.client, zk_root)
        b.store.close()


def place_vms(b):
    b.ops.define_vm(domain("free1"), target="hv3")
    b.ops.define_vm(domain("pair1"), {"node_limit": ["hv3", "hv2"]}, target="hv3")
    b.ops.define_vm(domain("only3"), {"node_limit": ["hv3"]}, target="hv3")
    b.ops.define_vm(domain("stay1"), target="hv1")
    assert b.settled() == []


def test_killed_daemon_is_fenced_over_ipmi_and_its_vms_recover(box):
    b = box()
    place_vms(b)
    t0 = time.monotonic()
    b.local.kill("hv3")
    assert b.state("hv3", "fenced")
    assert b.view.wait_for(lambda c: c.vms["free1"].node != "hv3" and c.vms["pair1"].node == "hv2", T)
    assert b.settled() == []
    elapsed = time.monotonic() - t0
    assert elapsed < 10, elapsed
    only = b.store.get_vm("only3")
    assert (only.node, only.state, only.meta.node_autostart) == ("hv3", "stop", True)
    fenced = b.events.wait(1, "fenced", node="hv3")[0]
    assert fenced["off"] is True and "chassis power is off" in fenced["message"]
    assert "secret" not in fenced["message"]
    recovered = b.events.wait(1, "recovered", node="hv3")[0]
    assert recovered["moved"]["pair1"] == "hv2" and recovered["parked"] == ["only3"]
    assert b.store.get_fencing()["hv3"].state == "fenced"
    assert b.store.get_stats().get("fences") == 1

    b.restart("hv3")  # it comes back flushed; ready brings its VMs home
    assert b.view.wait_for(lambda c: c.nodes["hv3"].daemon_state == "run"
                           and c.nodes["hv3"].domain_state == "flushed", T)
    b.ops.ready("hv3")
    assert b.view.wait_for(lambda c: c.nodes["hv3"].domain_state == "ready", T)
    assert b.view.wait_for(lambda c: all(c.vms[v].node == "hv3" and c.vms[v].state == "start"
                                         for v in ("free1", "pair1", "only3")), T)
    assert b.settled() == []


def test_short_stall_is_not_fenced_long_stall_is(box):
    b = box()
    place_vms(b)
    b.local.signal("hv3", signal.SIGSTOP)
    # keepalive_limit 1.5 s + fence_grace 2 s: a 2.5 s stall is survived
    assert not b.view.wait_for(lambda c: c.nodes["hv3"].daemon_state != "run", 2.5)
    b.local.signal("hv3", signal.SIGCONT)
    assert b.view.wait_for(lambda c: time.time() - c.nodes["hv3"].keepalive < 1, T)
    assert not b.view.wait_for(lambda c: c.nodes["hv3"].daemon_state != "run", 3)
    assert b.events.all("fenced") == [] and b.settled() == []

    b.local.signal("hv3", signal.SIGSTOP)  # now for good: fenced (the BMC kills the stopped process)
    assert b.state("hv3", "fenced")
    assert b.settled() == []


def test_bmc_refusing_recovers_nothing_and_retries(box):
    b = box(refuse=("hv3",))
    place_vms(b)
    b.local.kill("hv3")
    assert b.state("hv3", "dead")
    assert b.view.wait_until(lambda: getattr(b.store.get_fencing().get("hv3"), "attempts", 0) >= 2, T)
    status = b.store.get_fencing()["hv3"]
    assert status.state == "failed" and "refused" in status.message
    assert all(b.store.get_vm(v).node == "hv3" for v in ("free1", "pair1", "only3"))  # nothing recovered
    from pvcapi.cluster import status as cluster_status

    problems = cluster_status(b.ops)["problems"]
    assert any("fencing failed" in p and "not recovered" in p for p in problems)


def test_operator_confirms_a_dead_node_off_when_no_fencer_can(box):
    b = box(refuse=("hv3",))
    place_vms(b)
    with pytest.raises(ConflictError, match="node hv3 is run, not dead"):
        b.ops.confirm_off("hv3")  # a healthy node is never taken as off
    b.local.kill("hv3")
    assert b.state("hv3", "dead")
    assert b.view.wait_until(lambda: getattr(b.store.get_fencing().get("hv3"), "state", None) == "failed", T)
    assert all(b.store.get_vm(v).node == "hv3" for v in ("free1", "pair1", "only3"))  # nothing without a word
    b.ops.confirm_off("hv3")
    assert b.state("hv3", "fenced")
    assert b.view.wait_for(lambda c: c.vms["free1"].node != "hv3" and c.vms["pair1"].node == "hv2", T)
    assert b.events.wait(1, "fenced", node="hv3")[-1]["message"].startswith("power-off confirmed by the operator")
    assert b.settled() == []


def test_escalation_to_the_second_fencer(box):
    b = box()
    place_vms(b)
    b.ops.set_fence_config("hv3", [b.ipmi("hv3", password="wrong"), b.ipmi("hv3")])
    b.local.kill("hv3")
    assert b.state("hv3", "fenced")
    assert b.events.wait(1, "fenced", node="hv3")[0]["message"].startswith("#2 ipmi")
    assert b.settled() == []


def test_cut_off_node_keeps_its_vms_when_nobody_recovers_without_a_fence(box):
    """failed_fence = none (the default): a self-fence would protect nothing, so it never happens."""
    b = box(refuse=("hv3",), settings={"self_fence_deadline": 4.0})
    place_vms(b)
    assert b.view.wait_for(lambda c: c.nodes["hv3"].self_fence_deadline == 0
                           and c.nodes["hv3"].session_timeout == 3.0, T)  # published: disarmed
    before = set(b.view.snapshot().nodes["hv3"].running_vms)
    cut = time.monotonic()
    b.proxy.cut()
    assert b.state("hv3", "dead")
    # Past the deadline and the whole recovery window: the cluster recovers nothing, hv3 stops nothing.
    assert not b.view.wait_until(lambda: "self-fence" in b.local.log("hv3"), 4.0 + 1.5 + 2 - (time.monotonic() - cut))
    assert all(b.store.get_vm(v).node == "hv3" for v in ("free1", "pair1", "only3"))
    b.proxy.restore()
    assert b.view.wait_for(lambda c: c.nodes["hv3"].daemon_state == "run"
                           and time.time() - c.nodes["hv3"].keepalive < 1, T)
    assert set(b.view.snapshot().nodes["hv3"].running_vms) == before  # every VM ran on through the cut
    log = b.local.log("hv3")
    assert "self-fence" not in log and "stopped unexpectedly" not in log
    assert b.settled() == []


def test_partitioned_node_self_fences_then_cluster_recovers_without_a_fencer(box):
    b = box(settings={"self_fence_deadline": 4.0, "failed_fence": "recover"})
    place_vms(b)
    assert b.view.wait_for(lambda c: c.nodes["hv3"].self_fence_deadline == 4.0, T)  # armed, and published
    b.ops.set_fence_config("hv3", [])  # no working fencer at all
    cut = time.time()
    b.proxy.cut()
    assert b.events.wait(1, "recovered", node="hv3", timeout=T)
    recovered_at = b.events.all("recovered", node="hv3")[0]["at"]
    log = b.local.log("hv3")
    assert "self-fence: no keepalive written" in log and "stopped 3 VM(s)" in log
    assert b.state("hv3", "fenced") and b.ops.store.get_fencing()["hv3"].state == "self-fenced"
    # recovery waited for the deadline: not before cut + self_fence_deadline + keepalive_limit
    assert recovered_at - cut >= 4.0 + 1.5
    assert b.view.wait_for(lambda c: all(c.vms[v].node != "hv3" for v in ("free1", "pair1")), T)
    b.proxy.restore()  # it rejoins without starting a second copy of anything
    assert b.view.wait_for(lambda c: c.nodes["hv3"].daemon_state == "run"
                           and time.time() - c.nodes["hv3"].keepalive < 1, T)
    assert b.settled() == []


def test_dead_primary_is_fenced_and_another_coordinator_takes_over(box):
    b = box()
    assert b.view.wait_for(lambda c: c.primary is not None and c.nodes[c.primary.node].coordinator_state
                           == "primary", T)
    old = b.view.snapshot().primary
    b.ops.define_vm(domain("onprimary"), target=old.node)
    assert b.settled() == []
    if old.node == "hv3":
        b.proxy.cut()  # (hv3 talks to ZooKeeper through the proxy; its death must look the same)
    b.local.kill(old.node)
    assert b.state(old.node, "fenced")
    assert b.view.wait_for(lambda c: c.primary.node != old.node and c.primary.epoch == old.epoch + 1
                           and c.nodes[c.primary.node].coordinator_state == "primary", T)
    fencer = b.events.wait(1, "fenced", node=old.node)[0]
    assert fencer["off"] is True
    assert b.view.wait_for(lambda c: c.vms["onprimary"].node != old.node, T)
    assert b.settled() == []


def test_escalation_to_a_fence_agents_agent(box):
    b = box()
    place_vms(b)
    agent = {"fencer": "fence-agent", "params": {"agent": "fence_ipmilan", "ip": "127.0.0.1",
                                                  "ipport": b.ports["hv3"], "username": "admin",
                                                  "password": "secret", "lanplus": 1, "cipher": 3}}
    b.ops.set_fence_config("hv3", [b.ipmi("hv3", password="wrong"), agent])
    b.local.kill("hv3")
    assert b.state("hv3", "fenced")
    message = b.events.wait(1, "fenced", node="hv3")[0]["message"]
    assert message.startswith("#2 fence-agent: fence_ipmilan: status off") and "secret" not in message
    assert b.settled() == []


def test_the_built_in_fencers_look_at_the_power_without_changing_it(tmp_path):
    """``is_off`` of ``ipmi`` and ``fence-agent`` against a simulated BMC: on, then off, then no BMC."""
    node = subprocess.Popen(["sleep", "300"], start_new_session=True)  # the "node" the BMC powers
    (tmp_path / "pgid").write_text(str(node.pid))
    port = free_port()
    bmc = subprocess.Popen([sys.executable, str(BMCSIM), "--port", str(port), "--pgid-file", str(tmp_path / "pgid")])
    try:
        fencers = load_plugins(disabled=()).fencers
        ipmi = {"host": "127.0.0.1", "port": port, "username": "admin", "password": "secret", "retries": 0}
        agent = {"agent": "fence_ipmilan", "ip": "127.0.0.1", "ipport": port, "username": "admin",
                 "password": "secret", "lanplus": 1, "cipher": 3}
        deadline = time.monotonic() + T
        while subprocess.run(["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(port), "-U",
                              "admin", "-P", "secret", "chassis", "power", "status"], capture_output=True).returncode:
            assert time.monotonic() < deadline, "the simulated BMC does not answer"
            time.sleep(0.1)  # the BMC is starting: polled under a deadline
        assert fencers["ipmi"].is_off("n1", ipmi) is False
        assert fencers["fence-agent"].is_off("n1", agent) is False
        assert node.poll() is None  # looking changed nothing
        node.kill()
        node.wait()
        assert fencers["ipmi"].is_off("n1", ipmi) is True
        assert fencers["fence-agent"].is_off("n1", agent) is True
        assert fencers["ipmi"].is_off("n1", {**ipmi, "port": free_port()}) is False  # no BMC there: unknown
        assert fencers["ipmi"].is_off("n1", {}) is False
        assert fencers["fence-agent"].is_off("n1", {**agent, "agent": "rm -rf"}) is False
    finally:
        if node.poll() is None:
            node.kill()
        bmc.terminate()
        bmc.wait()


def test_maintenance_mode_holds_the_fence_then_recovery_carries_out_the_what_if(box):
    """Maintenance: a dead node is reported, not fenced; once it ends the node is fenced after a fresh silence, and
    its VMs go exactly where ``what-if-fail`` said they would."""
    from pvcapi.cluster import status as cluster_status

    b = box()
    place_vms(b)
    plan = b.ops.what_if_fail("hv3")
    assert set(plan.targets) == {"free1", "pair1"} and list(plan.parked) == ["only3"]
    assert plan.targets["pair1"] == "hv2"
    assert "only3" in cluster_status(b.ops)["n_plus_one"]["stranded"]["hv3"]  # N+1: hv3's loss strands only3
    b.ops.set_config({"maintenance": True})
    b.local.kill("hv3")
    assert b.view.wait_until(lambda: getattr(b.view.shown("fencing").get("hv3"), "state", None) == "held", T)
    status = cluster_status(b.ops)
    assert status["maintenance"] and status["warnings"][0].startswith("maintenance mode is on")
    assert any(p.startswith("node hv3: silent since") and "not fenced" in p for p in status["problems"])
    # Several times the detection time (1.5 s + 2 s): still not declared dead, nothing fenced or moved.
    assert not b.view.wait_for(lambda c: c.nodes["hv3"].daemon_state != "run", 8)
    assert b.events.all("fenced") == [] and all(b.store.get_vm(v).node == "hv3" for v in ("free1", "pair1"))
    off = time.monotonic()
    b.ops.set_config({"maintenance": False})
    assert b.state("hv3", "fenced")
    assert time.monotonic() - off >= 1.5  # a fresh silence of keepalive_limit first, not at once
    recovered = b.events.wait(1, "recovered", node="hv3")[0]
    assert recovered["moved"] == plan.targets and recovered["parked"] == list(plan.parked)
    assert b.store.get_fencing()["hv3"].state == "fenced" and b.settled() == []


def until(fn, timeout: float = T):
    """Poll ``fn`` (it reads ZooKeeper, which the view does not follow here) until it is truthy, or the deadline."""
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        if time.monotonic() > deadline:
            return value
        time.sleep(0.1)
    return value


def test_faults_are_raised_acknowledged_cleared_and_deleted(box):
    from pvcapi.cluster import status as cluster_status
    from pvcapi.info import metrics_text

    b = box()
    place_vms(b)
    faults = lambda: {f.id: f for f in b.ops.faults()}  # noqa: E731
    assert faults() == {}
    b.local.kill("hv3")
    assert b.state("hv3", "fenced")
    assert until(lambda: {"node-fenced.hv3", "vm-stopped.only3"} <= set(faults())), faults()
    fenced = faults()["node-fenced.hv3"]
    assert (fenced.active, fenced.count, fenced.acknowledged, fenced.kind) == (True, 1, False, "node-fenced")
    assert b.ops.acknowledge_fault("node-fenced.hv3").acknowledged
    assert cluster_status(b.ops)["faults"] == {"active": 2, "unacknowledged": 1}
    text = metrics_text(b.ops, b.ops.faults())
    assert 'pvc_faults{kind="node-fenced",state="acknowledged"} 1' in text
    assert 'pvc_faults{kind="vm-stopped",state="active"} 1' in text

    b.restart("hv3")  # it rejoins (flushed): no longer fenced; ready starts only3 at home
    assert until(lambda: not faults()["node-fenced.hv3"].active)
    b.ops.ready("hv3")
    assert until(lambda: not faults()["vm-stopped.only3"].active)
    cleared = faults()["node-fenced.hv3"]
    assert cleared.acknowledged and cleared.count == 1 and cleared.last_seen >= fenced.last_seen
    b.ops.delete_fault("node-fenced.hv3")
    assert "node-fenced.hv3" not in faults()
    with pytest.raises(NotFoundError):
        b.ops.delete_fault("node-fenced.hv3")
    with pytest.raises(NotFoundError):
        b.ops.acknowledge_fault("node-dead.hv9")
    with pytest.raises(ValidationError):
        b.ops.acknowledge_fault("../../config")


def test_a_zookeeper_server_that_does_not_answer_is_a_fault(box, zk_server):
    dead = free_port()  # a server of the connect string that nothing answers on
    b = box(hosts=f"{zk_server.hosts},127.0.0.1:{dead}")
    fault = f"zookeeper-down.127.0.0.1:{dead}"
    assert until(lambda: fault in {f.id for f in b.ops.faults()}), b.ops.faults()
    [down] = [f for f in b.ops.faults() if f.id == fault]
    assert down.active and "does not answer" in down.message
    assert not any(f.id.startswith("zookeeper-down.") and f.id != fault for f in b.ops.faults())

"""pvc side by side with a running peer: Pacemaker + corosync on the same box, guests, BMCs and faults.

Both systems run, one after the other in one run, on the cluster in a box (tests/cluster/harness.py) with
the same real guests (tests/cluster/guests.py: booted Linux, NBD disks with leases, a bridged network),
the same BMCs, and the same scenarios and measurement code below. Each is set up as a careful operator
would for fast failover, within what its own rules call safe:

- Pacemaker as tests/cluster/pacemaker.py sets it up (VirtualDomain resources, fence_ipmilan; the
  non-default settings and their reasons are written down there): corosync notices a lost node after
  ``token`` 1 s + ``consensus`` 1.2 s instead of ~8 s, and ``node-action-limit`` is 4;
- pvc as bench/guests.py runs it (the box's daemon flags), with keepalives every 0.5 s, a 2 s ZooKeeper
  session (the ensemble's ``tickTime`` is 500 ms) and the smallest ``keepalive_limit`` (1.5 s) and
  ``fence_grace`` (1 s) its checks accept for those (docs/operator.md, "Reliability settings and their
  bounds"): a node is declared dead after 2.5 s of silence instead of 5 s; ``flush_parallel`` 4; and
  the ZooKeeper ensemble's ``syncLimit`` at 2 ticks (1 s, as corosync's ``token``) instead of 4, since a
  link cut that takes the ensemble's leader stalls every client for that long plus an election.

- ``failover_s_median``: power loss of a node running 5 guests (through its BMC) -> every guest answers
  ping from the client host on another node; ``FAILOVERS`` runs. ``failover_started_s_median`` is the
  cluster manager's part of it: -> every guest running on another node as their libvirt reports (the
  rest is the guests booting, the same for both);
- ``migration_lost_pings_max``: 10 live migrations of one guest, the client pinging it every 10 ms;
- ``drain20_s``: a node running 20 guests drained (pvc: ``node flush``; Pacemaker: standby) -> none runs
  there and each runs on another node, as their libvirt reports; median of ``DRAINS`` runs, the guests
  moved home between them (on 2 cores one run varies by half);
- ``linkcut_recovery_s``: a node running 5 guests loses its link (its BMC stays reachable) -> every guest
  answers ping on another node; ``LINKCUTS`` runs.

Each figure is printed as ``peer_<figure>_pvc`` and ``peer_<figure>_pacemaker`` as soon as it is measured,
then ``peer_<figure>_ratio`` (pvc / Pacemaker: below 1, pvc is faster). ``peer_double_runs_<system>``
counts the moments two nodes ran one guest (the duplicate watcher) and the journal records showing two
writers or a lost record, over every scenario (target 0 for both).

    .venv/bin/python bench/peer_pacemaker.py [pvc] [pacemaker]       (or: make bench-peer, both)
"""

import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import libvirt

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Steps, table, wait_cpu_quiet  # noqa: E402
from common import emit as _emit  # noqa: E402
from guests import Writers, answering  # noqa: E402

from tests.cluster.guests import Guest, GuestLab  # noqa: E402
from tests.cluster.harness import ClusterBox, DuplicateWatch  # noqa: E402
from tests.cluster.pacemaker import PacemakerBox  # noqa: E402

MIGRATIONS = 10
FAILOVERS = 5
LINKCUTS = 3
DRAINS = 3
FAILOVER_GUESTS = 5
DRAIN_GUESTS = 20
PARALLEL = 4
T = 300
FIGURES = ("failover_s_median", "failover_started_s_median", "migration_lost_pings_max", "drain20_s",
           "linkcut_recovery_s")
# pvc tuned for fast failover (see the module docstring)
PVC_FLAGS = ("--flush-parallel", str(PARALLEL), "--keepalive-interval", "0.5", "--zookeeper-session-timeout", "2")
PVC_SETTINGS = {"keepalive_limit": 1.5, "fence_grace": 1.0}
PVC_ZK_SYNC_LIMIT = 2  # ticks of 500 ms: the ensemble gives up on an unreachable leader after 1 s, as corosync's token


class Pvc:
    """pvc's side: its node daemons, through its Python operations and CLI."""

    name = "pvc"

    def __init__(self, work: Path):
        self.box = ClusterBox(str(work / "pvc"), daemon_flags=PVC_FLAGS, settings=PVC_SETTINGS,
                              zk_sync_limit=PVC_ZK_SYNC_LIMIT)
        self.lab: GuestLab | None = None

    def up(self) -> None:
        self.box.up()
        self.lab = GuestLab(self.box).up()

    def define(self, name: str, node: str) -> Guest:
        return self.lab.define(name, node)

    def remove(self, names) -> None:
        for name in names:
            self.box.ops.undefine(name, force=True)

    def migrate(self, name: str, target: str) -> None:
        self.box.ops.migrate(name, target)

    def migrated(self, name: str) -> None:
        """Once the guest runs on its target: until pvc has finished with the migration."""
        assert self.box.view.wait_for(lambda c: c.vms[name].migration is None, T), self.box.logs()

    def drain(self, node: str) -> None:
        self.box.ops.flush(node)

    def undrain(self, node: str, names) -> None:
        """The drained node back in service, with ``names`` home on it (pvc's ready brings them)."""
        self.box.cli("node", "ready", node, "--wait", timeout=T)
        placed(self.box, names, lambda n: n == node, T)

    def leader(self) -> str:
        primary = self.box.view.snapshot().primary
        return primary.node if primary else ""

    def rejoin(self, node: str, names) -> None:
        """A fenced node powered on again, back in the cluster, with ``names`` back on it."""
        self.box.nodes[node].power_on()
        self.box.wait_running([node])
        self.box.wait_primary(T)
        self.box.cli("node", "ready", node, "--wait", timeout=T)  # brings its recovered VMs home
        placed(self.box, names, lambda n: n == node, T)

    def logs(self) -> str:
        return self.box.logs()


class Pacemaker:
    """Pacemaker's side: its command line tools, run inside a member node."""

    name = "pacemaker"

    def __init__(self, work: Path):
        self.box = PacemakerBox(str(work / "pacemaker"))
        self.lab: GuestLab | None = None

    def up(self) -> None:
        self.box.up()
        self.lab = GuestLab(self.box).up()

    def define(self, name: str, node: str) -> Guest:
        guest, xml = self.lab.prepare(name)
        self.box.add_vm(name, xml, node)
        return guest

    def remove(self, names) -> None:
        for name in names:
            self.box.target_role(name, "Stopped")
        self.box.idle(T)
        for name in names:
            self.box.crm("cibadmin", "--delete", "--xml-text", f'<rsc_location id="{name}-home"/>')
            self.box.crm("cibadmin", "--delete", "--xml-text", f'<primitive id="{name}"/>')

    def migrate(self, name: str, target: str) -> None:
        self.box.move(name, target)

    def migrated(self, name: str) -> None:
        """Once the guest runs on its target: until Pacemaker is idle, then drop the move's constraint
        (stickiness keeps the guest where it is)."""
        self.box.idle(T)
        self.box.clear(name)
        self.box.idle(T)

    def drain(self, node: str) -> None:
        self.box.standby(node, True)

    def undrain(self, node: str, names) -> None:
        """Out of standby, with ``names`` moved home to it (Pacemaker leaves them where they run)."""
        self.box.standby(node, False)
        self.box.idle(T)
        self.home(names, node)

    def home(self, names, node: str) -> None:
        for name in names:
            self.box.move(name, node)
        placed(self.box, names, lambda n: n == node, T)
        self.box.idle(T)
        for name in names:
            self.box.clear(name)
        self.box.idle(T)

    def leader(self) -> str:
        return self.box.dc()

    def rejoin(self, node: str, names) -> None:
        """A fenced node powered on again and a member, with ``names`` moved back to it (Pacemaker leaves
        them where they run: stickiness)."""
        self.box.nodes[node].power_on()
        self.box.wait_online([node], T)
        self.box.idle(T)
        self.home(names, node)

    def logs(self) -> str:
        return self.box.logs()


# -- measurement, the same for both ------------------------------------------------------------------

values: dict[str, float] = {}  # every figure emitted, for the ratios


def emit(name: str, value: float, unit: str, note: str = "") -> None:
    values[name] = value
    _emit(name, value, unit, note)


def placed(box: ClusterBox, names, where, timeout: float, since: float | None = None) -> float:
    """Seconds from ``since`` (default: now) until each guest in ``names`` runs on exactly one node and
    ``where(node)`` holds for it, as the nodes' libvirt reports (polled: there is no watch across nodes'
    libvirt); fails past ``timeout``."""
    t0 = time.monotonic() if since is None else since
    while True:
        running: dict[str, list[str]] = {}
        for node, names_there in box.running().items():
            for name in names_there:
                running.setdefault(name, []).append(node)
        if all(len(running.get(n, [])) == 1 and where(running[n][0]) for n in names):
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, f"not placed in {timeout} s: {running}"
        time.sleep(0.05)


def steady(system, guests, node: str) -> None:
    """Before a fault: every guest running on ``node`` and answering, and the host's CPU quiet again."""
    placed(system.box, [g.name for g in guests], lambda n: n == node, T)
    answering(system.lab, guests, T)
    wait_cpu_quiet()


def migrations(system, accel: str) -> None:
    box, lab = system.box, system.lab
    guest = system.define("m1", "hv1")
    answering(lab, [guest], T)
    wait_cpu_quiet()
    lost, times = [], []
    for i in range(MIGRATIONS):
        target = "hv2" if i % 2 == 0 else "hv1"
        pinger = box.pinger(guest.address, 0.01)
        time.sleep(0.5)  # pings before the move: the measurement window, not synchronisation
        t0 = time.monotonic()
        system.migrate("m1", target)
        placed(box, ["m1"], lambda n: n == target, T)
        times.append(time.monotonic() - t0)
        system.migrated("m1")
        time.sleep(0.5)  # and after it
        sent, received = pinger.stop()
        lost.append(sent - received)
    emit(f"peer_migration_s_median_{system.name}", statistics.median(times), "s",
         f"request -> running on the target ({accel}); runs {', '.join(f'{t:.2f}' for t in times)}")
    emit(f"peer_migration_lost_pings_max_{system.name}", max(lost), "pings", f"10 ms pings; per migration {lost}")
    system.remove(["m1"])


def power_losses(system, guests, accel: str) -> None:
    box, lab = system.box, system.lab
    names = [g.name for g in guests]
    times, started, leaders = [], [], []
    for _ in range(FAILOVERS):
        steady(system, guests, "hv3")
        leaders.append("hv3" if system.leader() == "hv3" else "other")
        t0 = time.monotonic()
        box.bmc("hv3", "chassis", "power", "off")
        with ThreadPoolExecutor(1) as pool:  # libvirt polled beside the pings
            running = pool.submit(placed, box, names, lambda n: n != "hv3", T, t0)
            times.append(answering(lab, guests, T, since=t0))
            started.append(running.result())
        system.rejoin("hv3", names)
    emit(f"peer_failover_started_s_median_{system.name}", statistics.median(started), "s",
         f"power loss -> the {FAILOVER_GUESTS} guests running on other nodes, by their libvirt ({accel}); runs "
         f"{', '.join(f'{t:.1f}' for t in started)}")
    emit(f"peer_failover_s_median_{system.name}", statistics.median(times), "s",
         f"power loss of a node running {FAILOVER_GUESTS} guests -> all answer ping elsewhere ({accel}); runs "
         f"{', '.join(f'{t:.1f}' for t in times)}; the node lost led the cluster: {leaders}")


def link_cuts(system, guests, accel: str) -> None:
    box, lab = system.box, system.lab
    names = [g.name for g in guests]
    hv3 = box.nodes["hv3"]
    times = []
    for _ in range(LINKCUTS):
        steady(system, guests, "hv3")
        t0 = time.monotonic()
        hv3.link(False)
        times.append(answering(lab, guests, T, since=t0))
        deadline = time.monotonic() + T
        while hv3.powered():  # the survivors fence it through its BMC
            assert time.monotonic() < deadline, "the cut node was not fenced"
            time.sleep(0.1)
        hv3.link(True)
        system.rejoin("hv3", names)
    emit(f"peer_linkcut_recovery_s_{system.name}", statistics.median(times), "s",
         f"a node running {FAILOVER_GUESTS} guests loses its link, its BMC reachable -> all answer ping "
         f"elsewhere ({accel}); median of {', '.join(f'{t:.1f}' for t in times)}")


def drain20(system, accel: str) -> None:
    box, lab = system.box, system.lab
    guests = [system.define(f"d{i:02d}", "hv1") for i in range(DRAIN_GUESTS)]
    names = [g.name for g in guests]
    answering(lab, guests, 600)
    times = []
    for _ in range(DRAINS):
        steady(system, guests, "hv1")
        t0 = time.monotonic()
        system.drain("hv1")
        placed(box, names, lambda n: n != "hv1", 600)
        times.append(time.monotonic() - t0)
        answering(lab, guests, T)
        system.undrain("hv1", names)
    emit(f"peer_drain20_s_{system.name}", statistics.median(times), "s",
         f"{DRAIN_GUESTS} running guests live-migrated off one node, {PARALLEL} at a time ({accel}); runs "
         f"{', '.join(f'{t:.1f}' for t in times)}")
    system.remove(names)


def run_system(system, steps: Steps) -> None:
    writers = Writers()
    try:
        steps.run(f"{system.name} up", system.up, system.logs)
        if system.lab is None:
            return
        accel = system.lab.domain_type
        with DuplicateWatch(system.box) as watch:
            steps.run(f"{system.name} migrations", lambda: migrations(system, accel), system.logs)
            guests = []

            def failovers():
                guests.extend(system.define(f"fo{i}", "hv3") for i in range(FAILOVER_GUESTS))
                power_losses(system, guests, accel)

            steps.run(f"{system.name} failovers", failovers, system.logs)
            if guests:
                steps.run(f"{system.name} link cuts", lambda: link_cuts(system, guests, accel), system.logs)
                steps.run(f"{system.name} remove", lambda: system.remove([g.name for g in guests]), system.logs)
            steps.run(f"{system.name} drain20", lambda: drain20(system, accel), system.logs)
        writers.check(system.lab, watch)
        emit(f"peer_double_runs_{system.name}", len(writers.found), "count",
             "; ".join(writers.found[:5]) or "none: no guest ran on two nodes, no journal with two writers")
    finally:
        system.box.down()


def ratios() -> None:
    for figure in FIGURES:
        pvc, pcmk = values.get(f"peer_{figure}_pvc"), values.get(f"peer_{figure}_pacemaker")
        if pvc is None or pcmk is None:
            print(f"peer_{figure}_ratio: not measured for both", file=sys.stderr)
        elif pcmk == 0:
            emit(f"peer_{figure}_ratio", 1.0 if pvc == 0 else float(pvc), "ratio",
                 "Pacemaker's figure is 0: the ratio is pvc's figure (1 when both are 0)")
        else:
            emit(f"peer_{figure}_ratio", pvc / pcmk, "ratio", f"pvc {pvc:.2f} / Pacemaker {pcmk:.2f}")


def main() -> None:
    libvirt.registerErrorHandler(lambda *_: None, None)  # a powered-off node's socket refuses: expected
    steps = Steps()
    systems = {"pvc": Pvc, "pacemaker": Pacemaker}
    chosen = sys.argv[1:] or list(systems)
    if not set(chosen) <= set(systems):
        raise SystemExit(f"usage: {sys.argv[0]} [pvc] [pacemaker]   (both by default)")
    with tempfile.TemporaryDirectory(prefix="pvc-bench-peer-") as work:
        for name in chosen:
            run_system(systems[name](Path(work)), steps)
    ratios()
    table("pvc and Pacemaker + corosync side by side: same box, guests, BMCs and faults")
    steps.done()


if __name__ == "__main__":
    main()

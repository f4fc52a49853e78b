"""Benchmarks with real guests in the cluster in a box (tests/cluster/guests.py): booted Linux guests with
a disk on shared storage (NBD, disk-locked by virtlockd) and an address on the nodes' network, which
write a journal record to their disk every 100 ms.

- ``guest_boot_s``: define -> the guest answers ping from the client host;
- ``guest_migration_s_median``: request -> running on the target, 10 live migrations;
- ``guest_migration_lost_pings_median`` / ``_max``: pings lost per migration, the client pinging every 10 ms;
  ``guest_migration_pause_ms_median`` / ``_max``: how long the guest was paused (QEMU's downtime, read from
  libvirt's completed job on the target), which the lost pings follow (one per 10 ms of pause);
- the same three with ``_md20`` after 10 more migrations with the guest's ``migration_max_downtime`` at 20 ms
  (the setting for guests whose users feel a pause; 0, the default, leaves QEMU's 300 ms);
- ``guest_migration_dirty_s``: a guest rewriting 64 MiB continuously, request -> running on the target
  (only where guests run under KVM: QEMU 7.2's TCG corrupts such a guest on migration; see
  tests/cluster/test_guests.py);
- ``guest_failover_s_median`` / ``_worst``: power loss of a node running 5 guests -> every guest answers
  ping on another node, 5 runs; ``guest_failover_started_s_median``: pvc's part of it (-> the last guest
  started on another node, from the daemons' logs); ``guest_boot5_s``: the same 5 guests defined at once
  -> all answer ping, the accelerator's share when 5 boot together on this machine's cores;
- ``guest_flush20_s_p1`` / ``_p2`` / ``_p4``: flush of 20 running guests off one node, 1, 2, 4 at a time;
  ``guest_flush20_p1_per_migration``: the p1 flush divided by the sum of its own 20 migrations (request ->
  running on the target, from the daemons' logs): what the flush adds around them (target <= 1.2);
- ``guest_double_writers``: over every step above, moments two nodes ran one guest (the duplicate
  watcher) plus journal records showing two writers or a lost record; target 0.

Each figure is printed as soon as it is measured; a failed step prints the daemons' logs and the rest
go on. Every figure names the accelerator the guests ran under.

    .venv/bin/python bench/guests.py        (or: make bench)
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import libvirt

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Steps, emit, table, wait_cpu_quiet  # noqa: E402

from tests.cluster.guests import GuestLab  # noqa: E402
from tests.cluster.harness import ClusterBox, DuplicateWatch  # noqa: E402

MIGRATIONS = 10
FAILOVERS = 5
FAILOVER_GUESTS = 5
FLUSH_GUESTS = 20
T = 300


class Writers:
    """Double writers seen over the whole run: the duplicate watcher's and the journals' findings."""

    def __init__(self):
        self.found: list[str] = []

    def check(self, lab: GuestLab, watch: DuplicateWatch | None = None) -> None:
        if watch is not None:
            self.found += watch.seen
        for guest in lab.guests.values():
            self.found += [f"{guest.name}: {p}" for p in guest.journal_problems()]


def answering(lab: GuestLab, guests, timeout: float, since: float | None = None) -> float:
    """Seconds from ``since`` (default: now) until every guest in ``guests`` has answered a ping from the
    client host (fails past ``timeout``). Guests are probed in turn with a 200 ms wait each, so a figure
    is good to ~0.2 s."""
    t0 = time.monotonic() if since is None else since
    waiting = {g.name: g for g in guests}
    last = 0.0
    while waiting:
        for name, guest in list(waiting.items()):
            res = subprocess.run([*lab.box.net.exec(lab.box.client), "ping", "-n", "-c", "1", "-W", "0.2",
                                  guest.address], capture_output=True)
            if res.returncode == 0:
                last = time.monotonic() - t0
                del waiting[name]
        assert time.monotonic() - t0 < timeout, f"no answer from {sorted(waiting)}: {lab.console(guest)}"
    return last


def wait_moved(box: ClusterBox, name: str, target: str, timeout: float = T) -> None:
    assert box.view.wait_for(lambda c: c.vms[name].node == target and c.vms[name].migration is None, timeout), \
        box.logs()
    vm = box.view.vm(name)
    assert vm.state == "start", vm.reason


def started_at(box: ClusterBox, name: str, since: float) -> float:
    """The wall-clock time of the first "VM <name>: started" line after ``since`` in the daemons' logs."""
    found = []
    for node in box.nodes.values():
        for line in node.daemon_log.read_text(errors="replace").splitlines():
            if f"VM {name}: started" in line:
                when = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
                if when >= since:
                    found.append(when)
    assert found, f"no start of {name} in the logs"
    return min(found)


def pause_ms(box: ClusterBox, name: str, node: str) -> int:
    """How long the last live migration of ``name`` (now on ``node``) paused it: QEMU's downtime."""
    conn = libvirt.open(box.nodes[node].uri)
    try:
        return int(conn.lookupByName(name).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)["downtime"])
    finally:
        conn.close()


def migrations(box: ClusterBox, guest, accel: str, suffix: str, note: str) -> None:
    """MIGRATIONS live migrations of ``guest`` back and forth between hv1 and hv2, pinged every 10 ms."""
    times, lost, pauses = [], [], []
    for _ in range(MIGRATIONS):
        target = "hv2" if box.view.vm(guest.name).node == "hv1" else "hv1"
        pinger = box.pinger(guest.address, 0.01)
        time.sleep(0.5)  # pings before the move: the measurement window, not synchronisation
        t0 = time.monotonic()
        box.ops.migrate(guest.name, target)
        wait_moved(box, guest.name, target)
        times.append(time.monotonic() - t0)
        time.sleep(0.5)  # and after it
        sent, received = pinger.stop()
        lost.append(sent - received)
        pauses.append(pause_ms(box, guest.name, target))
    if not suffix:
        emit("guest_migration_s_median", statistics.median(times), "s",
             f"{MIGRATIONS} live migrations of a 128 MiB guest ({accel}); runs {', '.join(f'{t:.2f}' for t in times)}")
    emit(f"guest_migration_lost_pings_median{suffix}", statistics.median(lost), "pings",
         f"10 ms pings, {note}; per migration {lost}")
    emit(f"guest_migration_lost_pings_max{suffix}", max(lost), "pings", "")
    emit(f"guest_migration_pause_ms_median{suffix}", statistics.median(pauses), "ms",
         f"the guest's pause (QEMU's downtime) per migration {pauses}")
    emit(f"guest_migration_pause_ms_max{suffix}", max(pauses), "ms", "")


def boot_and_migrations(box: ClusterBox, lab: GuestLab, accel: str) -> None:
    t0 = time.monotonic()
    guest = lab.define("m1", "hv1")
    emit("guest_boot_s", answering(lab, [guest], T, since=t0), "s", f"define -> the guest answers ping ({accel})")
    wait_cpu_quiet()
    migrations(box, guest, accel, "", "migration_max_downtime 0 (QEMU's 300 ms)")
    box.cli("vm", "meta", "m1", "--max-downtime", "20")
    migrations(box, guest, accel, "_md20", "migration_max_downtime 20 ms")
    done = [line for n in box.nodes.values() for line in n.daemon_log.read_text().splitlines()
            if "VM m1: migrated from" in line]
    assert len(done) == 2 * MIGRATIONS and all("(live, " in line for line in done), done


def dirty_migration(box: ClusterBox, lab: GuestLab, accel: str) -> None:
    if accel != "kvm":
        print("guest_migration_dirty_s: not measured: the guests run under TCG here, and QEMU 7.2's TCG "
              "corrupts a memory-rewriting guest it live-migrates", file=sys.stderr)
        return
    guest = lab.define("busy", "hv1", memory_mib=256, dirty_mib=64)
    answering(lab, [guest], T)
    t0 = time.monotonic()
    box.ops.migrate("busy", "hv2")
    wait_moved(box, "busy", "hv2")
    emit("guest_migration_dirty_s", time.monotonic() - t0, "s", f"a guest rewriting 64 MiB continuously ({accel})")


def failovers(box: ClusterBox, lab: GuestLab, accel: str) -> None:
    wait_cpu_quiet()
    t0 = time.monotonic()
    guests = [lab.define(f"fo{i}", "hv3") for i in range(FAILOVER_GUESTS)]
    names = [g.name for g in guests]
    emit("guest_boot5_s", answering(lab, guests, T, since=t0), "s",
         f"{FAILOVER_GUESTS} guests defined at once -> all answer ping: the boot's share of a failover ({accel})")
    times, started = [], []
    for _ in range(FAILOVERS):
        assert box.view.wait_for(lambda c: all(c.vms[n].node == "hv3" and c.vms[n].state == "start"
                                               for n in names), T), box.logs()
        answering(lab, guests, T)
        wait_cpu_quiet()
        t0, wall = time.monotonic(), time.time()
        box.bmc("hv3", "chassis", "power", "off")
        times.append(answering(lab, guests, T, since=t0))
        assert all(box.view.vm(n).node != "hv3" for n in names), box.logs()
        started.append(max(started_at(box, n, wall) for n in names) - wall)
        box.nodes["hv3"].power_on()
        box.wait_running(["hv3"])
        box.cli("node", "ready", "hv3", "--wait", timeout=T)
    emit("guest_failover_started_s_median", statistics.median(started), "s",
         "pvc's part of it: power loss -> the last of the guests started on another node (from the daemons' "
         f"logs); the rest is {FAILOVER_GUESTS} guests booting at once on this machine's cores "
         f"({accel}); runs {', '.join(f'{t:.1f}' for t in started)}")
    emit("guest_failover_s_median", statistics.median(times), "s",
         f"power loss of a node running {FAILOVER_GUESTS} guests -> all answer ping elsewhere ({accel}); "
         f"runs {', '.join(f'{t:.1f}' for t in times)}")
    emit("guest_failover_s_worst", max(times), "s", "")


def migration_seconds(box: ClusterBox) -> dict[str, float]:
    """Each VM's migration time (request -> running on the target) from the daemons' logs."""
    found = {}
    for node in box.nodes.values():
        for m in re.finditer(r"VM (\S+): migrated from \S+ to \S+ \(\w+, ([0-9.]+)s\)", node.daemon_log.read_text()):
            found[m[1]] = float(m[2])
    return found


def flush20(work: Path, parallel: int, accel: str, writers: Writers) -> None:
    with ClusterBox(str(work / f"flush-p{parallel}"), daemon_flags=("--flush-parallel", str(parallel))) as box:
        lab = GuestLab(box).up()
        guests = [lab.define(f"f{i:02d}", "hv1") for i in range(FLUSH_GUESTS)]
        answering(lab, guests, 600)
        wait_cpu_quiet()
        with DuplicateWatch(box) as watch:
            t0 = time.monotonic()
            box.ops.flush("hv1")
            assert box.ops.wait_node("hv1", lambda n: n.domain_state == "flushed", 600), box.logs()
            took = time.monotonic() - t0
        assert not box.nodes["hv1"].running_domains() and not box.settled()
        answering(lab, guests, 60)
        emit(f"guest_flush20_s_p{parallel}", took, "s",
             f"{FLUSH_GUESTS} running guests live-migrated off one node, {parallel} at a time ({accel})")
        if parallel == 1:
            spent = migration_seconds(box)
            assert len(spent) == FLUSH_GUESTS, spent
            each, total = spent.values(), sum(spent.values())
            emit("guest_flush20_p1_per_migration", took / total, "ratio",
                 f"the flush over its own migrations ({total:.1f} s; {min(each):.1f}-{max(each):.1f} s each, against "
                 "guest_migration_s_median with no other guest running)")
        writers.check(lab, watch)


def main() -> None:
    steps, writers = Steps(), Writers()
    with tempfile.TemporaryDirectory(prefix="pvc-bench-guests-") as work:
        work = Path(work)
        with ClusterBox(str(work / "main")) as box:
            lab = GuestLab(box).up()
            accel = lab.domain_type
            with DuplicateWatch(box) as watch:
                steps.run("boot and migrations", lambda: boot_and_migrations(box, lab, accel), box.logs)
                steps.run("dirty migration", lambda: dirty_migration(box, lab, accel), box.logs)
                steps.run("failovers", lambda: failovers(box, lab, accel), box.logs)
            writers.check(lab, watch)
        for p in (1, 2, 4):
            steps.run(f"flush20 p{p}", lambda p=p: flush20(work, p, accel, writers))
    emit("guest_double_writers", len(writers.found), "count",
         "moments two nodes ran one guest, and journal records of two writers or a lost record: "
         + ("; ".join(writers.found[:5]) or "none"))
    table(f"real guests in the cluster in a box ({accel}: booted Linux, NBD disks with leases, bridged network)")
    steps.done()


if __name__ == "__main__":
    main()

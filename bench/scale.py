"""Scale: N node daemons with 20 VMs each on one 3-server ZooKeeper ensemble; what the cluster costs at rest,
and how fast it still fails over and drains.

Everything is the real code but the hypervisor:

- a 3-server ZooKeeper ensemble on loopback (127.0.0.1, .2, .3: one JVM each);
- hv1..hv3: coordinators, each a pvcnoded process of its own (the real command);
- hv4: the node killed for the failover figure, a pvcnoded process of its own whose simulated BMC
  (tests/tools/bmcsim.py) the primary fences it through over IPMI;
- hv5..hvN: the real daemon code (``NodeDaemon``: keepalive, watches, reconcile, migration, flush),
  ``PER_PROCESS`` daemons per Python process (``bench/scale.py host``), so that hundreds fit in this
  machine's memory. Each daemon has its own ZooKeeper session and its own hypervisor: libvirt's test
  driver (``test:///<file>``, an in-memory hypervisor per connection, which starts and stops domains but
  cannot live-migrate, so migrations take the shutdown + start path);
- pvcapid under gunicorn (2 workers).

The VMs are seeded with the documents ``pvc vm define`` writes (VM document and XML in one transaction),
20 on each node, without the placement lock: the bench places them itself, so that seeding 20,000 takes
seconds, not the minutes 20,000 one-at-a-time placements would.

Figures, as JSON lines ``scale_<N>_<figure>``, over an idle window (``--idle``, 300 s by default) unless
said otherwise:

- ``zk_writes_per_s``, ``zk_reads_per_s``, ``zk_watch_events_per_s``: from the servers' own ``mntr``
  (writes and reads per namespace, the watches each change triggered), summed over the ensemble for
  reads and watch events; writes are counted once (every server applies every write);
- ``view_lag_ms_p99``: a keepalive written -> seen by a watcher that follows keepalives as the primary
  does (in this process; the wall clocks are one);
- ``daemon_cpu_pct``: CPU of the ``host`` processes over the window, per daemon (100 = one core);
- ``coordinator_cpu_pct``: CPU of the primary's pvcnoded process;
- ``false_fences``: fences over the window (every node is healthy);
- ``api_list_ms``: GET /vm of every VM through pvcapid, median of 5;
- ``flush_s``: ``node flush`` of hv5 -> its 20 VMs running on other nodes;
- ``failover_s``: hv4's daemon and its hypervisor killed (SIGKILL) -> its 20 VMs running elsewhere.

    .venv/bin/python bench/scale.py [N ...] [--idle SECONDS]       (or: make bench-scale; N = 100 300 1000)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Steps, busy_between, cpu_sample, emit, table  # noqa: E402

from pvccore import config as configmod  # noqa: E402
from pvccore.demo.cluster import LocalCluster, sample_domain_xml  # noqa: E402
from pvccore.demo.zookeeper import LocalZooKeeper, four_letter, free_port  # noqa: E402
from pvccore.domain.domainxml import parse_domain_xml  # noqa: E402
from pvccore.domain.models import VM  # noqa: E402
from pvccore.domain.states import VMState  # noqa: E402
from pvccore.operations import Operations  # noqa: E402
from pvccore.plugins import load_plugins  # noqa: E402
from pvccore.zk.auth import AUTH_ENV  # noqa: E402
from pvccore.zk.session import Session  # noqa: E402

SIZES = (100, 300, 1000)
VMS_PER_NODE = 20
PER_PROCESS = 50
COORDINATORS = ("hv1", "hv2", "hv3")
VICTIM, DRAINED = "hv4", "hv5"
ROOT = "/scale"
NAMESPACE = ROOT.strip("/")  # ZooKeeper counts reads and writes per first path component
DAEMON_FLAGS = ("--keepalive-interval", "1", "--zookeeper-session-timeout", "4", "--shutdown-timeout", "5",
                "--migration-timeout", "60", "--log-level", "warning")
NODE_MEMORY_MIB, NODE_CPUS, VM_MEMORY_MIB = 65536, 32, 512
BMCSIM = Path(__file__).resolve().parents[1] / "tests" / "tools" / "bmcsim.py"
T = 600


# -- the host process: PER_PROCESS node daemons -------------------------------------------------------


def host(argv: list[str]) -> None:
    """``scale.py host --zookeeper H --workdir W NODE...``: run those nodes' daemons in this process until SIGTERM."""
    from pvccore.node.daemon import NodeDaemon

    parser = argparse.ArgumentParser(prog="scale.py host")
    parser.add_argument("--zookeeper", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("nodes", nargs="+")
    args = parser.parse_args(argv)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    local = LocalCluster(args.zookeeper, ROOT, nodes=tuple(args.nodes), workdir=args.workdir,
                         memory_mib=NODE_MEMORY_MIB, cpus=NODE_CPUS)
    plugins = load_plugins()
    flags = argparse.ArgumentParser()
    configmod.DAEMON.add_flags(flags)
    for node in args.nodes:
        cfg = configmod.DAEMON.from_args(flags.parse_args(
            ["--node", node, "--zookeeper", args.zookeeper, "--root", ROOT, "--libvirt", local.hypervisor_uri(node),
             *DAEMON_FLAGS]))
        for attempt in range(3):  # a start cut short by a lost connection is started again, as systemd would
            try:
                NodeDaemon(cfg, plugins).start()
                break
            except Exception as exc:  # noqa: BLE001
                logging.warning("%s: start failed (%r); again", node, exc)
        else:
            raise SystemExit(f"{node}: did not start")
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    os._exit(0)  # the cluster is thrown away: no clean stop of hundreds of daemons


# -- measuring ------------------------------------------------------------------------------------------


def mntr(server: LocalZooKeeper) -> dict[str, float]:
    out = {}
    for line in four_letter(server.host, server.port, "mntr").decode(errors="replace").splitlines():
        key, _, value = line.partition("\t")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


WATCH_KINDS = ("node_changed", "node_created", "node_deleted", "node_children")


def zk_counters(ensemble) -> dict[str, float]:
    """Cumulative counters of the ensemble: writes (once), reads and watch events (summed over servers)."""
    readings = [mntr(s) for s in ensemble]
    return {
        "writes": max(r.get(f"zk_cnt_{NAMESPACE}_write_per_namespace", 0.0) for r in readings),
        "reads": sum(r.get(f"zk_cnt_{NAMESPACE}_read_per_namespace", 0.0) for r in readings),
        "watch_events": sum(r.get(f"zk_sum_{kind}_watch_count", 0.0) for r in readings for kind in WATCH_KINDS),
        "watches": sum(r.get("zk_watch_count", 0.0) for r in readings),
        "packets_in": sum(r.get("zk_packets_received", 0.0) for r in readings),
        "packets_out": sum(r.get("zk_packets_sent", 0.0) for r in readings),
    }


def cpu_seconds(pids) -> float:
    """CPU time (user + system) the processes ``pids`` have used so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class LagWatcher:
    """Follows every node's keepalive the way the primary does (one data watch each), and records how long
    after its write each keepalive was seen."""

    def __init__(self, session: Session, nodes):
        self.client, self.paths = session.store.client, session.store.paths
        self.lags: list[float] = []
        self.recording = False
        self._lock = threading.Lock()
        for node in nodes:
            self.client.DataWatch(self._path(node), self._seen)

    def _path(self, node: str) -> str:
        liveness = getattr(self.paths, "node_keepalive", None)  # liveness records, where the design has them
        return liveness(node) if liveness else self.paths.node(node)

    def _seen(self, data, stat, event=None):
        now = time.time()
        if data and event is not None and self.recording:
            try:
                written = float(json.loads(data)["keepalive"])
            except (ValueError, KeyError, TypeError):
                return
            with self._lock:
                self.lags.append(now - written)

    def p99_ms(self) -> float:
        with self._lock:
            lags = sorted(self.lags)
        return lags[max(0, int(len(lags) * 0.99) - 1)] * 1000 if lags else float("nan")


def settle(view, condition, timeout: float, what: str) -> float:
    """Poll ``condition(snapshot)`` at most twice a second until it holds (a full check of 20,000 VMs on every
    change would cost more than the cluster does); seconds it took. Raises on ``timeout``."""
    t0 = time.monotonic()
    gen = -1
    while True:
        if view.generation != gen:
            gen = view.generation
            if condition(view.snapshot()):
                return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{what}: not within {timeout:g}s")
        view.wait_changed(gen, 0.5)
        time.sleep(0.2)  # rate limit (see the docstring), not synchronisation: the loop re-checks


def running_where(cluster, names, allowed) -> bool:
    for name in names:
        vm = cluster.vms.get(name)
        if vm is None or not allowed(vm.node) or vm.node not in cluster.nodes \
                or name not in cluster.nodes[vm.node].running_vms or vm.migration is not None:
            return False
    return True


# -- one size -------------------------------------------------------------------------------------------


class Scale:
    def __init__(self, n: int, work: Path, ensemble, idle: float):
        self.n, self.work, self.ensemble, self.idle = n, work, ensemble, idle
        self.hosts = ",".join(s.hosts for s in ensemble)
        self.nodes = [f"hv{i}" for i in range(1, n + 1)]
        self.local = LocalCluster(self.hosts, ROOT, nodes=(*COORDINATORS, VICTIM), workdir=str(work),
                                  memory_mib=NODE_MEMORY_MIB, cpus=NODE_CPUS, flags=DAEMON_FLAGS,
                                  node_flags={c: ("--coordinator",) for c in COORDINATORS})
        self.host_procs: list[subprocess.Popen] = []
        self.hosted = [n for n in self.nodes if n not in (*COORDINATORS, VICTIM)]
        self.bmc: subprocess.Popen | None = None
        self.api: subprocess.Popen | None = None
        self.session: Session | None = None

    def up(self) -> None:
        t0 = time.monotonic()
        self.bmc_port = free_port()
        self.bmc = subprocess.Popen([sys.executable, str(BMCSIM), "--port", str(self.bmc_port), "--pgid-file",
                                     str(self.work / f"{VICTIM}.pgid")], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        self.local.start(timeout=120)
        (self.work / f"{VICTIM}.pgid").write_text(str(self.local.procs[VICTIM].pid))
        self.session = Session.open(self.hosts, ROOT, timeout=10, liveness=False)  # (the LagWatcher times keepalives)
        self.ops = Operations(self.session.store, self.session.view, load_plugins())
        self.ops.set_fence_config(VICTIM, [{"fencer": "ipmi", "params": {
            "host": "127.0.0.1", "port": self.bmc_port, "username": "admin", "password": "secret"}}])
        # One host process at a time, each starting its daemons one after another: nodes boot over a while,
        # not in one instant that would starve every ZooKeeper client on this machine of CPU at once.
        for i in range(0, len(self.hosted), PER_PROCESS):
            chunk = self.hosted[i:i + PER_PROCESS]
            log = open(self.work / f"host{i // PER_PROCESS}.log", "ab")
            proc = subprocess.Popen(
                [sys.executable, __file__, "host", "--zookeeper", self.hosts, "--workdir", str(self.work), *chunk],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
            self.host_procs.append(proc)
            log.close()
            if proc.stdout.readline().strip() != b"ready":
                text = (self.work / f"host{i // PER_PROCESS}.log").read_text(errors="replace")
                raise RuntimeError(f"host process {i // PER_PROCESS} did not start its daemons:\n{text[-3000:]}")
        settle(self.session.view, lambda c: all(n in c.nodes and c.nodes[n].daemon_state == "run"
                                                for n in self.nodes), T, "every daemon running")
        started = time.monotonic() - t0
        t0 = time.monotonic()
        self.seed()
        settle(self.session.view, lambda c: running_where(c, c.vms, lambda n: True), T, "every VM running")
        print(f"N={self.n}: {self.n} daemons up in {started:.0f}s, {self.n * VMS_PER_NODE} VMs seeded and running "
              f"in {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)

    def seed(self) -> None:
        store = self.session.store

        def create(node_i):
            node, i = node_i
            spec = parse_domain_xml(sample_domain_xml(f"{node}-{i:02d}", VM_MEMORY_MIB))
            store.create_vm(VM(name=spec.name, uuid=spec.uuid, memory_mib=spec.memory_mib, vcpus=spec.vcpus,
                               state=VMState.START, node=node), spec.xml)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(create, [(node, i) for node in self.nodes for i in range(VMS_PER_NODE)]))

    def start_api(self) -> None:
        port = free_port()
        cfg = self.work / "api.toml"
        cfg.write_text(f'zookeeper_hosts = "{self.hosts}"\nzookeeper_root = "{ROOT}"\nlisten = "127.0.0.1:{port}"\n'
                       f'workers = 2\napi_keys = ["scale"]\nlog_level = "warning"\n')
        self.api = subprocess.Popen([str(Path(sys.executable).parent / "pvcapid"), "-c", str(cfg)],
                                    stdout=subprocess.DEVNULL, stderr=open(self.work / "api.log", "ab"))
        from pvccli.client import ApiError, Client
        self.client = Client(f"http://127.0.0.1:{port}", "scale", timeout=60)
        deadline = time.monotonic() + T
        want = self.n * VMS_PER_NODE
        while True:  # both workers have loaded every VM into their views
            try:
                if len(self.client.vms()) == want and len(self.client.vms()) == want:
                    return
            except ApiError:
                pass
            if self.api.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pvcapid did not serve the {want} VMs; log in {self.work}")
            time.sleep(0.5)  # a poll with a deadline (the API is another process)

    def measure_idle(self) -> None:
        view = self.session.view
        fences0 = view.shown("stats").get("fences", 0)
        lag = LagWatcher(self.session, self.nodes)
        time.sleep(2)  # the watches armed; nothing is measured yet
        primary = view.snapshot().primary.node
        primary_pid = self.local.procs[primary].pid
        hosts = [p.pid for p in self.host_procs]
        zk0, cpu_hosts0, cpu_primary0 = zk_counters(self.ensemble), cpu_seconds(hosts), cpu_seconds([primary_pid])
        machine0 = cpu_sample()
        t0 = time.monotonic()
        lag.recording = True
        time.sleep(self.idle)  # the idle window itself
        lag.recording = False
        window = time.monotonic() - t0
        zk1, cpu_hosts1, cpu_primary1 = zk_counters(self.ensemble), cpu_seconds(hosts), cpu_seconds([primary_pid])
        busy, load = busy_between(machine0, cpu_sample()), os.getloadavg()[0]
        n = self.n
        rate = {k: (zk1[k] - zk0[k]) / window for k in zk0}
        # The lag watcher is this bench's instrument, not the cluster's: each keepalive it saw cost one watch
        # event and one read (kazoo's DataWatch reads to re-arm), taken out of the figures below.
        own = len(lag.lags) / window
        rate["watch_events"] -= own
        rate["reads"] -= own
        emit(f"scale_{n}_zk_writes_per_s", rate["writes"], "/s", f"idle {window:.0f}s, mntr write_per_namespace")
        emit(f"scale_{n}_zk_reads_per_s", rate["reads"], "/s", "mntr read_per_namespace, summed over 3 servers, "
             "less the lag watcher's")
        emit(f"scale_{n}_zk_watch_events_per_s", rate["watch_events"], "/s",
             f"mntr watches triggered, summed, less the lag watcher's; {zk1['watches']:.0f} watches set; packets in/out "
             f"{rate['packets_in']:.0f}/{rate['packets_out']:.0f} per s")
        emit(f"scale_{n}_view_lag_ms_p99", lag.p99_ms(), "ms", f"{len(lag.lags)} keepalives seen by a watcher")
        emit(f"scale_{n}_daemon_cpu_pct", (cpu_hosts1 - cpu_hosts0) / window / len(self.hosted) * 100, "%",
             f"idle, per daemon, {len(self.hosted)} daemons in {len(hosts)} processes")
        emit(f"scale_{n}_coordinator_cpu_pct", (cpu_primary1 - cpu_primary0) / window * 100, "%",
             f"the primary ({primary}) process, idle")
        fences = view.shown("stats").get("fences", 0) - fences0
        emit(f"scale_{n}_false_fences", fences, "count", f"fences over {window:.0f}s with every node healthy")
        # What the whole machine (ensemble, daemons, coordinators, this bench) had left: the first thing to break.
        emit(f"scale_{n}_machine_busy_pct", busy * 100, "%", f"all {os.cpu_count()} cores over the idle window; "
             f"load average {load:.0f} at its end")

    def measure_api(self) -> None:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            assert len(self.client.vms()) == self.n * VMS_PER_NODE
            times.append(time.perf_counter() - t0)
        emit(f"scale_{self.n}_api_list_ms", statistics.median(times) * 1000, "ms",
             f"GET /vm of {self.n * VMS_PER_NODE} VMs, median of 5: {', '.join(f'{t * 1000:.0f}' for t in times)}")

    def measure_flush(self) -> None:
        self._moved_off("flush_s", DRAINED, lambda: self.ops.flush(DRAINED), f"node flush of {DRAINED}",
                        "(shutdown + start)")

    def measure_failover(self) -> None:
        self._moved_off("failover_s", VICTIM, lambda: self.local.kill(VICTIM), f"{VICTIM}'s daemon and hypervisor "
                        "killed", "")

    def _moved_off(self, figure: str, node: str, action, what: str, how: str) -> None:
        """Seconds from ``action`` until the node's VMS_PER_NODE VMs run on other nodes."""
        names = [f"{node}-{i:02d}" for i in range(VMS_PER_NODE)]
        t0 = time.monotonic()
        action()
        settle(self.session.view, lambda c: running_where(c, names, lambda n: n != node), T, figure)
        emit(f"scale_{self.n}_{figure}", time.monotonic() - t0, "s",
             f"{what} -> its {VMS_PER_NODE} VMs running on other nodes {how}".rstrip())

    def down(self) -> None:
        if self.api is not None:
            self.api.terminate()
            self.api.wait(30)
        if self.bmc is not None:
            self.bmc.kill()
            self.bmc.wait()
        for proc in [*self.host_procs, *self.local.procs.values()]:  # each leads its own process group
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
        if self.session is not None:
            from pvccore.zk.store import delete_tree
            self.session.view.stop()
            delete_tree(self.session.store.client, ROOT)
            self.session.store.close()


def run_size(n: int, work: Path, ensemble, idle: float) -> None:
    scale = Scale(n, work, ensemble, idle)
    steps = Steps()
    try:
        try:
            scale.up()
            scale.measure_idle()
        except Exception as exc:  # the size did not fit this machine: say so as a figure, then what broke
            emit(f"scale_{n}_held", 0, "", f"did not hold: {str(exc).splitlines()[0][:160]}; load average "
                 f"{os.getloadavg()[0]:.0f}")
            raise
        emit(f"scale_{n}_held", 1, "", "every daemon up, every VM running, the idle window measured")
        steps.run(f"N={n} API", lambda: (scale.start_api(), scale.measure_api()))
        steps.run(f"N={n} flush", scale.measure_flush)
        steps.run(f"N={n} failover", scale.measure_failover)
    finally:
        scale.down()
    steps.done()


def ensemble_up(work: Path) -> list[LocalZooKeeper]:
    addresses = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    port = free_port()
    for address in addresses:  # one client port free on all three addresses
        with socket.socket() as s:
            s.bind((address, port))
    servers = [LocalZooKeeper(data_dir=str(work / f"zk{i}"), host=a, port=port, peers=addresses, myid=i)
               for i, a in enumerate(addresses, start=1)]
    for server in servers:
        server.start(wait=False)
    for server in servers:
        server.wait_serving(120)
    return servers


def main() -> None:
    parser = argparse.ArgumentParser(prog="scale.py")
    parser.add_argument("sizes", nargs="*", type=int, default=list(SIZES))
    parser.add_argument("--idle", type=float, default=300.0, help="seconds of the idle window (false fences)")
    args = parser.parse_args()
    os.environ.setdefault(AUTH_ENV, f"digest:pvc-scale:{os.urandom(8).hex()}")
    with tempfile.TemporaryDirectory(prefix="pvc-scale-") as tmp:
        work = Path(tmp)
        ensemble = ensemble_up(work)
        try:
            for n in args.sizes:
                size_dir = work / f"n{n}"
                size_dir.mkdir()
                try:
                    run_size(n, size_dir, ensemble, args.idle)
                except (Exception, SystemExit) as exc:  # noqa: BLE001 - report what broke, go on with the next size
                    print(f"N={n} failed: {exc!r}", file=sys.stderr)
        finally:
            for server in ensemble:
                server.stop()
    table("Scale: N node daemons, 20 VMs each, one 3-server ZooKeeper ensemble")


if __name__ == "__main__":
    if sys.argv[1:2] == ["host"]:
        host(sys.argv[2:])
    else:
        main()

"""Cluster in a box: real QEMU/KVM hypervisors in network namespaces on 198.18.0.0/24.

One machine plays a whole cluster:

- host ``i`` (1..N) is a node: network namespace ``eth0`` = 198.18.0.i, plus a mount,
  UTS and PID namespace whose init (tini) runs the node's own libvirtd (QEMU; KVM
  when /dev/kvm works, TCG otherwise) with per-node config, state and sockets;
  its ``pvcnoded`` is entered into those namespaces, so the node's power is that
  PID namespace: power off kills libvirtd, every QEMU and the daemon at once;
- every node's virtlockd keeps its disk locks in one lockspace on the shared storage
  (the box's ``shared/leases``): a power-off frees that node's locks with its processes,
  as a cluster file system frees a fenced node's locks once the fence is confirmed;
- a 3-server ZooKeeper ensemble, one server in each of the first three node
  network namespaces (outside their PID namespaces: a node's power-off does not
  take its ZooKeeper server with it, as if ZooKeeper ran on its own hardware);
- a simulated BMC per node answering real IPMI on UDP 623 at 198.18.0.20i, in a
  management namespace (``bmc="dedicated"``) or in the node's own namespace
  (``bmc="shared"``, a shared-LOM BMC that goes when the node's link goes);
- host N+1 is a client (pings, the CLI) and host N+2 the management network;
- every node is a coordinator carrying the floating IP 198.18.0.100, on which the
  primary serves the API under gunicorn.

``ClusterBox.down()`` tears every piece down, also after a failed test. The
invariants (no VM on two nodes, none lost, every VM that should run runs) are
read from every node's libvirt through its unix socket, which works whatever
the node's network is doing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import libvirt

from pvccore.demo.zookeeper import LocalZooKeeper
from pvccore.demo.netlab import NetLab, Pinger
from pvccore.operations import Operations
from pvccore.plugins import load_plugins
from pvccore.zk.auth import AUTH_ENV
from pvccore.zk.store import Store
from pvccore.zk.session import Session
from pvccore.zk.view import ClusterView
from tests.tools.bmcsim import kill_members, pidns_members

REPO = Path(__file__).resolve().parents[2]
BMCSIM = REPO / "tests" / "tools" / "bmcsim.py"
FLOATING_IP = "198.18.0.100"
API_PORT = 7370
API_KEY = "box-key"
APIPOLL = Path(__file__).resolve().parents[1] / "tools" / "apipoll.py"
ROOT = "/box"
MOUNTS = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt", "log": "/var/log/libvirt",
          "cache": "/var/cache/libvirt"}
# What a node's daemon runs with in the box: defaults, but a short graceful-shutdown wait
# (the tiny VMs have no operating system to answer ACPI, so every shutdown ends in a stop).
DAEMON_FLAGS = ("--shutdown-timeout", "2", "--migration-timeout", "30", "--handover-timeout", "15")


def kvm_usable() -> bool:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
        return True
    except OSError:
        return False


def tiny_domain_xml(name: str, memory_mib: int = 32, domain_type: str | None = None) -> str:
    """A 1-vCPU VM with no disk, display or balloon: QEMU runs its firmware, enough to live-migrate."""
    domain_type = domain_type or ("kvm" if kvm_usable() else "qemu")
    return (f"<domain type='{domain_type}'><name>{name}</name><uuid>{uuid.uuid4()}</uuid>"
            f"<memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
            "<devices><memballoon model='none'/><controller type='usb' model='none'/></devices></domain>")


def missing_tools() -> list[str]:
    return [t for t in ("libvirtd", "qemu-system-x86_64", "tini", "unshare", "nsenter", "ipmitool", "arping")
            if shutil.which(t) is None]


class BoxNode:
    """One hypervisor: its directories, its PID namespace (the power domain) and its daemon."""

    def __init__(self, box: "ClusterBox", index: int):
        self.box, self.index = box, index
        self.name = f"hv{index}"
        self.address = f"198.18.0.{index}"
        self.bmc_address = f"198.18.0.{200 + index}"
        self.dir = box.dir / self.name
        self.init_pid: int | None = None  # host PID of the PID namespace's init (tini)
        self.pidns = ""  # its ``pid:[inode]``: the BMC's power domain
        self.daemon_log = self.dir / "pvcnoded.log"

    @property
    def ns(self) -> str:
        return self.box.net.ns(self.index)

    @property
    def socket(self) -> Path:
        return self.dir / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        """This node's libvirt, reached through its unix socket from the root namespace."""
        return f"qemu:///system?socket={self.socket}"

    def configure(self) -> None:
        for sub in MOUNTS:
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "etc" / "libvirtd.conf").write_text(
            'listen_tls = 0\nlisten_tcp = 1\n'
            f'listen_addr = "{self.address}"\nauth_tcp = "none"\nauth_unix_rw = "none"\n'
            f'host_uuid = "{uuid.UUID(int=(self.box.serial << 16) + self.index)}"\n'  # one per node, or no migration
            'log_outputs = "3:stderr"\n')
        (self.dir / "etc" / "qemu.conf").write_text(
            'user = "root"\ngroup = "root"\nsecurity_driver = "none"\nstdio_handler = "file"\n'
            'cgroup_controllers = [ ]\n'
            # No private /dev namespace per QEMU: setting one up is work libvirtd's forked child does before exec,
            # and three times a forked child hung there on a lock (futex) during incoming live migrations,
            # which wedged that node's libvirtd. The nodes are namespaces of the box already.
            'namespaces = [ ]\n'
            f'migration_address = "{self.address}"\nmigration_host = "{self.address}"\n'
            'lock_manager = "lockd"\n')
        # Disk locks, the second guard behind fencing: every node's virtlockd locks in one lockspace
        # on the shared storage, so a QEMU cannot open a disk another node's QEMU holds. libvirt
        # locks file and block disks by themselves (auto_disk_leases); network disks, as the guests'
        # NBD disks are, only through a <lease> in the domain XML, named in this lockspace.
        (self.dir / "etc" / "qemu-lockd.conf").write_text(
            f'auto_disk_leases = 1\nrequire_lease_for_disks = 0\nfile_lockspace_dir = "{self.box.lockspace}"\n')
        (self.dir / "etc" / "virtlockd.conf").write_text('log_outputs = "3:stderr"\n')

    # -- power ----------------------------------------------------------------------

    def powered(self) -> bool:
        return bool(self.pidns) and bool(pidns_members(self.pidns))

    def power_on(self, timeout: float = 30.0) -> None:
        """Boot: a fresh PID namespace with libvirtd as its init's child, then the node daemon."""
        script = (f"hostname {self.name}; {self.boot_mounts()}; "
                  "virtlockd --daemon -f /etc/libvirt/virtlockd.conf -p /run/libvirt/virtlockd.pid && "
                  "exec tini -s -- libvirtd --listen "
                  "-p /run/libvirt/libvirtd.pid -f /etc/libvirt/libvirtd.conf")
        # /run is a tmpfs on a real host: a boot starts with none of the last boot's runtime state
        # (libvirt would otherwise list the dead QEMUs' domains as active while it reconnects).
        shutil.rmtree(self.dir / "run", ignore_errors=True)
        (self.dir / "run").mkdir()
        self.init_pid, self.pidns = None, ""
        log = open(self.dir / "libvirtd.log", "ab")
        proc = subprocess.Popen([*self.box.net.exec(self.index), "unshare", "--mount", "--uts", "--pid", "--fork",
                                 "--mount-proc", "--propagation", "private", "sh", "-c", script],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        self.box.reap.append(proc)
        deadline = time.monotonic() + timeout
        while True:  # the unshare process forks the namespace's init: find it, then its socket
            if self.init_pid is None or not self.pidns:
                children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
                try:
                    first = children.read_text().split()
                    if first:
                        self.init_pid = int(first[0])
                        self.pidns = os.readlink(f"/proc/{self.init_pid}/ns/pid")
                        (self.dir / "pidns").write_text(self.pidns)
                        self.box.booted.append(self.pidns)
                except OSError:
                    pass
            if self.pidns and self.socket.exists() and self._libvirt_answers():
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: libvirtd did not start; see {self.dir / 'libvirtd.log'}")
            time.sleep(0.05)  # polling a daemon that is starting, under a deadline
        self.start_daemon()

    def boot_mounts(self) -> str:
        """The shell commands that give a booting node its own libvirt directories, and a hosts file that
        names every node, as a cluster's hosts resolve each other (libvirt looks its own name up when it
        migrates; once a libvirtd that had just failed that lookup wedged in a forked child)."""
        return "; ".join([*(f"mount --bind {self.dir / sub} {target}" for sub, target in MOUNTS.items()),
                          f"mount --bind {self.box.hosts} /etc/hosts"])

    def nsenter(self) -> list[str]:
        """A command prefix that runs inside this node (its network, mounts, host name and processes)."""
        return ["nsenter", "-t", str(self.init_pid), "--net", "--mount", "--uts", "--pid"]

    def _libvirt_answers(self) -> bool:
        try:
            libvirt.open(self.uri).close()
            return True
        except libvirt.libvirtError:
            return False

    # -- the node daemon ------------------------------------------------------------------

    def start_daemon(self) -> None:
        box = self.box
        cmd = [*self.nsenter(), f"--wd={REPO}",
               sys.executable, "-m", "pvccore.node.daemon", "--node", self.name, "--zookeeper", box.zk_hosts,
               "--root", ROOT, "--libvirt", "qemu:///system", "--migration-address", self.address,
               "--coordinator", "--floating-ip", f"{FLOATING_IP}/24@eth0", "--api-config", str(box.api_config),
               *DAEMON_FLAGS, *box.daemon_flags]
        log = open(self.daemon_log, "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **box.env}, start_new_session=True)
        log.close()
        box.reap.append(proc)

    def stop_daemon(self, timeout: float = 120.0) -> None:
        """A clean stop of the node daemon (SIGTERM, as systemctl stop sends), waited for; libvirt runs on."""
        def daemon() -> list[int]:
            found = []
            for pid in pidns_members(self.pidns):
                try:
                    if b"pvccore.node.daemon" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        found.append(pid)
                except OSError:
                    continue
            return found

        pids = daemon()
        assert pids, f"{self.name}: no node daemon running"
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while daemon():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the node daemon did not stop within {timeout:g}s")
            time.sleep(0.1)  # polling a process that is stopping, under a deadline

    def link(self, up: bool) -> None:
        """The node's network link: eth0, and eth1 (the guests' uplink) when the box has guests."""
        links = subprocess.run(["ip", "-n", self.ns, "-o", "link", "show"], capture_output=True, text=True).stdout
        for dev in ("eth0", "eth1"):
            if f" {dev}@" in links or f" {dev}:" in links:
                subprocess.run(["ip", "-n", self.ns, "link", "set", dev, "up" if up else "down"], check=True)

    # -- what libvirt says -------------------------------------------------------------------

    def running_domains(self, timeout: float = 60.0) -> set[str]:
        """Names of the domains whose vCPUs run on this node, from its own libvirt (none when it is off).

        A libvirtd that does not answer within ``timeout`` (one wedged by a forked child hung before exec)
        fails the test that asked, instead of hanging the whole tier.
        """
        answer: dict = {}

        def ask() -> None:
            try:
                answer["names"] = self._running_domains()
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                answer["error"] = exc

        asker = threading.Thread(target=ask, name=f"{self.name}-libvirt-query", daemon=True)
        asker.start()
        asker.join(timeout)
        if asker.is_alive():
            raise RuntimeError(f"{self.name}: libvirtd did not answer within {timeout:g}s (wedged?); see "
                               f"{self.dir / 'libvirtd.log'}")
        if "error" in answer:
            raise answer["error"]
        return answer["names"]

    def _running_domains(self) -> set[str]:
        if not self.powered() or not self.socket.exists():
            return set()
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError:
            return set()
        try:
            # Running vCPUs only: a live migration's incoming copy is active but paused until the
            # source has stopped, so "running on two nodes" never holds for a correct migration.
            return {d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING)}
        except libvirt.libvirtError:
            # It may be losing power while we ask: the power-off kills libvirtd a moment before the
            # node's init, so look again for a few seconds before taking the error for real.
            deadline = time.monotonic() + 5
            while self.powered() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not self.powered():  # it lost power while we asked: it runs nothing
                return set()
            raise
        finally:
            conn.close()


def kill_all(pidns: str, timeout: float = 15.0) -> None:
    survivors = kill_members(lambda: pidns_members(pidns), timeout)
    if survivors:
        raise RuntimeError(f"processes of {pidns} survive SIGKILL: {survivors}")


class ClusterBox:
    """``nodes`` real hypervisors, a ZooKeeper ensemble, BMCs, the API on a floating IP.

    ``with ClusterBox(workdir) as box: box.ops.define_vm(tiny_domain_xml("vm1"))``
    """

    node_class = BoxNode

    def __init__(self, workdir: str | None = None, nodes: int = 3, bmc: str = "dedicated",
                 settings: dict | None = None, daemon_flags: tuple[str, ...] = (), env: dict | None = None,
                 tag: str = "box", zk_sync_limit: int = 4):
        assert nodes >= 3, "the ZooKeeper ensemble takes one server on each of the first three nodes"
        assert bmc in ("dedicated", "shared")
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="pvc-box-"))
        self.serial = os.getpid() % 65536
        self.net = NetLab(nodes + 2, tag=tag)
        self.nodes = {f"hv{i}": self.node_class(self, i) for i in range(1, nodes + 1)}
        self.client, self.mgmt = nodes + 1, nodes + 2
        self.bmc_mode = bmc
        self.settings = settings or {}
        # ZooKeeper authentication on, as in production: daemons take the identity from their
        # environment, the API from its config file.
        self.zk_auth = ((env or {}).get(AUTH_ENV) or os.environ.get(AUTH_ENV)
                        or f"digest:pvc-box:{secrets.token_hex(12)}")
        self.daemon_flags, self.env = daemon_flags, {AUTH_ENV: self.zk_auth, **(env or {})}
        self.zk = [LocalZooKeeper(data_dir=str(self.dir / f"zk{i}"), host=f"198.18.0.{i}", port=2181,
                                  peers=tuple(f"198.18.0.{j}" for j in (1, 2, 3)), myid=i,
                                  wrap=self.net.exec(i), sync_limit=zk_sync_limit) for i in (1, 2, 3)]
        self.zk_hosts = ",".join(z.hosts for z in self.zk)
        self.api_config = self.dir / "api.toml"
        self.lockspace = self.dir / "shared" / "leases"  # the nodes' disk-lock space (see BoxNode.configure)
        self.hosts = self.dir / "hosts"  # every node's /etc/hosts
        self.api_url = f"http://{FLOATING_IP}:{API_PORT}"
        self.bmcs: dict[str, subprocess.Popen] = {}
        self.reap: list[subprocess.Popen] = []
        self.booted: list[str] = []  # the PID namespace of every node boot
        self.store: Store | None = None
        self.view: ClusterView | None = None
        self.ops: Operations | None = None

    # -- up and down ------------------------------------------------------------------------

    def up(self, timeout: float = 60.0) -> "ClusterBox":
        missing = missing_tools()
        if missing:
            raise RuntimeError(f"missing {', '.join(missing)}: run `make deps`")
        for target in MOUNTS.values():  # bind-mount targets must exist in the root namespace
            Path(target).mkdir(parents=True, exist_ok=True)
        try:
            self._up(timeout)
        except BaseException:
            self.down()
            raise
        return self

    def _up(self, timeout: float) -> None:
        self.net.up()
        self.add_bmc_addresses()
        for z in self.zk:
            z.start(wait=False)
        for z in self.zk:
            z.wait_serving(timeout)
        self.api_config.write_text(
            f'zookeeper_hosts = "{self.zk_hosts}"\nzookeeper_root = "{ROOT}"\nlisten = "{FLOATING_IP}:{API_PORT}"\n'
            f'workers = 2\napi_keys = ["{API_KEY}"]\nwait_timeout = 60.0\nlog_level = "warning"\n'
            f'zookeeper_auth = "{self.zk_auth}"\n')
        self.api_config.chmod(0o600)
        self.store = Store.connect(self.zk_hosts, ROOT, auth=self.zk_auth)
        if self.settings:
            self.store.update_config(lambda c: c.updated(self.settings))
        self.boot_nodes(timeout)
        self.view = Session.on(self.store).view
        self.ops = Operations(self.store, self.view, load_plugins())
        self.wait_running(self.nodes, timeout)
        for node in self.nodes.values():
            self.ops.set_fence_config(node.name, [self.ipmi(node.name)])
        self.wait_primary(timeout)

    def boot_nodes(self, timeout: float) -> None:
        """Every node configured, its BMC started, and powered on (its daemon started)."""
        self.lockspace.mkdir(parents=True, exist_ok=True)
        self.write_hosts()
        for node in self.nodes.values():
            node.configure()
        self.start_bmcs()
        for node in self.nodes.values():
            node.power_on(timeout)

    def add_bmc_addresses(self) -> None:
        mgmt = self.net.ns(self.mgmt)
        for node in self.nodes.values():
            where = mgmt if self.bmc_mode == "dedicated" else node.ns
            subprocess.run(["ip", "-n", where, "addr", "add", f"{node.bmc_address}/24", "dev", "eth0"], check=True)

    def write_hosts(self) -> None:
        self.hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{n.address} {n.name}\n" for n in self.nodes.values()))

    def start_bmcs(self) -> None:
        for node in self.nodes.values():
            where = self.net.exec(self.mgmt if self.bmc_mode == "dedicated" else node.index)
            with open(node.dir / "bmc.log", "ab") as log:
                self.bmcs[node.name] = subprocess.Popen(
                    [*where, sys.executable, str(BMCSIM), "--address", node.bmc_address, "--pidns-file",
                     str(node.dir / "pidns"), "--netns", node.ns], stdout=subprocess.DEVNULL, stderr=log,
                    start_new_session=True)

    def down(self) -> None:
        """Tear everything down; safe to call twice and after a failure half-way up."""
        if self.view is not None:
            self.view.stop()
        if self.store is not None:
            self.store.close()
        for pidns in self.booted:  # every node boot, also one that failed half-way
            try:
                kill_all(pidns)
            except RuntimeError as exc:
                print(f"box: {exc}", file=sys.stderr)
        for proc in [*self.bmcs.values(), *(z.proc for z in self.zk if z.proc)]:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for proc in self.reap:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.net.down()

    def __enter__(self) -> "ClusterBox":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # -- helpers ---------------------------------------------------------------------------------

    def ipmi(self, node: str) -> dict:
        return {"fencer": "ipmi", "params": {"host": self.nodes[node].bmc_address, "username": "admin",
                                             "password": "secret", "timeout": 5}}

    def bmc(self, node: str, *command: str) -> str:
        """ipmitool against a node's BMC, from the client host (as an operator's tooling would)."""
        res = subprocess.run([*self.net.exec(self.client), "ipmitool", "-I", "lanplus", "-C", "3", "-H",
                              self.nodes[node].bmc_address, "-U", "admin", "-P", "secret", *command],
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    def wait_running(self, nodes, timeout: float = 60.0) -> None:
        ok = self.view.wait_for(lambda c: all(n in c.nodes and c.nodes[n].daemon_state == "run" for n in nodes),
                                timeout)
        if not ok:
            raise RuntimeError(f"node daemons did not start: {self.logs()}")

    def wait_primary(self, timeout: float = 60.0) -> str:
        """Wait for a primary that serves (state ``primary``) and for the API on the floating IP."""
        ok = self.view.wait_for(lambda c: c.primary is not None and c.primary.node in c.nodes
                                and c.nodes[c.primary.node].coordinator_state == "primary", timeout)
        if not ok:
            raise RuntimeError(f"no primary coordinator: {self.logs()}")
        deadline = time.monotonic() + timeout
        while self.cli("cluster", "status", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API does not answer on {self.api_url}")
            time.sleep(0.1)  # gunicorn is starting on the new primary: poll, under a deadline
        return self.view.snapshot().primary.node

    def cli(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run ``pvc`` from the client host, through the API on the floating IP."""
        env = {**os.environ, "PVC_API_URL": self.api_url, "PVC_API_KEY": API_KEY}
        res = subprocess.run([*self.net.exec(self.client), str(Path(sys.executable).parent / "pvc"), *args],
                             capture_output=True, text=True, env=env, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"pvc {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def cli_json(self, *args: str):
        return json.loads(self.cli(*args, "-f", "json").stdout)

    def pinger(self, target: str = FLOATING_IP, interval: float = 0.025) -> Pinger:
        return Pinger(self.net, self.client, target, interval)

    def api_poller(self, route: str = "/api/v1/node", interval: float = 0.01) -> "ApiPoller":
        """From the client host, poll an authenticated API route on the floating IP (tests/tools/apipoll.py)."""
        return ApiPoller(self.net.exec(self.client), self.api_url + route, interval)

    def running(self) -> dict[str, set[str]]:
        """Every node's running domains, as its libvirt reports them."""
        return {name: node.running_domains() for name, node in self.nodes.items()}

    def violations(self) -> list[str]:
        """The invariants, checked against every node's libvirt: no VM on two nodes, none lost,
        every VM that should run runs, and where ZooKeeper says it does."""
        running = self.running()
        snap = self.view.snapshot()
        out = []
        where: dict[str, list[str]] = {}
        for node, names in running.items():
            for name in names:
                where.setdefault(name, []).append(node)
        for name, nodes in where.items():
            if len(nodes) > 1:
                out.append(f"VM {name} runs on {len(nodes)} nodes: {', '.join(sorted(nodes))}")
            if name not in snap.vms:
                out.append(f"VM {name} runs on {nodes[0]} but pvc does not know it")
        for name, vm in snap.vms.items():
            if vm.state == "start" and vm.migration is None:
                if name not in where:
                    out.append(f"VM {name} should run (on {vm.node}) but runs nowhere")
                elif where[name] != [vm.node]:
                    out.append(f"VM {name} should run on {vm.node} but runs on {', '.join(where[name])}")
        return out

    def settled(self, timeout: float = 60.0) -> list[str]:
        """Poll until the invariants hold (migrations and recoveries finish), or the deadline."""
        deadline = time.monotonic() + timeout
        while (found := self.violations()) and time.monotonic() < deadline:
            time.sleep(0.2)  # libvirt on other nodes has no watch we can share: poll, under a deadline
        return found

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.daemon_log.read_text(errors='replace')[-3000:]}"
                         for n in self.nodes.values() if n.daemon_log.exists())


class ApiPoller:
    """``apipoll.py`` in the client namespace until stopped; then its figures (polls, successes, gap_s)."""

    def __init__(self, where: list[str], url: str, interval: float):
        self.proc = subprocess.Popen([*where, sys.executable, str(APIPOLL), url, API_KEY, str(interval)],
                                     stdout=subprocess.PIPE, text=True)

    def stop(self) -> dict:
        self.proc.send_signal(2)
        out, _ = self.proc.communicate(timeout=10)
        return json.loads(out)


class DuplicateWatch:
    """Polls every node's libvirt in a thread while a fault plays out, and records any moment a VM
    runs on two nodes at once (the invariant that matters most, checked between the end states too).

    Nodes are read one after another, not at one instant: a live migration's switchover falling
    between the reads of its source and its target shows the VM on both. So a VM that node X ran at
    one read while node Y runs it at a later read is only a suspect; it is a duplicate if X still
    runs it at X's next read, after Y's. A correct migration never passes that test (the source
    is paused before the target resumes); a second copy does, for as long as it lasts.
    """

    def __init__(self, box: ClusterBox, interval: float = 0.1):
        import threading

        self.box, self.interval = box, interval
        self.seen: list[str] = []
        self.polls = 0
        self.error: Exception | None = None  # what stopped the watcher early, if anything did
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="duplicate-watch")

    def _run(self) -> None:
        try:
            self._watch()
        except Exception as exc:  # reported by __exit__: an unwatched fault proves nothing
            self.error = exc

    def _watch(self) -> None:
        last: dict[str, set[str]] = {}  # node -> the VMs running at its last read
        suspects: dict[tuple[str, str], str] = {}  # (VM, node X that ran it) -> node Y seen running it later
        while not self._stop.wait(self.interval):
            for node, box_node in self.box.nodes.items():
                names = box_node.running_domains()
                for (vm, x), y in list(suspects.items()):
                    if x == node:
                        del suspects[(vm, x)]
                        if vm in names:
                            self.seen.append(f"{time.strftime('%H:%M:%S')} VM {vm} ran on {x} and {y} at once")
                for vm in names:
                    for other, before in last.items():
                        if other != node and vm in before:
                            suspects[(vm, other)] = node
                last[node] = names
            self.polls += 1

    def __enter__(self) -> "DuplicateWatch":
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        if exc_type is None and (self.error is not None or not self.polls):
            raise AssertionError(f"the duplicate watcher did not watch throughout: {self.error!r}")

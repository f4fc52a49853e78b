"""A local cluster on one machine: ``pvcnoded`` processes on libvirt ``test:///`` hypervisors.

Each daemon gets its own in-memory hypervisor (a ``test:///<file>`` URI gives every
connection a private instance), described by a node XML with the memory and CPU
count asked for. Used by the service tests, the benchmarks and ``make demo``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from pvccore.demo.zookeeper import LocalZooKeeper
from pvccore.zk.auth import AUTH_ENV
from pvccore.zk.store import Store
from pvccore.zk.session import Session

NODE_XML = """<node>
  <cpu><mhz>2000</mhz><model>x86_64</model><active>{cpus}</active><nodes>1</nodes><sockets>1</sockets>
       <cores>{cpus}</cores><threads>1</threads></cpu>
  <memory>{memory_kib}</memory>
</node>
"""


def sample_domain_xml(name: str, memory_mib: int = 512, vcpus: int = 1, domain_type: str = "test") -> str:
    """A minimal domain for the test driver (for QEMU use ``domain_type='qemu'`` or ``'kvm'``)."""
    return (f"<domain type='{domain_type}'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory>"
            f"<vcpu>{vcpus}</vcpu><os><type>hvm</type></os></domain>")


class LocalCluster:
    """``nodes`` daemons against ZooKeeper ``hosts`` under ``root``."""

    def __init__(self, hosts: str, root: str, nodes: tuple[str, ...] = ("hv1", "hv2", "hv3"),
                 workdir: str | None = None, memory_mib: int = 16384, cpus: int = 8,
                 flags: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 node_flags: dict[str, tuple[str, ...]] | None = None, wrap: dict[str, list[str]] | None = None):
        self.hosts, self.root, self.nodes = hosts, root, nodes
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="pvc-cluster-"))
        self.memory_mib, self.cpus = memory_mib, cpus
        self.flags = flags or ("--keepalive-interval", "0.5", "--zookeeper-session-timeout", "3", "--shutdown-timeout", "5",
                                "--migration-timeout", "15")
        self.env = env or {}
        self.node_flags = node_flags or {}  # extra flags per node, e.g. ("--coordinator",)
        self.wrap = wrap or {}  # command prefix per node, e.g. ["ip", "netns", "exec", "n1"]
        self.procs: dict[str, subprocess.Popen] = {}
        self.hung: list[str] = []  # nodes that had to be killed because they did not stop

    def hypervisor_uri(self, node: str) -> str:
        xml = self.dir / f"{node}.xml"
        if not xml.exists():
            xml.write_text(NODE_XML.format(cpus=self.cpus, memory_kib=self.memory_mib * 1024))
        return f"test://{xml}"

    def start_node(self, node: str) -> subprocess.Popen:
        cmd = [*self.wrap.get(node, []), sys.executable, "-m", "pvccore.node.daemon", "--node", node,
               "--zookeeper", self.hosts, "--root", self.root, "--libvirt", self.hypervisor_uri(node), *self.flags,
               *self.node_flags.get(node, ())]
        log = open(self.dir / f"{node}.log", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **self.env}, start_new_session=True)
        log.close()
        self.procs[node] = proc
        return proc

    def start(self, timeout: float = 30.0) -> "LocalCluster":
        for node in self.nodes:
            self.start_node(node)
        self.wait_running(self.nodes, timeout)
        return self

    def wait_running(self, nodes, timeout: float = 30.0) -> None:
        """Block until each of ``nodes`` reports daemon state ``run`` with a fresh keepalive."""
        store = Store.connect(self.hosts, self.root, auth=self.env.get(AUTH_ENV))  # None: $PVC_ZOOKEEPER_AUTH
        view = Session.on(store).view
        try:
            ok = view.wait_for(lambda c: all(n in c.nodes and c.nodes[n].daemon_state == "run" for n in nodes)
                               or any(self.procs[n].poll() is not None for n in nodes), timeout)
            dead = [n for n in nodes if self.procs[n].poll() is not None]
            if dead or not ok:
                raise RuntimeError(f"node daemons did not start: {dead or nodes}; logs in {self.dir}")
        finally:
            view.stop()
            store.close()

    def signal(self, node: str, sig: int) -> None:
        self.procs[node].send_signal(sig)

    def kill(self, node: str) -> None:
        """Power loss: the daemon and its in-memory hypervisor (with its VMs) vanish at once."""
        proc = self.procs[node]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_node(self, node: str, timeout: float = 20.0) -> int:
        proc = self.procs[node]
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGUSR1)  # the daemon prints where each thread is stuck
                try:
                    proc.wait(1)
                except subprocess.TimeoutExpired:
                    pass
                self.hung.append(node)
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for node in list(self.procs):
            self.stop_node(node)

    def log(self, node: str) -> str:
        return (self.dir / f"{node}.log").read_text(errors="replace")

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def coordinator_lab(workdir: str, floating_ip: str = "198.18.0.100", coordinators: int = 2, hosts: int = 3,
                    env: dict[str, str] | None = None):
    """Coordinators in network namespaces carrying a floating IP, the last host free to ping it.

    Yields ``(lab, ops)``: the :class:`NetLab` and :class:`Operations` on the cluster.
    ZooKeeper listens on the bridge address, the primary runs the API on the floating IP.
    """
    from pvccore.demo.netlab import BRIDGE_IP, NetLab
    from pvccore.operations import Operations
    from pvccore.plugins import load_plugins

    work = Path(workdir)
    with NetLab(hosts) as net, LocalZooKeeper(host=BRIDGE_IP) as zk:
        api_cfg = work / "api.toml"
        api_cfg.write_text(f'zookeeper_hosts = "{zk.hosts}"\nzookeeper_root = "/lab"\nlisten = "{floating_ip}:7370"\n'
                           f'workers = 1\nauth = false\nlog_level = "warning"\n')
        nodes = tuple(f"hv{i}" for i in range(1, coordinators + 1))
        flags = {n: ("--coordinator", "--floating-ip", f"{floating_ip}/24@eth0", "--api-config", str(api_cfg))
                 for n in nodes}
        local = LocalCluster(zk.hosts, "/lab", nodes=nodes, workdir=str(work), env=env,
                             flags=("--keepalive-interval", "0.5", "--handover-timeout", "10"),
                             node_flags=flags, wrap={n: net.exec(i) for i, n in enumerate(nodes, start=1)})
        local.start()
        store = Store.connect(zk.hosts, "/lab")
        view = Session.on(store).view
        try:
            view.wait_for(lambda c: c.primary is not None and c.nodes[c.primary.node].coordinator_state == "primary",
                          30)
            yield net, Operations(store, view, load_plugins())
        finally:
            view.stop()
            local.stop()
            store.close()

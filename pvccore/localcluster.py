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
from pathlib import Path

from .store import Store
from .view import ClusterView

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
                 flags: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.hosts, self.root, self.nodes = hosts, root, nodes
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="pvc-cluster-"))
        self.memory_mib, self.cpus = memory_mib, cpus
        self.flags = flags or ("--keepalive-interval", "0.5", "--shutdown-timeout", "5", "--migration-timeout", "15")
        self.env = env or {}
        self.procs: dict[str, subprocess.Popen] = {}

    def hypervisor_uri(self, node: str) -> str:
        xml = self.dir / f"{node}.xml"
        if not xml.exists():
            xml.write_text(NODE_XML.format(cpus=self.cpus, memory_kib=self.memory_mib * 1024))
        return f"test://{xml}"

    def start_node(self, node: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "pvccore.daemon", "--node", node, "--zookeeper", self.hosts,
               "--root", self.root, "--libvirt", self.hypervisor_uri(node), *self.flags]
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
        store = Store.connect(self.hosts, self.root)
        view = ClusterView(store.client, store.paths).start()
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

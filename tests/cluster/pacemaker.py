"""A running peer in the cluster in a box: Pacemaker + corosync on the same hypervisors, BMCs and guests.

:class:`PacemakerBox` is a :class:`ClusterBox` whose nodes run corosync and pacemakerd instead of the pvc
node daemon (the two are never run at once, and there is no ZooKeeper). Everything else is the box's:
the node namespaces and their libvirtd and virtlockd, the BMCs answering IPMI, the guest network and the
NBD storage of :class:`GuestLab`. Guests are ``ocf:heartbeat:VirtualDomain`` resources whose ``config`` is
the very domain XML pvc is given, in the shared directory; nodes are fenced by ``fence_ipmilan`` on the
same BMCs pvc's ipmi fencer uses.

Each node runs its daemons inside its own network, mount, host-name and PID namespaces (as pvcnoded runs),
so a BMC power-off kills them with the node's QEMUs. A node also gets what a real host has per machine
and the box otherwise shares: a tmpfs on /run (corosync's pid lock, Pacemaker's and the agents' runtime
state) and on /dev/shm (libqb's IPC buffers, whose names would collide across nodes), and its own
/etc/corosync, /var/lib/corosync, /var/lib/pacemaker and /var/log/pacemaker. libqb's sockets are abstract
unix sockets, which belong to the network namespace, so every command line tool is run inside the node
(:meth:`PacemakerNode.run`).

The settings a careful operator would choose for fast failover, each different from Pacemaker's and
corosync's defaults for a reason (every other value is the default):

- corosync ``token: 1000`` and ``token_coefficient: 0`` (default 3000 + 650 per node past two) and
  ``consensus: 1200`` (1.2 x token): a lost node is noticed in ~2.3 s instead of ~8 s. 1000 ms was
  corosync 2's default, and the nodes share one lossless bridge here;
- ``wait_for_all: 1``: a cluster starting up is quorate only once it has seen every node, so it never
  fences a node that is merely slower to boot;
- ``stonith-action=off`` (default reboot): these BMCs, like pvc's fencer, power off and do not power on;
- ``fence_ipmilan`` ``power_wait=0`` (default 2 s of sleep after "off"): success still needs the BMC to
  report the power off (``method=onoff``);
- ``load-threshold=400%`` (default 80%): /proc/loadavg is the whole box's, and TCG guests keep it high,
  which would make Pacemaker run one action per node at a time; ``node-action-limit=4``: the same number
  of migrations at once as pvc's ``flush_parallel`` in the comparison;
- ``resource-stickiness=100`` (default 0) over a home location score of 50: a guest stays where it runs
  when a node comes back, as pvc does not move VMs back without being asked;
- VirtualDomain operations: ``monitor`` every 10 s (timeout 30 s), ``start`` 60 s, ``stop`` 30 s,
  ``migrate_to``/``migrate_from`` 60 s (pvc's box runs with ``--migration-timeout 30``), and
  ``allow-migrate=true`` so a move is a live migration.
"""

from __future__ import annotations

import subprocess
import time
import xml.etree.ElementTree as ET

from tests.cluster.harness import BoxNode, ClusterBox

COROSYNC_CONF = """totem {{
    version: 2
    cluster_name: pvcpeer
    transport: knet
    crypto_model: nss
    crypto_cipher: aes256
    crypto_hash: sha256
    token: 1000
    token_coefficient: 0
    consensus: 1200
    interface {{
        linknumber: 0
        knet_transport: udp
    }}
}}
nodelist {{
{nodes}
}}
quorum {{
    provider: corosync_votequorum
    wait_for_all: 1
}}
logging {{
    to_stderr: yes
    to_syslog: no
    to_logfile: no
    timestamp: hires
}}
"""

NODE_ENTRY = """    node {{
        name: {name}
        nodeid: {index}
        ring0_addr: {address}
    }}"""

# Directories a node has of its own: (its subdirectory, the path it is mounted on, owner:group, mode).
PEER_MOUNTS = (("corosync", "/etc/corosync", "root:root", "0755"),
               ("corosync-lib", "/var/lib/corosync", "root:root", "0755"),
               ("pcmk-lib", "/var/lib/pacemaker", "hacluster:haclient", "0750"),
               ("pcmk-log", "/var/log/pacemaker", "hacluster:haclient", "0770"))
PCMK_LIB_PARTS = ("cib", "pengine", "blackbox", "cores")  # under /var/lib/pacemaker, hacluster:haclient 0750

PROPERTIES = {"stonith-enabled": "true", "stonith-action": "off", "no-quorum-policy": "stop",
              "load-threshold": "400%", "node-action-limit": "4"}


class PacemakerNode(BoxNode):
    """A hypervisor running corosync and Pacemaker (see the module's docstring)."""

    def configure(self) -> None:
        super().configure()
        dirs = [(self.dir / sub, owner, mode) for sub, _, owner, mode in PEER_MOUNTS]
        dirs += [(self.dir / "pcmk-lib" / part, "hacluster:haclient", "0750") for part in PCMK_LIB_PARTS]
        for path, owner, mode in dirs:
            user, group = owner.split(":")
            subprocess.run(["install", "-d", "-o", user, "-g", group, "-m", mode, str(path)], check=True)
        (self.dir / "corosync" / "corosync.conf").write_text(self.box.corosync_conf)
        subprocess.run(["install", "-m", "0400", str(self.box.authkey), str(self.dir / "corosync" / "authkey")],
                       check=True)

    def boot_mounts(self) -> str:
        return ("mount -t tmpfs -o mode=0755,size=64m tmpfs /run && mkdir -p /run/libvirt /run/lock "
                "/run/resource-agents && install -d -o hacluster -g haclient /run/crm && "
                "mount -t tmpfs -o mode=1777,size=256m tmpfs /dev/shm; "
                + super().boot_mounts() + "; "
                + "; ".join(f"mount --bind {self.dir / sub} {target}" for sub, target, _, _ in PEER_MOUNTS))

    def start_daemon(self, timeout: float = 60.0) -> None:
        """corosync, and once its ring is up, pacemakerd (both in the node, as a unit file would run them)."""
        self._spawn("corosync", ["corosync", "-f"])
        deadline = time.monotonic() + timeout
        while self.run("corosync-cfgtool", "-s").returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: corosync did not start; see {self.dir / 'corosync.log'}")
            time.sleep(0.1)  # a daemon starting: polled under a deadline
        self._spawn("pacemaker", ["env", "PCMK_logfacility=none", "PCMK_logfile=/var/log/pacemaker/pacemaker.log",
                                  "pacemakerd"])

    def _spawn(self, what: str, cmd: list[str]) -> None:
        log = open(self.dir / f"{what}.log", "ab")
        proc = subprocess.Popen([*self.nsenter(), *cmd], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.box.reap.append(proc)

    def run(self, *cmd: str, check: bool = False, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """A command run inside this node (Pacemaker's and corosync's tools find their daemons only there)."""
        res = subprocess.run([*self.nsenter(), *cmd], capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
        return res


class PacemakerBox(ClusterBox):
    """The cluster in a box run by Pacemaker + corosync (3 nodes, dedicated BMCs)."""

    node_class = PacemakerNode

    def __init__(self, workdir: str | None = None, nodes: int = 3, tag: str = "peer"):
        super().__init__(workdir, nodes=nodes, tag=tag)
        self.authkey = self.dir / "authkey"
        self.corosync_conf = COROSYNC_CONF.format(nodes="\n".join(
            NODE_ENTRY.format(name=n.name, index=n.index, address=n.address) for n in self.nodes.values()))

    def _up(self, timeout: float) -> None:
        self.net.up()
        self.add_bmc_addresses()
        self.dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["corosync-keygen", "-k", str(self.authkey)], check=True, capture_output=True)
        self.boot_nodes(timeout)
        self.wait_online(self.nodes, timeout)
        for name, value in PROPERTIES.items():
            self.crm("crm_attribute", "--type", "crm_config", "--name", name, "--update", value)
        self.crm("crm_attribute", "--type", "rsc_defaults", "--name", "resource-stickiness", "--update", "100")
        for node in self.nodes.values():
            self.create("resources", primitive(f"fence-{node.name}", "stonith", "fence_ipmilan", None, {
                "ip": node.bmc_address, "username": "admin", "password": "secret", "lanplus": "1", "cipher": "3",
                "method": "onoff", "power_wait": "0", "power_timeout": "10", "pcmk_host_list": node.name,
                "pcmk_host_check": "static-list"}, {}, {"monitor": ("60s", "20s")}))
            self.create("constraints", f'<rsc_location id="fence-{node.name}-away" rsc="fence-{node.name}" '
                                       f'node="{node.name}" score="-INFINITY"/>')
        self.idle(timeout)

    # -- talking to the cluster ------------------------------------------------------------------

    def member(self) -> PacemakerNode:
        """A powered node that takes commands (a member of the quorate partition, when there is one)."""
        powered = [n for n in self.nodes.values() if n.powered()]
        for node in powered:
            if node.run("corosync-quorumtool", "-s").returncode == 0:  # 0: quorate
                return node
        if not powered:
            raise RuntimeError("no node is powered")
        return powered[0]

    def crm(self, *cmd: str, timeout: float = 120.0) -> str:
        return self.member().run(*cmd, check=True, timeout=timeout).stdout

    def create(self, section: str, xml: str) -> None:
        self.crm("cibadmin", "--create", "--scope", section, "--xml-text", xml)

    def status(self) -> ET.Element:
        return ET.fromstring(self.crm("crm_mon", "--one-shot", "--output-as=xml"))

    def wait_online(self, nodes, timeout: float = 120.0) -> None:
        """Until every node in ``nodes`` is an online member and the cluster has a DC."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = self.status()
                online = {n.get("name") for n in status.iter("node") if n.get("online") == "true"}
                dc = status.find("summary/current_dc")
                if set(nodes) <= online and dc is not None and dc.get("present") == "true":
                    return
            except (RuntimeError, ET.ParseError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Pacemaker nodes {sorted(nodes)} not online: {self.logs()}")
            time.sleep(0.2)  # membership forming: polled under a deadline

    def idle(self, timeout: float = 300.0) -> None:
        """Until Pacemaker has no action left to run (``crm_resource --wait``)."""
        self.crm("crm_resource", "--wait", f"--timeout={int(timeout)}s", timeout=timeout + 30)

    def dc(self) -> str:
        found = self.status().find("summary/current_dc")
        return found.get("name", "") if found is not None else ""

    def add_vm(self, name: str, xml: str, node: str) -> None:
        """A guest as a VirtualDomain resource whose home is ``node``, started."""
        config = self.dir / "shared" / f"{name}.xml"
        config.write_text(xml)
        self.create("resources", primitive(name, "ocf", "VirtualDomain", "heartbeat", {
            "config": str(config), "hypervisor": "qemu:///system", "migration_transport": "tcp",
            "autoset_utilization_cpu": "false", "autoset_utilization_hv_memory": "false",
            "autoset_utilization_host_memory": "false"}, {"allow-migrate": "true", "target-role": "Stopped"},
            {"monitor": ("10s", "30s"), "start": ("0", "60s"), "stop": ("0", "30s"), "migrate_to": ("0", "60s"),
             "migrate_from": ("0", "60s")}))
        self.create("constraints", f'<rsc_location id="{name}-home" rsc="{name}" node="{node}" score="50"/>')
        self.target_role(name, "Started")

    def target_role(self, name: str, role: str) -> None:
        self.crm("crm_resource", "--resource", name, "--meta", "--set-parameter", "target-role",
                 "--parameter-value", role)

    def move(self, name: str, node: str) -> None:
        self.crm("crm_resource", "--resource", name, "--move", "--node", node)

    def clear(self, name: str) -> None:
        self.crm("crm_resource", "--resource", name, "--clear")

    def standby(self, node: str, on: bool) -> None:
        self.crm("crm_attribute", "--node", node, "--name", "standby", "--update", "on" if on else "off")

    def logs(self) -> str:
        out = []
        for node in self.nodes.values():
            for what, path in (("corosync", node.dir / "corosync.log"),
                               ("pacemaker", node.dir / "pcmk-log" / "pacemaker.log")):
                if path.exists():
                    out.append(f"--- {node.name} {what}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)


def primitive(rid: str, klass: str, kind: str, provider: str | None, params: dict, meta: dict, ops: dict) -> str:
    """A CIB ``<primitive>``; ``ops`` maps an operation to its (interval, timeout)."""
    root = ET.Element("primitive", {"id": rid, "class": klass, "type": kind, **({"provider": provider} if provider else {})})
    attrs = ET.SubElement(root, "instance_attributes", id=f"{rid}-params")
    for key, value in params.items():
        ET.SubElement(attrs, "nvpair", id=f"{rid}-params-{key}", name=key, value=value)
    if meta:
        metas = ET.SubElement(root, "meta_attributes", id=f"{rid}-meta")
        for key, value in meta.items():
            ET.SubElement(metas, "nvpair", id=f"{rid}-meta-{key}", name=key, value=value)
    operations = ET.SubElement(root, "operations")
    for op, (interval, timeout) in ops.items():
        ET.SubElement(operations, "op", id=f"{rid}-{op}-{interval}", name=op, interval=interval, timeout=timeout)
    return ET.tostring(root, encoding="unicode")

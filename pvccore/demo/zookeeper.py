"""Run a ZooKeeper server from Debian's ``zookeeper`` package: standalone, or one of an ensemble.

For tests, benchmarks and the local demo cluster (standalone on loopback), and for
the cluster-in-a-box tier (an ensemble, one server per node namespace); production
clusters run a ZooKeeper ensemble of their own (see the operator docs).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ZK_JARS = ("/usr/share/java/zookeeper.jar", "/usr/share/zookeeper/lib/zookeeper.jar")
MAIN_CLASS = "org.apache.zookeeper.server.ZooKeeperServerMain"
QUORUM_MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def four_letter(host: str, port: int, word: str, timeout: float = 1.0) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(word.encode())
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


class LocalZooKeeper:
    """One ZooKeeper server process; ``with LocalZooKeeper() as zk: zk.hosts``.

    For an ensemble, give every server the same ``peers`` (one address each, all on
    ``port``), its own ``myid`` (1-based index into ``peers``) and ``host`` =
    ``peers[myid - 1]``; ``wrap`` is a command prefix (e.g. ``ip netns exec NS``).
    """

    def __init__(self, data_dir: str | None = None, port: int | None = None, host: str = "127.0.0.1",
                 peers: tuple[str, ...] = (), myid: int = 0, wrap: list[str] | None = None, sync_limit: int = 4):
        self.host = host
        self.port = port or free_port(host)
        self._own_dir = data_dir is None
        self.dir = Path(data_dir or tempfile.mkdtemp(prefix="pvc-zk-"))
        self.peers, self.myid, self.wrap = peers, myid, wrap or []
        # An ensemble's followers give up on a silent leader after syncLimit ticks (2 s by default), and
        # every client waits that long plus an election when the leader's host is lost.
        self.sync_limit = sync_limit
        self.proc: subprocess.Popen | None = None

    @property
    def hosts(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0, wait: bool = True) -> "LocalZooKeeper":
        """Start the server; with ``wait``, return once it serves (an ensemble needs a quorum for that)."""
        jar = next((j for j in ZK_JARS if os.path.exists(j)), None)
        java = shutil.which("java")
        if jar is None or java is None:
            raise RuntimeError("ZooKeeper not installed: run `make deps` (Debian package zookeeper)")
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        cfg = self.dir / "zoo.cfg"
        cfg.write_text(
            "tickTime=500\n"
            f"dataDir={self.dir / 'data'}\n"
            f"clientPort={self.port}\n"
            f"clientPortAddress={self.host}\n"
            "minSessionTimeout=1000\n"
            "maxSessionTimeout=60000\n"
            "maxClientCnxns=0\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=ruok,srvr,mntr\n"
        )
        main = MAIN_CLASS
        if self.peers:
            main = QUORUM_MAIN_CLASS
            (self.dir / "data" / "myid").write_text(f"{self.myid}\n")
            with cfg.open("a") as fh:
                fh.write(f"initLimit=10\nsyncLimit={self.sync_limit}\n")
                for i, peer in enumerate(self.peers, start=1):
                    fh.write(f"server.{i}={peer}:2888:3888\n")
        log = open(self.dir / "zookeeper.log", "ab")
        self.proc = subprocess.Popen(
            # A quorum peer that cannot be reached (its link is down) costs an election this long, per try.
            [*self.wrap, java, "-Xmx512m", "-Dzookeeper.cnxTimeout=500", "-cp", jar, main, str(cfg)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_serving(timeout)
        return self

    def mode(self) -> str:
        """``standalone``, ``leader`` or ``follower`` while serving; empty when not (yet, or any more)."""
        try:
            for line in four_letter(self.host, self.port, "srvr").decode(errors="replace").splitlines():
                if line.startswith("Mode:"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return ""

    def wait_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ZooKeeper exited with {self.proc.returncode}; see {self.dir}/zookeeper.log")
            if self.mode():
                return
            time.sleep(0.05)  # polling a server that is starting, under a deadline
        self.stop()
        raise RuntimeError(f"ZooKeeper did not serve on {self.hosts} within {timeout:g}s")

    def kill(self) -> None:
        """Crash the server (SIGKILL); ``start()`` brings it back with its data."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "LocalZooKeeper":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

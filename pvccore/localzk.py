"""Run a standalone ZooKeeper server on loopback from Debian's ``zookeeper`` package.

For tests, benchmarks and the local demo cluster; production clusters run a
ZooKeeper ensemble of their own (see the operator docs).
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
    """One ZooKeeper server process; ``with LocalZooKeeper() as zk: zk.hosts``."""

    def __init__(self, data_dir: str | None = None, port: int | None = None, host: str = "127.0.0.1"):
        self.host = host
        self.port = port or free_port(host)
        self._own_dir = data_dir is None
        self.dir = Path(data_dir or tempfile.mkdtemp(prefix="pvc-zk-"))
        self.proc: subprocess.Popen | None = None

    @property
    def hosts(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "LocalZooKeeper":
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
        log = open(self.dir / "zookeeper.log", "wb")
        self.proc = subprocess.Popen(
            [java, "-Xmx512m", "-cp", jar, MAIN_CLASS, str(cfg)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ZooKeeper exited with {self.proc.returncode}; see {self.dir}/zookeeper.log")
            try:
                if four_letter(self.host, self.port, "ruok") == b"imok":
                    return self
            except OSError:
                pass
            time.sleep(0.05)  # polling a server that is starting, under a deadline
        self.stop()
        raise RuntimeError(f"ZooKeeper did not answer on {self.hosts} within {timeout:g}s")

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

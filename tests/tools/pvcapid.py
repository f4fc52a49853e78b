"""Start a pvcapid (gunicorn) of a test's or a benchmark's own, on loopback, with key ``k`` unless told otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from pvccli.client import ApiError, Client
from pvccore.demo.zookeeper import free_port


def start_pvcapid(hosts: str, root: str, work: Path, name: str = "api", key: str = "k", **settings):
    """pvcapid with ``settings`` (more keys of its TOML file; ``workers`` 1 unless given), once its health
    answers: ``(process, port, client)``. Its log is ``work/<name>.log``; stopping it is the caller's."""
    port = free_port()
    settings = {"workers": 1, **settings}
    cfg = Path(work) / f"{name}.toml"
    cfg.write_text(f'zookeeper_hosts = "{hosts}"\nzookeeper_root = "{root}"\nlisten = "127.0.0.1:{port}"\n'
                   f'api_keys = ["{key}"]\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    log = Path(work) / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "pvcapid"), "-c", str(cfg)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    client = Client(f"http://127.0.0.1:{port}", key, timeout=5)
    deadline = time.monotonic() + 30
    while True:  # gunicorn starting in another process: poll its health under a deadline
        try:
            client.health()
            return proc, port, client
        except ApiError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pvcapid {name} did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.1)

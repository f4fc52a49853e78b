"""API figures under gunicorn on loopback: GET /vm with 10,000 VMs, and GET /vm/<vm> requests per second;
health latency while clients stall or wait; 5xx answers to the hostile suite.

Targets: <= 200 ms for the listing, >= 1,000 requests/s for one VM, p99 of GET /api/v1 <= 100 ms
while 64 connections stall mid-body and 16 clients hold wait=true requests, 0 server errors (5xx)
over a compact list of hostile requests (:data:`HOSTILE`; tests/service/test_hostile.py has the
full suite, with the answers expected). The VMs are written straight into a real ZooKeeper
(defining 10,000 through the API would measure definition, not listing). Load comes from wrk
(Debian package).

    .venv/bin/python bench/api.py            (or: make bench)
"""

import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))

from common import emit, pvcapid, table  # noqa: E402

from pvccli.client import Client  # noqa: E402
from pvccore.demo.zookeeper import LocalZooKeeper  # noqa: E402
from pvccore.domain.models import VM, Node, VMMeta  # noqa: E402
from pvccore.zk.store import Store  # noqa: E402

VMS = 10_000
NODES = 50
KEY = "bench-key"


def populate(store: Store) -> None:
    pending = []
    for i in range(NODES):
        node = Node(name=f"hv{i:02d}", daemon_state="run", memory_total_mib=262144, memory_free_mib=100000,
                    running_vms=tuple(f"vm{j:05d}" for j in range(i, VMS, NODES)))
        pending.append(store.client.create_async(store.paths.node(node.name), node.to_json()))
    for j in range(VMS):
        vm = VM(name=f"vm{j:05d}", uuid=str(uuid.uuid4()), memory_mib=1024, vcpus=2, state="start",
                node=f"hv{j % NODES:02d}", meta=VMMeta(node_limit=(f"hv{j % NODES:02d}",), node_selector="mem"))
        pending.append(store.client.create_async(store.paths.vm(vm.name), vm.to_json()))
        pending.append(store.client.create_async(store.paths.vm_xml(vm.name), b"<domain/>"))
        if len(pending) > 3000:
            for p in pending:
                p.get()
            pending.clear()
    for p in pending:
        p.get()


STALLED, WAITING, HEALTH_PROBES = 64, 16, 300
TARGET = "vm09999"  # the VM the hostile requests aim at (the waiting clients use vm00000 on)
DOMAIN = "<domain type='test'><name>evil</name><memory unit='MiB'>{}</memory><vcpu>1</vcpu></domain>"

#: (what, method, path, body): a careless or hostile client's requests; none may get a 5xx
HOSTILE = [
    ("bad JSON", "POST", "/vm", b'{"xml": '),
    ("JSON nested 5,000 deep", "POST", f"/vm/{TARGET}", b'{"node_limit": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("JSON nested 1,000 deep", "POST", f"/vm/{TARGET}/state", b"[" * 1000 + b"]" * 1000),
    ("5,000-digit number", "POST", f"/vm/{TARGET}", b'{"node_autostart": ' + b"9" * 5000 + b"}"),
    ("number beyond a float", "POST", "/cluster/status", b'{"keepalive_limit": 1e400}'),
    ("huge number", "POST", "/cluster/status", b'{"fence_grace": 1e308}'),
    ("NaN", "POST", "/cluster/status", b'{"keepalive_limit": NaN}'),
    ("-Infinity", "POST", "/cluster/status", b'{"fence_grace": -Infinity}'),
    ("2 MB body", "POST", "/vm", b'{"xml": "' + b"x" * (2 * 1024 * 1024) + b'"}'),
    ("regex-ish name filter", "GET", "/vm?limit=(a%2B)%2B%24", None),
    ("regex-ish name filter, long", "GET", "/vm?limit=" + "a" * 5000 + "!", None),
    ("newline in a VM name", "GET", "/vm/web%0a1", None),
    ("newline in a VM name, write", "POST", "/vm/web%0a1/state", b'{"state": "start"}'),
    ("NUL in a node name", "POST", "/node/hv%00/domain-state", b'{"state": "flush"}'),
    ("dots for a name", "GET", "/vm/..%2f..%2fetc", None),
    ("unknown field", "POST", f"/vm/{TARGET}/state", b'{"state": "start", "bogus": 1}'),
    ("unknown settings", "POST", "/cluster/status", b'{"bogus": 1}'),
    ("wrong types", "POST", f"/vm/{TARGET}/node", b'{"action": ["migrate"], "target": 5, "wait": "yes"}'),
    ("JSON null", "POST", f"/vm/{TARGET}/meta", b"null"),
    ("JSON array", "POST", "/vm", b"[]"),
    ("empty body", "POST", "/vm", b""),
    ("empty body, state", "POST", f"/vm/{TARGET}/state", b""),
    ("empty fence config", "POST", "/node/hv00/fence-config", b""),
    ("not UTF-8", "POST", f"/vm/{TARGET}", b'{"node_selector": "\xff\xfe"}'),
    ("bad XML", "POST", "/vm", json.dumps({"xml": "<domain><name>x</name"}).encode()),
    ("superscript memory", "POST", "/vm", json.dumps({"xml": DOMAIN.format("²")}).encode()),
    ("Arabic-Indic memory", "POST", "/vm", json.dumps({"xml": DOMAIN.format("٣٢")}).encode()),
    ("memory beyond every node", "POST", "/vm", json.dumps({"xml": DOMAIN.format(10 ** 30)}).encode()),
    ("XML entity expansion", "POST", "/vm", json.dumps(
        {"xml": '<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
                '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>' + DOMAIN.format("&c;")}).encode()),
    ("XML too large", "POST", "/vm", json.dumps({"xml": DOMAIN.format(1) + " " * 600_000}).encode()),
    ("unknown state", "POST", f"/vm/{TARGET}/state", b'{"state": "explode"}'),
    ("unknown domain state", "POST", "/node/hv00/domain-state", b'{"state": "explode"}'),
    ("move to nowhere", "POST", f"/vm/{TARGET}/node", b'{"action": "move", "target": "nowhere"}'),
    ("no such VM", "DELETE", "/vm/nosuch", None),
]


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 30) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request(method, "/api/v1" + path, body=body, headers={"X-Api-Key": KEY, "Content-Type": "application/json"})
    status = conn.getresponse().status
    conn.close()
    return status


def hostile_5xx(port: int) -> tuple[int, list[str]]:
    """The number of 5xx answers to :data:`HOSTILE` (a connection cut off counts as one), and which."""
    failed = []
    for what, method, path, body in HOSTILE:
        try:
            status = request(port, method, path, body)
        except (OSError, http.client.HTTPException) as exc:
            status, what = 599, f"{what} ({type(exc).__name__})"
        if status >= 500:
            failed.append(f"{what}: {status}")
    return len(failed), failed


def health_p99_under_stall(port: int) -> tuple[float, int]:
    """p99 seconds of GET /api/v1 while STALLED connections stall mid-body and WAITING clients wait,
    and how many of the waiting clients were still waiting once the probes ended."""
    stalled = []
    for _ in range(STALLED):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /api/v1/vm HTTP/1.1\r\nHost: x\r\nX-Api-Key: " + KEY.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"xml\": \"")
        stalled.append(s)

    def wait(vm: str) -> None:  # nothing runs these VMs' nodes: each waits its whole wait_timeout
        try:
            request(port, "POST", f"/vm/{vm}/state", json.dumps({"state": "stop", "wait": True}).encode(), 120)
        except OSError:  # http.client's errors included: the API stops before these waits end
            pass

    waiters = [threading.Thread(target=wait, args=(f"vm{i:05d}",), daemon=True) for i in range(WAITING)]
    for t in waiters:
        t.start()
    time.sleep(1.0)  # the measurement window starts once every staller and waiter has reached the server
    times = []
    for _ in range(HEALTH_PROBES):
        t0 = time.perf_counter()
        request(port, "GET", "")
        times.append(time.perf_counter() - t0)
    still_waiting = sum(t.is_alive() for t in waiters)
    for s in stalled:
        s.close()
    return sorted(times)[int(len(times) * 0.99) - 1], still_waiting


def main() -> None:
    with LocalZooKeeper() as zk:
        store = Store.connect(zk.hosts, "/bench-api")
        populate(store)
        try:
            with pvcapid(zk.hosts, "/bench-api", zk.dir, KEY, VMS) as (api, port, client):
                measure(port, client)
        finally:
            store.close()
    table("API under gunicorn (2 workers) on loopback")


def measure(port: int, client: Client) -> None:
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        assert len(client.vms()) == VMS
        times.append(time.perf_counter() - t0)
    emit("api_list_10000_ms", statistics.median(times) * 1000, "ms", "GET /vm, 10,000 VMs, median of 10")
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk not installed: make bench installs it (Debian package wrk)")
    out = subprocess.run([wrk, "-t2", "-c8", "-d5s", "-H", f"X-Api-Key: {KEY}",
                          f"http://127.0.0.1:{port}/api/v1/vm/vm04242"], capture_output=True, text=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    emit("api_get_per_s", rate, "req/s", "GET /vm/<vm>, wrk 2 threads 8 connections 5 s"
         + (f", {errors.group(1)} non-2xx" if errors else ""))
    errors, which = hostile_5xx(port)
    emit("api_5xx_hostile", errors, "answers", f"5xx answers to {len(HOSTILE)} hostile requests"
         + (f": {'; '.join(which)}" if which else ""))
    p99, waiting = health_p99_under_stall(port)
    emit("api_health_ms_p99_under_stall", p99 * 1000, "ms",
         f"GET /api/v1, {HEALTH_PROBES} probes, while {STALLED} connections stall mid-body and "
         f"{WAITING} clients hold wait=true requests ({waiting} still waiting at the end)")


if __name__ == "__main__":
    main()

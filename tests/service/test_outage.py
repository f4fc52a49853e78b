"""ZooKeeper away: every route of the API answers within a second, reads from the view marked stale,
writes refused with 503 and nothing changed; once it is back, writes work again.

Three ways to lose it: a server gone silent (a frozen TCP proxy: kazoo notices only after two
thirds of its session timeout), the same with every route as the first request after the silence
(nothing learnt from an earlier timeout), and a server stopped and started again (its own
LocalZooKeeper), against the app and against a real pvcapid under gunicorn.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from falcon import testing

from pvcapi.app import build_deps, create_app
from pvcapi.config import ApiConfig
from pvccore.demo.cluster import sample_domain_xml
from pvccore.demo.zookeeper import LocalZooKeeper, free_port
from pvccore.domain.models import VM
from pvccore.zk.store import Store, delete_tree
from tests.conftest import make_node
from tests.tools.sse import Stream
from tests.tools.tcpproxy import TcpProxy

H = {"X-Api-Key": "k"}
P = "/api/v1"
FENCE = [{"fencer": "ipmi", "params": {"host": "10.0.0.1", "username": "admin", "password": "pw-1"}}]
READS = ("", "/cluster/status", "/node", "/node/hv1", "/node/hv1/fence-config", "/vm", "/vm/web1",
         "/vm/web1/meta", "/vm/web1/placement", "/metrics", "/selectors", "/plugins", "/openapi.json",
         "/cluster/faults", "/node/hv1/log", "/node/hv1/what-if-fail", "/vm/web1/log", "/vm/web1/tags")
NOT_KEPT = ("/cluster/faults", "/node/hv1/log", "/vm/web1/log")  # only ZooKeeper holds these: a clear 503 at once
WRITES = (("POST", "/vm", {"xml": sample_domain_xml("web2", 256, 1)}),  # first: it takes the placement lock
          ("POST", "/cluster/status", {"fence_grace": 3.0}),
          ("POST", "/vm/web1/state", {"state": "stop"}),
          ("POST", "/vm/web1", {"node_autostart": True}),
          ("POST", "/vm/web1/meta", {"node_autostart": True}),
          ("PUT", "/vm/web1", {"xml": sample_domain_xml("web1", 768, 1)}),
          ("POST", "/vm/web1/node", {"action": "migrate"}),
          ("POST", "/node/hv1/domain-state", {"state": "flush"}),
          ("POST", "/node/hv1/fence-config", {"entries": []}),
          ("POST", "/node/hv1/coordinator-state", {"state": "primary"}),
          ("POST", "/node/hv1/confirm-off", {"node": "hv1"}),
          ("DELETE", "/vm/web1", None))


def seed_cluster(hosts: str, root: str) -> Store:
    """Two nodes, one VM, a fence configuration: what the routes above read and write."""
    seed = Store.connect(hosts, root)
    for name in ("hv1", "hv2"):
        seed.create_node(make_node(name))
    seed.create_vm(VM("web1", "u-1", 512, 1, node="hv1"), sample_domain_xml("web1", 512, 1))
    seed.set_fence_config("hv1", FENCE)
    return seed


def picture(seed: Store) -> tuple:
    """What no refused write may change."""
    return (seed.get_config(), seed.vm_names(), seed.get_vm("web1"), seed.get_vm_xml("web1"), seed.list_nodes(),
            seed.get_fence_config("hv1"), seed.get_handover())


@contextmanager
def api_on(hosts: str, root: str, session: float = 4.0):
    """The app on its own ZooKeeper client, every read made once (so the view holds the XML and fence config)."""
    deps = build_deps(ApiConfig(zookeeper_hosts=hosts, zookeeper_root=root, api_keys=("k",),
                                zookeeper_session_timeout=session))
    client = testing.TestClient(create_app(deps))
    for path in READS[1:]:
        assert client.simulate_get(P + path, headers=H).status_code == 200, path
    try:
        yield deps, client
    finally:
        deps.ops.view.stop()
        deps.ops.store.close()


@pytest.fixture
def outage(zk_server):
    root = f"/pvc-outage/{uuid.uuid4().hex[:8]}"
    seed = seed_cluster(zk_server.hosts, root)
    proxy = TcpProxy("127.0.0.1", zk_server.port)
    try:
        yield proxy, seed
    finally:
        proxy.thaw()
        proxy.close()
        delete_tree(seed.client, root)
        seed.close()


def timed(client, method, path, body=None, headers=H):
    """One request and its duration; one that hangs fails the test (after 10 s) instead of hanging it."""
    answer = []
    t0 = time.monotonic()
    worker = threading.Thread(target=lambda: answer.append(client.simulate_request(method, P + path, headers=headers,
                                                                                  json=body)), daemon=True)
    worker.start()
    worker.join(10)
    assert answer, f"{method} {path} still waiting after 10 s"
    return answer[0], time.monotonic() - t0


def every_route_answers_quickly(client) -> list:
    slow, answers = [], []
    for method, path, body in [("GET", path, None) for path in READS] + list(WRITES):
        resp, took = timed(client, method, path, body)
        answers.append((method, path, resp))
        if took >= 1.0:
            slow.append((method, path, round(took, 2)))
    assert not slow, slow
    return answers


def assert_stale_answers(answers) -> None:
    """Reads from the view, writes refused at once; every answer marked stale, every error in the one shape."""
    for method, path, resp in answers:
        assert float(resp.headers["X-PVC-Stale"]) >= 0, (method, path)
        if method == "GET":
            assert resp.status_code == (503 if path in ("", *NOT_KEPT) else 200), (path, resp.status_code, resp.text)
            if path in NOT_KEPT:
                assert "read from it, not kept here" in resp.json["message"], (path, resp.text)
        else:
            assert resp.status_code == 503 and "nothing was changed" in resp.json["message"], (path, resp.text)
            assert resp.json["field"] is None and set(resp.json) == {"message", "field"}


def wait_health(client, status: int, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while client.simulate_get(P).status_code != status:
        assert time.monotonic() < deadline, what
        time.sleep(0.1)  # polling another thread's connection state, under a deadline


def test_silent_zookeeper_then_lost_every_route_answers_within_a_second(outage):
    proxy, seed = outage
    with api_on(proxy.hosts, seed.paths.root) as (deps, client):
        before = picture(seed)
        proxy.freeze()  # no reset, no answer: kazoo notices only after its read timeout
        for method, path, resp in every_route_answers_quickly(client):
            assert resp.status_code < 500 or resp.status_code == 503, (method, path, resp.status_code, resp.text)
            if method != "GET":
                assert resp.status_code in (409, 503), (path, resp.status_code, resp.text)
        # Once kazoo has noticed: reads from the view carry the stale marker, writes are refused at once.
        wait_health(client, 503, "the API never noticed ZooKeeper was gone")
        assert_stale_answers(every_route_answers_quickly(client))
        status = client.simulate_get(P + "/cluster/status", headers=H).json
        assert status["stale"] is True and status["problems"][0].startswith("ZooKeeper unreachable")
        assert client.simulate_get(P + "/vm/web1", headers=H).json["xml"].startswith("<domain")
        fence = client.simulate_get(P + "/node/hv1/fence-config", headers=H).json["entries"]
        assert fence == [{"fencer": "ipmi", "params": {"host": "10.0.0.1", "username": "admin", "password": "***"}}]

        proxy.thaw()
        wait_health(client, 200, "the API never got ZooKeeper back")
        assert picture(seed) == before  # nothing changed
        resp = client.simulate_post(P + "/vm/web1", headers=H, json={"node_autostart": True})
        assert resp.status_code == 200, resp.text
        assert "X-PVC-Stale" not in resp.headers
        assert seed.get_vm("web1").meta.node_autostart is True


def test_every_route_as_the_first_request_after_zookeeper_went_silent(outage):
    """No earlier request has timed out and kazoo has not noticed yet (a long session timeout): each route
    meets the silence itself, and still answers within a second (a define once waited in kazoo's lock
    recipe for the whole outage)."""
    proxy, seed = outage
    with api_on(proxy.hosts, seed.paths.root, session=30.0) as (deps, _):
        before = picture(seed)
        proxy.freeze()
        slow = []
        for method, path, body in list(WRITES) + [("GET", path, None) for path in READS]:
            client = testing.TestClient(create_app(deps))  # its guards have seen no timeout
            resp, took = timed(client, method, path, body)
            if took >= 1.0:
                slow.append((method, path, round(took, 2)))
            assert resp.status_code != 500, (method, path, resp.text)
            if method != "GET":  # refused: by ZooKeeper's silence, or by what the view already shows
                assert resp.status_code == 503 or 400 <= resp.status_code < 500, (path, resp.status_code)
            elif path:
                assert resp.status_code == (503 if path in NOT_KEPT else 200), (path, resp.status_code, resp.text)
        assert not slow, slow
        proxy.thaw()
        assert picture(seed) == before


# -- a ZooKeeper server stopped and started again ------------------------------------------


@pytest.fixture
def own_zk(tmp_path):
    """A ZooKeeper server of this test's own, to stop and start again (same data, same port)."""
    server = LocalZooKeeper(data_dir=str(tmp_path / "zk")).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def pvcapid(hosts: str, root: str, work: Path):
    """A real pvcapid (gunicorn, one worker) on ``hosts``; yields a raw HTTP requester."""
    port = free_port()
    cfg = work / "api.toml"
    cfg.write_text(f'zookeeper_hosts = "{hosts}"\nzookeeper_root = "{root}"\nlisten = "127.0.0.1:{port}"\n'
                   'workers = 1\napi_keys = ["k"]\nzookeeper_session_timeout = 4.0\n')
    log = open(work / "api.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "pvcapid"), "-c", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)

    def request(method: str, path: str, body: dict | None = None, key: bool = True):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        t0 = time.monotonic()
        conn.request(method, P + path, body=None if body is None else json.dumps(body),
                     headers={**(H if key else {}), "Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = json.loads(resp.read() or b"null") if resp.getheader("Content-Type", "").startswith(
            "application/json") else None
        conn.close()
        return resp.status, answer, resp.getheader("X-PVC-Stale"), time.monotonic() - t0

    request.netloc = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # gunicorn starts in another process: poll its health, under a deadline
            try:
                if request("GET", "")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (work / "api.log").read_text()
            time.sleep(0.1)
        yield request
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_stopped_zookeeper_app_and_gunicorn_answer_within_a_second(own_zk, tmp_path):
    root = "/pvc-stopped"
    seed = seed_cluster(own_zk.hosts, root)
    with api_on(own_zk.hosts, root) as (deps, client), pvcapid(own_zk.hosts, root, tmp_path) as api:
        for path in ("/vm/web1", "/node/hv1/fence-config"):  # the worker's view holds these too
            assert api("GET", path)[0] == 200
        before = picture(seed)
        following = Stream(api.netloc, "k")  # the dashboard's feed, open across the outage
        assert following.next()[0] == "snapshot"
        own_zk.stop()
        wait_health(client, 503, "the app never noticed ZooKeeper was gone")
        assert_stale_answers(every_route_answers_quickly(client))
        resp = client.simulate_get(P + "/vm/nope", headers=H)  # errors are marked too
        assert resp.status_code == 404 and "X-PVC-Stale" in resp.headers
        resp = client.simulate_get(P + "/vm")  # no key
        assert resp.status_code == 401 and "X-PVC-Stale" in resp.headers

        deadline = time.monotonic() + 10
        while api("GET", "")[0] != 503:
            assert time.monotonic() < deadline, "pvcapid never noticed ZooKeeper was gone"
            time.sleep(0.1)
        slow = []
        for method, path, body in [("GET", path, None) for path in READS] + list(WRITES):
            status, answer, stale, took = api(method, path, body)
            if took >= 1.0:
                slow.append((method, path, round(took, 2)))
            assert stale is not None, (method, path)
            if method == "GET":
                assert status == (503 if path in ("", *NOT_KEPT) else 200), (path, status, answer)
            else:
                assert status == 503 and "nothing was changed" in answer["message"], (path, status, answer)
                assert answer["field"] is None
        assert not slow, slow
        status, answer, _, _ = api("GET", "/cluster/status")
        assert answer["stale"] is True and answer["vms"]["total"] == 1
        # The event stream: the open one says the status went stale; one opened now starts at once from the
        # last known state.
        following.until(lambda d: d.get("status") and d["status"]["stale"], time.monotonic() + 10)
        t0 = time.monotonic()
        fresh = Stream(api.netloc, "k")
        kind, snap = fresh.next()
        took = time.monotonic() - t0
        fresh.close()
        assert kind == "snapshot" and snap["status"]["stale"] is True and [v["name"] for v in snap["vms"]] == ["web1"]
        assert took < 1.0, f"the event stream took {took:.2f}s to start while ZooKeeper was away"

        own_zk.start()
        wait_health(client, 200, "the app never got ZooKeeper back")
        deadline = time.monotonic() + 30
        while api("GET", "")[0] != 200:
            assert time.monotonic() < deadline, "pvcapid never got ZooKeeper back"
            time.sleep(0.1)
        assert picture(seed) == before  # nothing changed meanwhile
        resp = client.simulate_post(P + "/vm/web1", headers=H, json={"node_autostart": True})
        assert resp.status_code == 200 and "X-PVC-Stale" not in resp.headers, resp.text
        status, answer, stale, _ = api("POST", "/vm/web1/meta", {"migration_method": "shutdown"})
        assert status == 200 and stale is None, answer
        vm = seed.get_vm("web1")
        assert (vm.meta.node_autostart, vm.meta.migration_method) == (True, "shutdown")
        # The stream open across the outage goes on: the status no longer stale, and the changes since then.
        seen = set()

        def back(d) -> bool:  # (both may come in one event)
            if d.get("status") and d["status"]["stale"] is False:
                seen.add("status")
            if any(v["name"] == "web1" and v["meta"]["migration_method"] == "shutdown" for v in d["vms"]):
                seen.add("web1")
            return seen == {"status", "web1"}

        following.until(back, time.monotonic() + 20)
        following.close()
    seed.close()


def test_a_worker_started_while_zookeeper_is_away_answers_503_and_serves_once_it_is_back(own_zk, tmp_path):
    """gunicorn's master stops every worker when one fails to boot: a worker restarted during an outage (here:
    killed, and started again by the master) must not fail its boot, but answer 503 until ZooKeeper is back."""
    from pvccli.client import ApiError
    from tests.tools.pvcapid import start_pvcapid

    root = "/pvc-reboot"
    seed_cluster(own_zk.hosts, root).close()
    proc, port, client = start_pvcapid(own_zk.hosts, root, tmp_path, workers=2, zookeeper_session_timeout=2.0)
    log = tmp_path / "api.log"
    try:
        own_zk.stop()
        workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "answering 503, trying again" not in log.read_text():  # the new worker booted, without ZooKeeper
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)  # another process's log, polled under a deadline
        answers = set()
        for _ in range(20):  # both workers, the new one and the old one, answer at once
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", P + "/vm", headers=H)
            answers.add(conn.getresponse().status)
            conn.close()
        assert answers <= {200, 503} and 503 in answers and proc.poll() is None
        own_zk.start()
        deadline = time.monotonic() + 60
        while "reached ZooKeeper" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        def serves() -> bool:
            try:
                return [v["name"] for v in client.vms()] == ["web1"]
            except ApiError:  # 503 from a worker still reconnecting
                return False

        deadline = time.monotonic() + 30
        while not all(serves() for _ in range(10)):  # every worker serves (10 in a row, across both)
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)  # the workers reconnecting, polled under a deadline
    finally:
        proc.terminate()
        proc.wait(20)

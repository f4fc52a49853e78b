"""ZooKeeper away: every route of the API answers within a second, reads from the view marked stale,
writes refused with 503 and nothing changed; once it is back, writes work again."""

from __future__ import annotations

import time
import uuid

import pytest
from falcon import testing

from pvcapi.app import build_deps, create_app
from pvcapi.config import ApiConfig
from pvccore.localcluster import sample_domain_xml
from pvccore.models import VM
from pvccore.store import Store, delete_tree
from tests.conftest import make_node
from tests.tools.tcpproxy import TcpProxy

H = {"X-Api-Key": "k"}
P = "/api/v1"
READS = ("", "/cluster/status", "/node", "/node/hv1", "/vm", "/vm/web1", "/vm/web1/meta", "/vm/web1/placement",
         "/metrics", "/selectors", "/plugins")
WRITES = (("POST", "/cluster/status", {"fence_grace": 3.0}),
          ("POST", "/vm/web1/state", {"state": "stop"}),
          ("POST", "/vm/web1", {"node_autostart": True}),
          ("POST", "/node/hv1/domain-state", {"state": "flush"}),
          ("POST", "/vm", {"xml": sample_domain_xml("web2", 256, 1)}),
          ("DELETE", "/vm/web1", None))


@pytest.fixture
def outage(zk_server):
    root = f"/pvc-outage/{uuid.uuid4().hex[:8]}"
    seed = Store.connect(zk_server.hosts, root)
    for name in ("hv1", "hv2"):
        seed.create_node(make_node(name))
    seed.create_vm(VM("web1", "u-1", 512, 1, node="hv1"), sample_domain_xml("web1", 512, 1))
    proxy = TcpProxy("127.0.0.1", zk_server.port)
    deps = build_deps(ApiConfig(zookeeper_hosts=proxy.hosts, zookeeper_root=root, api_keys=("k",),
                                zookeeper_session_timeout=4.0))
    client = testing.TestClient(create_app(deps))
    assert client.simulate_get(P + "/vm/web1", headers=H).status_code == 200  # warm: XML cached by the view
    yield client, proxy, seed
    proxy.thaw()
    deps.ops.view.stop()
    deps.ops.store.close()
    proxy.close()
    delete_tree(seed.client, root)
    seed.close()


def timed(client, method, path, body=None):
    t0 = time.monotonic()
    resp = client.simulate_request(method, P + path, headers=H, json=body)
    return resp, time.monotonic() - t0


def every_route_answers_quickly(client) -> list:
    slow, answers = [], []
    for path in READS:
        resp, took = timed(client, "GET", path)
        answers.append(("GET", path, resp))
        if took >= 1.0:
            slow.append((path, round(took, 2)))
    for method, path, body in WRITES:
        resp, took = timed(client, method, path, body)
        answers.append((method, path, resp))
        if took >= 1.0:
            slow.append((path, round(took, 2)))
    assert not slow, slow
    return answers


def test_silent_zookeeper_then_lost_every_route_answers_within_a_second(outage):
    client, proxy, seed = outage
    before = (seed.get_config(), seed.get_vm("web1"), seed.get_node("hv1"))
    proxy.freeze()  # no reset, no answer: kazoo notices only after its read timeout
    for method, path, resp in every_route_answers_quickly(client):
        assert resp.status_code < 500 or resp.status_code == 503, (method, path, resp.status_code, resp.text)
        assert resp.status_code != 500
        if method != "GET":
            assert resp.status_code == 503, (path, resp.status_code, resp.text)
    # Once kazoo has noticed: reads from the view carry the stale marker, writes are refused at once.
    deadline = time.monotonic() + 10
    while client.simulate_get(P).status_code != 503:
        assert time.monotonic() < deadline, "the API never noticed ZooKeeper was gone"
        time.sleep(0.1)
    for method, path, resp in every_route_answers_quickly(client):
        if method == "GET":
            assert resp.status_code == (503 if path == "" else 200), (path, resp.status_code, resp.text)
            assert float(resp.headers["X-PVC-Stale"]) >= 0, path
        else:
            assert resp.status_code == 503 and "nothing was changed" in resp.json["message"], (path, resp.text)
            assert set(resp.json) == {"message", "field"}
    status = client.simulate_get(P + "/cluster/status", headers=H).json
    assert status["stale"] is True and status["problems"][0].startswith("ZooKeeper unreachable")
    assert client.simulate_get(P + "/vm/web1", headers=H).json["xml"].startswith("<domain")
    assert (seed.get_config(), seed.get_vm("web1"), seed.get_node("hv1")) == before  # nothing changed

    proxy.thaw()
    deadline = time.monotonic() + 30
    while client.simulate_get(P).status_code != 200:
        assert time.monotonic() < deadline, "the API never got ZooKeeper back"
        time.sleep(0.1)
    resp = client.simulate_post(P + "/vm/web1", headers=H, json={"node_autostart": True})
    assert resp.status_code == 200, resp.text
    assert "X-PVC-Stale" not in resp.headers
    assert seed.get_vm("web1").meta.node_autostart is True

"""Every route through Falcon's TestClient, against a real ZooKeeper and three real node daemons."""

import falcon.inspect
import falcon.testing
import pytest

from pvcapi.app import Deps, create_app
from pvcapi.openapi import document
from pvccore.demo.cluster import sample_domain_xml as domain

KEY = "k-123"
H = {"X-Api-Key": KEY}
P = "/api/v1"


@pytest.fixture
def api(cluster):
    client = falcon.testing.TestClient(create_app(Deps(ops=cluster, api_keys=(KEY,), wait_timeout=20)))
    client.ops = cluster
    return client


def error_shape(resp, status: int, field=None, contains: str = ""):
    assert resp.status_code == status, resp.json
    assert set(resp.json) == {"message", "field"}
    assert resp.json["field"] == field
    assert contains in resp.json["message"]


def test_health_needs_no_key_everything_else_does(api):
    r = api.simulate_get(P)
    assert r.status_code == 200 and r.json["name"] == "pvc" and r.json["zookeeper"] == "connected"
    for path in ("/vm", "/node", "/cluster/status", "/metrics", "/openapi.json", "/selectors", "/plugins"):
        error_shape(api.simulate_get(P + path), 401, contains="X-Api-Key")
        error_shape(api.simulate_get(P + path, headers={"X-Api-Key": "wrong"}), 401)
    error_shape(api.simulate_post(P + "/vm", json={}), 401)


def test_openapi_lists_exactly_the_routes(api):
    served = {(r.path, m.method.lower()) for r in falcon.inspect.inspect_routes(api.app)
              for m in r.methods if m.internal is False}
    doc = api.simulate_get(P + "/openapi.json", headers=H).json
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented
    assert doc == document(doc["info"]["version"], ("fence-agent", "ipmi"))


def test_cluster_status_and_settings(api):
    s = api.simulate_get(P + "/cluster/status", headers=H).json
    assert s["nodes"]["total"] == 3 and s["nodes"]["daemon_state"] == {"run": 3} and s["healthy"]
    r = api.simulate_post(P + "/cluster/status", headers=H, json={"default_selector": "vms"})
    assert r.status_code == 200 and r.json["config"]["default_selector"] == "vms"
    assert api.ops.view.wait_for(lambda c: c.config.default_selector == "vms", 10)
    error_shape(api.simulate_post(P + "/cluster/status", headers=H, json={"default_selector": "nosuch"}), 400,
                "node_selector", "known selectors")
    error_shape(api.simulate_post(P + "/cluster/status", headers=H, json={"colour": 1}), 400, "colour")
    assert api.ops.store.get_config().default_selector == "vms"


def test_bad_bodies_get_one_error_shape(api):
    error_shape(api.simulate_post(P + "/vm", headers={**H, "Content-Type": "application/json"}, body="{nope"), 400)
    error_shape(api.simulate_post(P + "/vm", headers=H, json=[1, 2]), 400, None, "JSON object")
    error_shape(api.simulate_post(P + "/vm", headers=H, json={"xml": 5}), 400, "xml", "must be a string")
    error_shape(api.simulate_post(P + "/vm", headers=H, json={}), 400, "xml", "required")
    error_shape(api.simulate_post(P + "/vm", headers=H, json={"xml": "<domain/>", "extra": 1}), 400, "extra")
    error_shape(api.simulate_get(P + "/nowhere", headers=H), 404)
    assert api.ops.store.vm_names() == []


def test_nodes(api):
    rows = api.simulate_get(P + "/node", headers=H).json
    assert [n["name"] for n in rows] == ["hv1", "hv2", "hv3"]
    one = api.simulate_get(P + "/node/hv2", headers=H).json
    assert one["name"] == "hv2" and one["vms"] == [] and one["memory_total_mib"] == 16384
    error_shape(api.simulate_get(P + "/node/hv9", headers=H), 404, None, "not found")
    error_shape(api.simulate_get(P + "/node/bad%20name", headers=H), 400, "node")
    error_shape(api.simulate_post(P + "/node/hv1/domain-state", headers=H, json={"state": "melt"}), 400, "state")


def test_define_list_info_meta_xml(api):
    r = api.simulate_post(P + "/vm", headers=H, json={
        "xml": domain("web1", 1024, 2), "node_limit": ["hv2", "hv3"], "node_selector": "vcpus",
        "node_autostart": True, "migration_method": "shutdown"})
    assert r.status_code == 201 and r.json["vm"]["node"] == "hv2"
    api.simulate_post(P + "/vm", headers=H, json={"xml": domain("db1"), "target": "hv1", "start": False})
    assert api.ops.wait_vm("web1", lambda v: api.ops.view.node("hv2") and "web1" in api.ops.view.node("hv2")
                           .running_vms, 20)

    listed = api.simulate_get(P + "/vm", headers=H).json
    assert [v["name"] for v in listed] == ["db1", "web1"]
    assert [v["name"] for v in api.simulate_get(P + "/vm", headers=H, params={"node": "hv1"}).json] == ["db1"]
    assert [v["name"] for v in api.simulate_get(P + "/vm", headers=H, params={"state": "start"}).json] == ["web1"]
    assert [v["name"] for v in api.simulate_get(P + "/vm", headers=H, params={"limit": "w*"}).json] == ["web1"]
    assert [v["name"] for v in api.simulate_get(P + "/vm", headers=H, params={"limit": "eb"}).json] == ["web1"]
    assert api.simulate_get(P + "/vm", headers=H, params={"limit": "(a+)+$"}).json == []  # a substring, not a regex
    error_shape(api.simulate_get(P + "/vm", headers=H, params={"limit": "w" * 129}), 400, "limit")

    info = api.simulate_get(P + "/vm/web1", headers=H).json
    assert info["meta"] == {"node_limit": ["hv2", "hv3"], "node_selector": "vcpus", "node_autostart": True,
                            "migration_method": "shutdown", "migration_max_downtime": 0, "tags": [], "protected_tags": []}
    assert info["running"] is True and "<name>web1</name>" in info["xml"]

    r = api.simulate_post(P + "/vm/web1", headers=H, json={"node_limit": ["hv1", "hv2"], "node_autostart": False})
    assert r.status_code == 200 and r.json["vm"]["meta"]["node_limit"] == ["hv1", "hv2"]
    r = api.simulate_post(P + "/vm/web1/meta", headers=H, json={"node_selector": "mem"})
    assert api.simulate_get(P + "/vm/web1/meta", headers=H).json["node_selector"] == "mem"
    error_shape(api.simulate_post(P + "/vm/web1", headers=H, json={"node_selector": "nosuch"}), 400, "node_selector")
    error_shape(api.simulate_post(P + "/vm/web1", headers=H, json={"node_limit": ["hv7"]}), 400, "node_limit")
    error_shape(api.simulate_post(P + "/vm/web1", headers=H, json={}), 400, None, "at least one")
    assert api.ops.store.get_vm("web1").meta.node_selector == "mem"

    assert "<memory unit=\"MiB\">512</memory>" in api.simulate_get(P + "/vm/db1", headers=H).json["xml"] or \
        "512" in api.simulate_get(P + "/vm/db1", headers=H).json["xml"]  # cached by the view now
    r = api.simulate_put(P + "/vm/db1", headers=H, json={"xml": domain("db1", 2048, 4)})
    assert r.status_code == 200 and (r.json["vm"]["memory_mib"], r.json["vm"]["vcpus"]) == (2048, 4)
    assert "2048" in api.simulate_get(P + "/vm/db1", headers=H).json["xml"]  # not the cached old XML
    error_shape(api.simulate_put(P + "/vm/db1", headers=H, json={"xml": domain("other")}), 400, "xml")
    error_shape(api.simulate_get(P + "/vm/none", headers=H), 404)


def test_state_changes_wait_for_the_daemons(api):
    api.simulate_post(P + "/vm", headers=H, json={"xml": domain("app"), "target": "hv1"})
    r = api.simulate_post(P + "/vm/app/state", headers=H, json={"state": "shutdown", "wait": True})
    assert r.status_code == 200 and r.json["vm"]["state"] == "stop" and r.json["vm"]["running"] is False
    r = api.simulate_post(P + "/vm/app/state", headers=H, json={"state": "start", "wait": True})
    assert r.status_code == 200 and r.json["vm"]["running"] is True
    r = api.simulate_post(P + "/vm/app/state", headers=H, json={"state": "restart"})
    assert r.status_code == 202 and "restart requested" in r.json["message"]
    error_shape(api.simulate_post(P + "/vm/app/state", headers=H, json={"state": "explode"}), 400, "state")
    error_shape(api.simulate_post(P + "/vm/app/state", headers=H, json={"state": "start", "wait": "yes"}), 400,
                "wait")


def test_migrations_and_placement(api):
    api.simulate_post(P + "/vm", headers=H, json={"xml": domain("mv"), "target": "hv1", "node_limit": ["hv1", "hv2"]})
    p = api.simulate_get(P + "/vm/mv/placement", headers=H).json
    assert p["target"] == "hv2" and {"node": "hv3", "excluded": "outside the VM's node limit"} in p["nodes"]
    r = api.simulate_post(P + "/vm/mv/node", headers=H, json={"action": "migrate", "wait": True})
    assert r.status_code == 200 and (r.json["vm"]["node"], r.json["vm"]["last_node"]) == ("hv2", "hv1")
    r = api.simulate_post(P + "/vm/mv/node", headers=H, json={"action": "unmigrate", "wait": True})
    assert r.status_code == 200 and r.json["vm"]["node"] == "hv1"
    error_shape(api.simulate_post(P + "/vm/mv/node", headers=H, json={"action": "move", "target": "hv3"}), 400,
                "target", "outside the VM's node limit")
    error_shape(api.simulate_post(P + "/vm/mv/node", headers=H, json={"action": "unmigrate"}), 409, "action")
    r = api.simulate_post(P + "/vm/mv/node", headers=H, json={"action": "move", "target": "hv2", "wait": True})
    assert r.status_code == 200 and (r.json["vm"]["node"], r.json["vm"]["last_node"]) == ("hv2", "")


def test_flush_and_ready_with_wait(api):
    api.simulate_post(P + "/vm", headers=H, json={"xml": domain("f1"), "target": "hv3"})
    r = api.simulate_post(P + "/node/hv3/domain-state", headers=H, json={"state": "flush", "wait": True})
    assert r.status_code == 200 and r.json["node"]["domain_state"] == "flushed"
    assert api.ops.store.get_vm("f1").node in ("hv1", "hv2")
    r = api.simulate_post(P + "/node/hv3/domain-state", headers=H, json={"state": "ready", "wait": True})
    assert r.status_code == 200 and r.json["node"]["domain_state"] == "ready"
    assert api.ops.wait_settled("f1", 20) and api.ops.store.get_vm("f1").node == "hv3"


def test_undefine_refused_while_running_unless_forced(api):
    api.simulate_post(P + "/vm", headers=H, json={"xml": domain("gone"), "target": "hv2"})
    error_shape(api.simulate_delete(P + "/vm/gone", headers=H), 409, "state", "running")
    error_shape(api.simulate_delete(P + "/vm/gone", headers=H, params={"force": "maybe"}), 400, "force")
    assert api.simulate_delete(P + "/vm/gone", headers=H, params={"force": "true"}).status_code == 200
    assert api.ops.store.vm_names() == []


def test_selectors_plugins_metrics(api):
    sel = {s["name"]: s for s in api.simulate_get(P + "/selectors", headers=H).json}
    assert {"mem", "load", "vcpus", "vms", "memprov"} <= set(sel) and sel["mem"]["plugin"] == "mem"
    plugins = {p["name"]: p for p in api.simulate_get(P + "/plugins", headers=H).json}
    assert plugins["vcpus"]["distribution"] == "pvc" and plugins["vcpus"]["kinds"] == ["selector"]
    api.simulate_post(P + "/vm", headers=H, json={"xml": domain("m1"), "target": "hv1"})
    api.simulate_post(P + "/vm/m1/node", headers=H, json={"action": "migrate", "target": "hv2", "wait": True})
    text = api.simulate_get(P + "/metrics", headers=H).text
    assert 'pvc_nodes{state="run"} 3' in text
    assert 'pvc_vms{state="start"} 1' in text
    assert "pvc_migrations_total 1" in text
    assert "# TYPE pvc_fences_total counter" in text


def test_coordinator_state_hands_the_primary_over(api):
    assert api.ops.view.wait_for(lambda c: c.primary is not None and
                                 c.nodes[c.primary.node].coordinator_state == "primary", 20)
    old = api.ops.view.snapshot().primary.node
    new = next(n for n in ("hv1", "hv2", "hv3") if n != old)
    r = api.simulate_post(P + f"/node/{new}/coordinator-state", headers=H, json={"state": "primary", "wait": True})
    assert r.status_code == 200 and r.json["handover"]["phase"] == "done", r.json
    assert api.simulate_get(P + "/cluster/status", headers=H).json["primary"] == new
    error_shape(api.simulate_post(P + f"/node/{new}/coordinator-state", headers=H, json={"state": "primary"}), 409,
                "state", "already primary")
    error_shape(api.simulate_post(P + f"/node/{old}/coordinator-state", headers=H, json={"state": "secondary"}), 409,
                "state", "not primary")
    error_shape(api.simulate_post(P + "/node/hv9/coordinator-state", headers=H, json={"state": "primary"}), 404)
    r = api.simulate_post(P + f"/node/{new}/coordinator-state", headers=H, json={"state": "secondary", "wait": True})
    assert r.status_code == 200 and api.ops.view.snapshot().primary.node != new


def test_fence_config_is_validated_and_never_shows_secrets(api):
    entries = [{"fencer": "ipmi", "params": {"host": "10.0.0.1", "username": "admin", "password": "s3cret"}},
               {"fencer": "fence-agent", "params": {"agent": "fence_ipmilan", "ip": "10.0.0.1", "passwd": "x"}}]
    r = api.simulate_post(P + "/node/hv1/fence-config", headers=H, json={"entries": entries})
    assert r.status_code == 200 and "s3cret" not in r.text and r.json["entries"][0]["params"]["password"] == "***"
    got = api.simulate_get(P + "/node/hv1/fence-config", headers=H)
    assert got.json["entries"][1]["params"] == {"agent": "fence_ipmilan", "ip": "10.0.0.1", "passwd": "***"}
    assert "s3cret" not in got.text
    assert api.ops.store.get_fence_config("hv1")[0]["params"]["password"] == "s3cret"  # stored as given
    error_shape(api.simulate_post(P + "/node/hv1/fence-config", headers=H,
                                  json={"entries": [{"fencer": "nosuch", "params": {}}]}), 400, "entries",
                "known fencers: fence-agent, ipmi")
    error_shape(api.simulate_post(P + "/node/hv1/fence-config", headers=H,
                                  json={"entries": [{"fencer": "ipmi", "params": {"host": "a\nb"}}]}), 400, "entries")
    error_shape(api.simulate_post(P + "/node/hv9/fence-config", headers=H, json={"entries": []}), 404)
    assert api.ops.store.get_fence_config("hv1")[1]["fencer"] == "fence-agent"  # unchanged by the refusals


def test_every_credential_is_masked_by_what_its_fencer_declares(api):
    entries = [{"fencer": "ipmi", "params": {"host": "10.0.0.1", "password": "p1", "kg": "k1"}},
               {"fencer": "fence-agent", "params": {"agent": "fence_ipmilan", "ip": "10.0.0.2", "login": "root",
                                                    "hexadecimal_kg": "k2", "kg": "k3", "pw": "p2", "pwd": "p3",
                                                    "credential": "c1", "snmp_priv_passwd": "p4"}}]
    shown = api.simulate_post(P + "/node/hv1/fence-config", headers=H, json={"entries": entries})
    assert shown.status_code == 200
    for secret in ("p1", "k1", "k2", "k3", "p2", "p3", "c1", "p4"):
        assert secret not in shown.text and secret not in api.simulate_get(P + "/node/hv1/fence-config",
                                                                           headers=H).text
    assert shown.json["entries"][1]["params"]["login"] == "root"  # declared public: shown

    # Read back, edited (a new host), posted again: the masked secrets keep their stored values.
    edited = shown.json["entries"]
    edited[0]["params"]["host"] = "10.0.0.9"
    r = api.simulate_post(P + "/node/hv1/fence-config", headers=H, json={"entries": edited})
    assert r.status_code == 200, r.text
    stored = api.ops.store.get_fence_config("hv1")
    assert stored[0]["params"] == {"host": "10.0.0.9", "password": "p1", "kg": "k1"}
    assert stored[1]["params"]["pwd"] == "p3" and stored[1]["params"]["credential"] == "c1"

    # A mask with nothing stored to keep (another fencer in that place now) destroys nothing: 400.
    swapped = [{"fencer": "fence-agent", "params": {"agent": "fence_apc", "password": "***"}}]
    error_shape(api.simulate_post(P + "/node/hv1/fence-config", headers=H, json={"entries": swapped}), 400,
                "entries", "no value is stored for it to keep")
    assert api.ops.store.get_fence_config("hv1") == stored
    status = api.simulate_get(P + "/cluster/status", headers=H).json
    assert status["fencing"] == {} and status["healthy"]


def test_confirm_off_only_for_a_dead_node_named_twice(api):
    error_shape(api.simulate_post(P + "/node/hv1/confirm-off", headers=H, json={"node": "hv2"}), 400, "node",
                "repeat the node's name")
    error_shape(api.simulate_post(P + "/node/hv1/confirm-off", headers=H, json={"node": "hv1"}), 409, "node",
                "node hv1 is run, not dead")
    error_shape(api.simulate_post(P + "/node/hv9/confirm-off", headers=H, json={"node": "hv9"}), 404)
    assert api.ops.store.get_fencing().get("hv1") is None


@pytest.mark.parametrize("bad", [-1, 60001, 10 ** 18, 2.5, True, "300", None, [300], {"ms": 300}])
def test_migration_max_downtime_refuses_what_is_not_whole_milliseconds_and_changes_nothing(api, bad):
    api.simulate_post(P + "/vm", headers=H, json={"xml": domain("dt1"), "target": "hv1", "start": False,
                                                   "migration_max_downtime": 300})
    before = api.ops.store.get_vm("dt1")
    error_shape(api.simulate_post(P + "/vm/dt1", headers=H, json={"migration_max_downtime": bad}), 400,
                "migration_max_downtime", "must be an integer from 0 to 60000")
    error_shape(api.simulate_post(P + "/vm", headers=H, json={"xml": domain("dt2"), "migration_max_downtime": bad}),
                400, "migration_max_downtime")
    assert api.ops.store.get_vm("dt1") == before and "dt2" not in api.ops.store.vm_names()


def test_migration_max_downtime_nan_infinity_and_huge_numbers_are_refused_as_json(api):
    for text in ('{"migration_max_downtime": NaN}', '{"migration_max_downtime": Infinity}',
                 '{"migration_max_downtime": ' + "9" * 400 + "}"):
        resp = api.simulate_post(P + "/vm/web1", headers={**H, "Content-Type": "application/json"}, body=text)
        error_shape(resp, 400)
    assert api.simulate_post(P + "/vm", headers=H, json={"xml": domain("dt3"), "start": False,
                                                        "migration_max_downtime": 0}).status_code == 201


def test_careless_and_hostile_tag_and_fault_requests_change_nothing(api):
    api.simulate_post(P + "/vm", headers=H, json={"xml": domain("t1"), "target": "hv1", "start": False,
                                                  "protected_tags": ["prod"]})
    before = api.ops.store.get_vm("t1").meta
    for bad, field in (({"add": "web"}, "add"), ({"add": [1]}, "tags"), ({"add": ["a b"]}, "tags"),
                       ({"add": ["x" * 65]}, "tags"), ({"remove": ["prod"]}, "protected"),
                       ({"remove": ["nosuch"]}, None), ({"protected": "yes", "add": ["a"]}, "protected"),
                       ({"add": [], "remove": []}, "tags"), ({"tags": ["a"]}, "tags"),
                       ({"add": [["nested"]]}, "tags"), ({"add": [f"t{i}" for i in range(65)]}, "tags"),
                       ({"add": ["ok"] * 100000}, "tags")):
        r = api.simulate_post(P + "/vm/t1/tags", headers=H, json=bad)
        assert 400 <= r.status_code < 500 and r.json["message"], (bad, r.status_code)
        if field:
            assert r.json.get("field") == field, (bad, r.json)
    assert api.simulate_post(P + "/vm/nosuch/tags", headers=H, json={"add": ["a"]}).status_code == 404
    r = api.simulate_post(P + "/vm/t1", headers=H, json={"protected_tags": []})
    assert r.status_code == 400 and "protected" in r.json["message"]
    assert api.ops.store.get_vm("t1").meta == before  # nothing changed
    for fault, status in (("..", 400), ("node-dead.hv9", 404), ("x" * 300, 400), ("node-dead.a%2Fb", 404)):
        r = api.simulate_post(P + f"/cluster/faults/{fault}", headers=H, json={"acknowledged": True})
        assert r.status_code == status, (fault, r.status_code, r.json)
        assert api.simulate_delete(P + f"/cluster/faults/{fault}", headers=H).status_code == status
    for lines in ("\u00b2", "0", "10001", "-1", "1" * 5000, "1.5", " 3"):
        r = api.simulate_get(P + "/node/hv1/log", headers=H, params={"lines": lines})
        assert r.status_code == 400 and r.json["field"] == "lines", (lines, r.status_code)
    r = api.simulate_post(P + "/cluster/faults/node-dead.hv9", headers=H, json={"acknowledged": "yes"})
    assert r.status_code == 400 and r.json["field"] == "acknowledged"
    assert api.simulate_get(P + "/cluster/faults", headers=H).json == []

"""Models: JSON round trips, state checks, metadata parsing with field-named errors."""

import pytest

from pvccore.errors import ValidationError
from pvccore.domain.models import VM, ClusterConfig, Node, Timing, VMMeta, decode_keepalive, encode_keepalive
from pvccore.zk.schema import Schema


def test_vm_round_trip_keeps_metadata():
    vm = VM(name="db1", uuid="1234", memory_mib=2048, vcpus=2, state="start", node="hv1",
            meta=VMMeta(node_limit=("hv1", "hv2"), node_selector="vcpus", node_autostart=True, migration_method="live"))
    assert VM.from_json(vm.to_json()) == vm


def test_node_round_trip():
    node = Node(name="hv1", daemon_state="run", coordinator_state="primary", running_vms=("a", "b"), load_1m=0.5)
    assert Node.from_json(node.to_json()) == node


def test_unknown_stored_keys_are_ignored_but_bad_states_are_not():
    assert Node.from_json(b'{"name": "hv1", "from_the_future": 1}').name == "hv1"
    with pytest.raises(ValidationError, match="daemon_state must be one of"):
        Node.from_json(b'{"name": "hv1", "daemon_state": "sleepy"}')
    with pytest.raises(ValidationError, match="not valid JSON"):
        VM.from_json(b"{nope")
    with pytest.raises(ValidationError, match="expected a JSON object"):
        VM.from_json(b"[1]")
    with pytest.raises(ValidationError, match="VMMeta: expected an object"):
        VM.from_json(b'{"name": "a", "uuid": "u", "memory_mib": 1, "vcpus": 1, "meta": [1]}')
    with pytest.raises(ValidationError, match="VM: .*missing"):
        VM.from_json(b'{"name": "a"}')


@pytest.mark.parametrize("changes, field, message", [
    ({"node_limit": "hv1,bad/name"}, "node_limit", "invalid node name"),
    ({"node_limit": 5}, "node_limit", "must be a list"),
    ({"node_selector": ""}, "node_selector", "must not be empty"),
    ({"node_selector": 3}, "node_selector", "must be a selector name"),
    ({"node_autostart": "yes"}, "node_autostart", "true or false"),
    ({"node_autostart": 1}, "node_autostart", "true or false"),
    ({"migration_method": "teleport"}, "migration_method", "must be one of live, shutdown, default"),
    ({"colour": "red"}, "colour", "unknown metadata field"),
])
def test_meta_rejects_bad_input_naming_the_field(changes, field, message):
    with pytest.raises(ValidationError) as err:
        VMMeta().updated(changes)
    assert err.value.field == field
    assert message in err.value.message


def test_meta_update_is_partial_and_normalises_limits():
    meta = VMMeta(node_selector="load").updated({"node_limit": "hv2, hv1,hv2", "node_autostart": True})
    assert meta == VMMeta(node_limit=("hv1", "hv2"), node_selector="load", node_autostart=True)
    assert meta.updated({"node_limit": []}).node_limit == ()


def test_cluster_config_validation():
    assert ClusterConfig().default_selector == "mem"
    assert ClusterConfig().updated({"default_selector": "vms"}).default_selector == "vms"
    for bad in ({"default_selector": "default"}, {"allow_overcommit": "no"}, {"nope": 1}):
        with pytest.raises(ValidationError):
            ClusterConfig().updated(bad)


@pytest.mark.parametrize("name", ["keepalive_limit", "fence_grace", "self_fence_deadline", "fence_retry_max"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e308, -1, True, "3", None])
def test_seconds_settings_refuse_non_finite_and_out_of_bounds(name, value):
    with pytest.raises(ValidationError, match=f"{name} must be a number of seconds from") as exc:
        ClusterConfig().updated({name: value})
    assert exc.value.field == name


def test_stored_bad_settings_read_as_defaults():
    """A config written around the API (or by an older version) cannot turn detection off or into a loop."""
    raw = b'{"keepalive_limit": NaN, "fence_grace": Infinity, "self_fence_deadline": 0.5, "fence_retry_max": 30}'
    config = ClusterConfig.from_json(raw)
    assert (config.keepalive_limit, config.fence_grace, config.self_fence_deadline) == (3.0, 2.0, 10.0)
    assert config.fence_retry_max == 30.0


@pytest.mark.parametrize("changes, field, rule", [
    ({"keepalive_limit": 0.5, "fence_grace": 0}, "keepalive_limit", "at least 3 keepalive intervals (3 x 1s = 3s)"),
    ({"keepalive_limit": 3, "fence_grace": 1}, "fence_grace", "session timeout plus one keepalive interval (4s + 1s"),
    ({"keepalive_limit": 3.5, "fence_grace": 1}, "fence_grace", "= 5s"),
    ({"self_fence_deadline": 0.5 + 5}, "self_fence_deadline", "(4s + 2 x 1s = 6s)"),
])
def test_timing_rules_follow_from_interval_and_session_timeout(changes, field, rule):
    config = ClusterConfig().updated(changes)
    with pytest.raises(ValidationError) as exc:
        config.check_timing(Timing(1.0, 4.0), changes)
    assert exc.value.field == field and rule in exc.value.message


def test_timing_rules_scale_with_the_slowest_node():
    fast = ClusterConfig().updated({"keepalive_limit": 1.5, "fence_grace": 2.0, "self_fence_deadline": 4.0})
    fast.check_timing(Timing(0.5, 3.0))  # what the service tests run with
    slow = Timing.of([Node("a", keepalive_interval=0.5, session_timeout=3.0), Node("b", keepalive_interval=2.0)])
    assert slow == Timing(2.0, 4.0)  # b never published a session timeout: the default counts
    with pytest.raises(ValidationError, match="3 x 2s = 6s"):
        fast.check_timing(slow)
    ClusterConfig().check_timing(Timing())  # the defaults fit the default daemon


def test_self_fence_is_armed_only_when_the_cluster_may_recover_without_a_fence():
    assert not ClusterConfig().self_fence_armed
    assert ClusterConfig().updated({"failed_fence": "recover"}).self_fence_armed


def test_schema_paths_and_rejects_injection():
    s = Schema("/pvc-x")
    assert s.vm_xml("web1") == "/pvc-x/vms/web1/xml"
    assert s.node_alive("hv1") == "/pvc-x/nodes/hv1/alive"
    for bad in ("../x", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(ValidationError):
            s.vm(bad)
    for bad_root in ("pvc", "/pvc/", "/", "/a b"):
        with pytest.raises(ValidationError):
            Schema(bad_root)


def test_hand_written_vm_to_dict_matches_the_dataclass():
    from dataclasses import asdict

    from pvccore.domain.models import Migration

    vm = VM(name="a", uuid="u", memory_mib=1, vcpus=1, migration=Migration(kind="move", source="a", target="b"),
            meta=VMMeta(node_limit=("x",)))
    expected = asdict(vm)
    expected["meta"] = {k: list(v) if isinstance(v, tuple) else v for k, v in expected["meta"].items()}  # JSON lists
    assert expected["meta"]["node_limit"] == ["x"] and vm.to_dict() == expected


def test_migration_max_downtime_is_whole_milliseconds_up_to_a_minute():
    assert VMMeta().migration_max_downtime == 0
    assert VMMeta().updated({"migration_max_downtime": 250}).migration_max_downtime == 250
    for bad in (-1, 60001, 2.5, True, "300", None):
        with pytest.raises(ValidationError, match="migration_max_downtime must be an integer"):
            VMMeta().updated({"migration_max_downtime": bad})


def test_a_liveness_record_round_trips_and_anything_else_reads_as_none():
    assert decode_keepalive(encode_keepalive(1764070000.25)) == 1764070000.25
    assert decode_keepalive(b'{"keepalive": 5}') == 5.0
    deep = b'{"keepalive": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    for bad in (None, b"", b"\xff\xfe", b"null", b"[]", b'"5"', b"{}", b'{"keepalive": "5"}', b'{"keepalive": true}',
                b'{"keepalive": NaN}', b'{"keepalive": Infinity}', b'{"keepalive": -1}', b'{"keepalive": 0}',
                b'{"keepalive": {"a": 1}}', b'{"keepalive": 1e999}', deep):
        assert decode_keepalive(bad) is None, bad[:40]

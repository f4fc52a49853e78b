"""What-if of a node's failure and the N+1 check: the recovery plan, made before the failure."""

from pvccore.domain.models import VM, Cluster, Migration, VMMeta
from pvccore.domain.placement import current
from pvccore.domain.whatif import n_plus_one, plan_recovery
from tests.conftest import make_node


def vm(name: str, node: str, memory: int = 1024, state: str = "start", **meta) -> VM:
    return VM(name=name, uuid=f"u-{name}", memory_mib=memory, vcpus=1, node=node, state=state, meta=VMMeta(**meta))


def cluster(vms, **free) -> Cluster:
    nodes = [make_node(n, memory_free_mib=free.get(n, 8192), running_vms=tuple(v.name for v in vms if v.node == n))
             for n in ("hv1", "hv2", "hv3")]
    return current(Cluster.build(nodes, vms))


def test_each_vm_is_placed_counting_the_ones_placed_before_it(plugins):
    # hv2 has more room, but after two 3 GiB VMs it has less than hv3: the third goes to hv3.
    vms = [vm(f"a{i}", "hv1", 3072) for i in range(3)]
    plan = plan_recovery(cluster(vms, hv2=9000, hv3=6000), "hv1", plugins.selectors)
    assert plan.targets == {"a0": "hv2", "a1": "hv3", "a2": "hv2"}
    assert not plan.parked and plan.stays == ()


def test_limits_and_memory_park_what_no_node_can_take_and_say_why(plugins):
    vms = [vm("pinned", "hv1", node_limit=("hv1",)), vm("huge", "hv1", 12000), vm("fine", "hv1")]
    plan = plan_recovery(cluster(vms), "hv1", plugins.selectors)
    assert plan.targets == {"fine": "hv2"}  # hv2 and hv3 tie: the first name
    assert set(plan.parked) == {"pinned", "huge"}
    assert "outside the VM's node limit" in plan.parked["pinned"].reason
    assert "not enough free memory" in plan.parked["huge"].reason
    out = plan.to_dict()
    assert [p["vm"] for p in out["parked"]] == ["huge", "pinned"] and out["moves"][0]["vm"] == "fine"


def test_stopped_vms_are_left_alone_and_vms_on_their_way_in_stay_where_they_are(plugins):
    coming = VM(name="coming", uuid="u-c", memory_mib=1024, vcpus=1, node="hv2", state="migrate",
                migration=Migration(kind="migrate", source="hv2", target="hv1"))
    vms = [vm("off", "hv1", state="stop"), coming, vm("other", "hv3")]
    plan = plan_recovery(cluster(vms), "hv1", plugins.selectors)
    assert plan.targets == {} and plan.parked == {} and plan.stays == ("coming",)


def test_a_node_with_no_vms_moves_nothing(plugins):
    plan = plan_recovery(cluster([vm("x", "hv2")]), "hv1", plugins.selectors)
    assert plan.to_dict() == {"node": "hv1", "moves": [], "parked": [], "stays": []}


def test_n_plus_one_names_the_nodes_whose_loss_strands_a_vm(plugins):
    vms = [vm("pinned", "hv1", node_limit=("hv1", "hv2")), vm("big", "hv2", 7000), vm("small", "hv3")]
    # Losing hv1 sends pinned to hv2 (in its limit), losing hv3 sends small anywhere; losing hv2 strands big:
    # neither hv1 nor hv3 has 7000 MiB free.
    at_risk = n_plus_one(cluster(vms, hv1=4096, hv2=8192, hv3=4096), plugins.selectors)
    assert set(at_risk) == {"hv2"} and list(at_risk["hv2"].parked) == ["big"]


def test_n_plus_one_is_empty_when_any_single_loss_is_survived(plugins):
    vms = [vm("a", "hv1"), vm("b", "hv2"), vm("c", "hv3")]
    assert n_plus_one(cluster(vms), plugins.selectors) == {}


def test_n_plus_one_skips_nodes_already_out(plugins):
    vms = [vm("pinned", "hv1", node_limit=("hv1",))]
    nodes = [make_node("hv1", running_vms=("pinned",)), make_node("hv2"), make_node("hv3", daemon_state="dead")]
    at_risk = n_plus_one(current(Cluster.build(nodes, vms)), plugins.selectors)
    assert set(at_risk) == {"hv1"} and list(at_risk["hv1"].parked) == ["pinned"]


def test_the_check_of_a_large_cluster_runs_in_the_background_and_answers_with_its_age(plugins):
    import time

    from pvccore.operations import NPlusOneCheck

    vms = [vm("pinned", "hv1", node_limit=("hv1",))]
    first, second = cluster(vms), cluster(vms + [vm("more", "hv2")])
    check = NPlusOneCheck(plugins)
    assert list(check.get(first).at_risk) == ["hv1"]  # small: at once, on the snapshot given
    check.SYNC_BUDGET = 0.0  # every check now counts as large
    check.REFRESH = 0.0
    stale = check.get(second)
    assert list(stale.at_risk) == ["hv1"] and stale.age >= 0.0  # the last answer while the new one runs
    deadline = time.monotonic() + 10
    while check.get(second).age != 0.0:  # computed in its thread, on the snapshot it was asked about
        assert time.monotonic() < deadline
        time.sleep(0.01)
    fresh = NPlusOneCheck(plugins)
    fresh.SYNC_BUDGET = 0.0
    assert fresh.get(first).at_risk is None  # a large cluster's first check: no answer yet, never a wrong one

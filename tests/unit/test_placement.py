"""Placement: candidate filters, node limits, ties, empty sets, unknown selectors, explanations."""

import pytest

from pvccore.errors import ValidationError
from pvccore.domain.models import VM, Cluster, ClusterConfig, VMMeta
from pvccore.domain.placement import place
from tests.conftest import make_node


def vm(**meta) -> VM:
    node = meta.pop("node", "")
    memory = meta.pop("memory_mib", 1024)
    return VM(name="web1", uuid="u", memory_mib=memory, vcpus=2, node=node, meta=VMMeta(**meta))


def three(**overrides):
    figures = {"hv1": dict(memory_free_mib=3000), "hv2": dict(memory_free_mib=5000), "hv3": dict(memory_free_mib=4000)}
    for name, kw in overrides.items():
        figures[name].update(kw)
    return [make_node(n, **f) for n, f in figures.items()]


def test_default_selector_is_mem_and_best_wins(plugins):
    result = place(vm(), Cluster.build(three()), plugins.selectors)
    assert (result.selector, result.target) == ("mem", "hv2")


def test_cluster_default_selector_is_used_for_default(plugins):
    nodes = three(hv1=dict(vm_count=0), hv2=dict(vm_count=4), hv3=dict(vm_count=2))
    result = place(vm(), Cluster.build(nodes, config=ClusterConfig(default_selector="vms")), plugins.selectors)
    assert (result.selector, result.target) == ("vms", "hv1")


def test_node_limit_restricts_choice(plugins):
    result = place(vm(node_limit=("hv1", "hv3")), Cluster.build(three()), plugins.selectors)
    assert result.target == "hv3"
    assert result.excluded == {"hv2": "outside the VM's node limit"}


def test_current_node_is_excluded(plugins):
    result = place(vm(node="hv2"), Cluster.build(three()), plugins.selectors)
    assert result.target == "hv3"
    assert result.excluded["hv2"] == "current node of the VM"


def test_ties_go_to_first_name(plugins):
    nodes = [make_node(n, memory_free_mib=5000) for n in ("zeta", "alpha", "mid")]
    result = place(vm(), Cluster.build(nodes), plugins.selectors)
    assert result.target == "alpha"


def test_node_leaving_ready_is_excluded(plugins):
    for field, value, why in (("domain_state", "flush", "domain state is flush"),
                              ("domain_state", "flushed", "domain state is flushed"),
                              ("daemon_state", "dead", "daemon state is dead"),
                              ("daemon_state", "init", "daemon state is init")):
        result = place(vm(), Cluster.build(three(hv2={field: value})), plugins.selectors)
        assert result.target == "hv3"
        assert result.excluded == {"hv2": why}


def test_not_enough_memory_unless_overcommit(plugins):
    big = vm(memory_mib=4500)
    result = place(big, Cluster.build(three()), plugins.selectors)
    assert result.target == "hv2"
    assert "not enough free memory (3000 MiB free, 4500 MiB needed)" == result.excluded["hv1"]
    huge = vm(memory_mib=6000)
    assert place(huge, Cluster.build(three()), plugins.selectors).target is None
    over = Cluster.build(three(), config=ClusterConfig(allow_overcommit=True))
    assert place(huge, over, plugins.selectors).target == "hv2"


def test_empty_candidate_set_explains_every_node(plugins):
    result = place(vm(node="hv1", node_limit=("hv1", "hv2")), Cluster.build(three(hv2=dict(domain_state="flush"))),
                   plugins.selectors)
    assert result.target is None
    assert result.scores == {}
    assert [r["node"] for r in result.explain()] == ["hv1", "hv2", "hv3"]
    assert "hv2: domain state is flush" in result.reason
    assert place(vm(), Cluster.build([]), plugins.selectors).target is None


def test_unknown_selector_falls_back_to_the_default_and_says_so(plugins):
    """A VM whose selector's plugin is gone is still placed (a flush or recovery must not stop
    at it), by the cluster default, and the decision names the missing selector."""
    result = place(vm(node_selector="nosuch"), Cluster.build(three()), plugins.selectors)
    assert result.target is not None and result.selector == "mem"
    assert "'nosuch' is not registered" in result.note and "vcpus" in result.note
    assert result.to_dict()["note"] == result.note


def test_unknown_default_selector_names_the_known_ones(plugins):
    cluster = Cluster.build(three(), config=ClusterConfig(default_selector="gone"))
    for selector in ("default", "nosuch"):
        with pytest.raises(ValidationError) as err:
            place(vm(node_selector=selector), cluster, plugins.selectors)
        assert err.value.field == "node_selector"
        assert "unknown selector 'gone'" in err.value.message
        assert "mem" in err.value.message and "vcpus" in err.value.message


def test_selector_returning_none_or_raising_excludes_node():
    from pvccore.hookspecs import Selector

    def score(vm, node, cluster):
        if node.name == "hv1":
            return None
        if node.name == "hv2":
            raise RuntimeError("boom")
        return 1.0

    result = place(vm(node_selector="odd"), Cluster.build(three()), {"odd": Selector("odd", "test", score)})
    assert result.target == "hv3"
    assert result.excluded["hv1"] == "selector odd says it cannot host the VM"
    assert result.excluded["hv2"].startswith("selector odd failed: boom")


def test_explanation_has_a_line_per_node(plugins):
    result = place(vm(node_limit=("hv2", "hv3")), Cluster.build(three()), plugins.selectors)
    assert result.to_dict() == {
        "vm": "web1", "selector": "mem", "target": "hv2",
        "nodes": [{"node": "hv1", "excluded": "outside the VM's node limit"},
                  {"node": "hv2", "score": 5000.0}, {"node": "hv3", "score": 4000.0}],
    }


def test_pending_vms_count_until_the_node_reports_them(plugins):
    from pvccore.domain.models import Migration
    from pvccore.domain.placement import current, pending_moves

    nodes = [make_node("hv1", memory_free_mib=5000, vm_count=0, running_vms=("old",)),
             make_node("hv2", memory_free_mib=5000, vm_count=0)]
    vms = [VM(name="old", uuid="1", memory_mib=100, vcpus=1, state="start", node="hv1"),  # already reported
           VM(name="new", uuid="2", memory_mib=2000, vcpus=2, state="start", node="hv1"),  # assigned, not yet seen
           VM(name="off", uuid="3", memory_mib=999, vcpus=1, state="stop", node="hv2"),    # stopped: not pending
           VM(name="mig", uuid="4", memory_mib=500, vcpus=1, state="migrate", node="hv1",
              migration=Migration(kind="migrate", source="hv1", target="hv2"))]
    cluster = Cluster.build(nodes, vms)
    assert pending_moves(cluster) == {"new": "hv1", "mig": "hv2"}
    seen = current(cluster)
    assert (seen.nodes["hv1"].memory_free_mib, seen.nodes["hv1"].vm_count, seen.nodes["hv1"].vcpus_allocated) == \
        (3000, 1, 2)
    assert seen.nodes["hv2"].memory_free_mib == 4500
    # a third VM placed by "vms" now goes to hv1's peer with fewer VMs counted... both have 1: first name wins
    third = VM(name="x", uuid="5", memory_mib=100, vcpus=1, meta=VMMeta(node_selector="mem"))
    assert place(third, seen, plugins.selectors).target == "hv2"  # 4500 free beats 3000
    assert place(third, cluster, plugins.selectors).target == "hv1"  # the raw figures would tie -> hv1

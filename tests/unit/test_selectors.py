"""Each built-in selector ranks nodes by its one figure, through placement as a VM would use it."""

import pytest

from pvccore.domain.models import VM, Cluster, VMMeta
from pvccore.domain.placement import place
from tests.conftest import make_node


def vm_with(selector: str) -> VM:
    return VM(name="vm1", uuid="u1", memory_mib=512, vcpus=1, meta=VMMeta(node_selector=selector))


CASES = {
    # selector: (per-node figures, expected winner)
    "mem": ({"a": dict(memory_free_mib=4000), "b": dict(memory_free_mib=9000), "c": dict(memory_free_mib=6000)}, "b"),
    "load": ({"a": dict(load_1m=3.5), "b": dict(load_1m=0.25), "c": dict(load_1m=1.0)}, "b"),
    "vcpus": ({"a": dict(vcpus_allocated=12), "b": dict(vcpus_allocated=20), "c": dict(vcpus_allocated=4)}, "c"),
    "vms": ({"a": dict(vm_count=2), "b": dict(vm_count=5), "c": dict(vm_count=9)}, "a"),
    # memprov: free memory says b, provisioned memory says c (b has stopped VMs assigned)
    "memprov": ({"a": dict(memory_provisioned_mib=12000, memory_free_mib=5000),
                 "b": dict(memory_provisioned_mib=14000, memory_free_mib=9000),
                 "c": dict(memory_provisioned_mib=6000, memory_free_mib=7000)}, "c"),
}


@pytest.mark.parametrize("selector", sorted(CASES))
def test_selector_picks_best_node(plugins, selector):
    figures, winner = CASES[selector]
    cluster = Cluster.build([make_node(n, **f) for n, f in figures.items()])
    result = place(vm_with(selector), cluster, plugins.selectors)
    assert result.selector == selector
    assert result.target == winner
    assert set(result.scores) == set(figures)
    assert max(result.scores, key=result.scores.get) == winner


@pytest.mark.parametrize("selector", sorted(CASES))
def test_selector_scores_are_ordered_by_its_figure(plugins, selector):
    figures, _ = CASES[selector]
    cluster = Cluster.build([make_node(n, **f) for n, f in figures.items()])
    scores = {n: plugins.selectors[selector].score(vm_with(selector), node, cluster) for n, node in cluster.nodes.items()}
    assert all(isinstance(s, float) for s in scores.values())
    assert len(set(scores.values())) == 3  # the figure, not a constant, drives the score


def test_builtin_selectors_have_descriptions(plugins):
    assert set(plugins.selectors) >= {"mem", "load", "vcpus", "vms", "memprov"}
    for sel in plugins.selectors.values():
        assert sel.description and "\n" not in sel.description

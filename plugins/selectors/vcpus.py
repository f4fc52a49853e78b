"""Selector ``vcpus``: the node with the fewest vCPUs allocated to its VMs."""

from pvccore import hookimpl
from pvccore.hookspecs import Selector


def score(vm, node, cluster):
    return float(-node.vcpus_allocated)


@hookimpl
def pvc_register_selectors():
    return [Selector("vcpus", "fewest allocated vCPUs", score)]

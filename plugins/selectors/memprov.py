"""Selector ``memprov``: the node with the most memory left once every VM assigned to it is provisioned.

Unlike ``mem`` this counts stopped VMs that belong to the node too, so it does not
fill a node whose VMs happen to be down at the moment.
"""

from pvccore import hookimpl
from pvccore.hookspecs import Selector


def score(vm, node, cluster):
    return float(node.memory_total_mib - node.memory_provisioned_mib)


@hookimpl
def pvc_register_selectors():
    return [Selector("memprov", "most memory left after all assigned VMs are provisioned", score)]

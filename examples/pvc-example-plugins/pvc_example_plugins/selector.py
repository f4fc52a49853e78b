"""Selector ``mem-per-vcpu``: the node with the most free memory per allocated vCPU.

It spreads CPU-heavy and memory-heavy VMs at once: a node with lots of free
memory but already crowded with vCPUs scores lower than a quieter one.
"""

from pvccore import hookimpl
from pvccore.hookspecs import Selector


def score(vm, node, cluster):
    # +1 so an empty node does not divide by zero (and still wins on memory)
    return node.memory_free_mib / (node.vcpus_allocated + 1)


@hookimpl
def pvc_register_selectors():
    return [Selector("mem-per-vcpu", "most free memory per allocated vCPU", score)]

"""Selector ``vms``: the node with the fewest VMs."""

from pvccore import hookimpl
from pvccore.hookspecs import Selector


def score(vm, node, cluster):
    return float(-node.vm_count)


@hookimpl
def pvc_register_selectors():
    return [Selector("vms", "fewest VMs", score)]

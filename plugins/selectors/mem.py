"""Selector ``mem``: the node with the most free memory."""

from pvccore import hookimpl
from pvccore.hookspecs import Selector


def score(vm, node, cluster):
    return float(node.memory_free_mib)


@hookimpl
def pvc_register_selectors():
    return [Selector("mem", "most free memory", score)]

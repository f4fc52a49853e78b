"""Selector ``load``: the node with the lowest 1-minute load average."""

from pvccore import hookimpl
from pvccore.hookspecs import Selector


def score(vm, node, cluster):
    return 0.0 - node.load_1m


@hookimpl
def pvc_register_selectors():
    return [Selector("load", "lowest 1-minute load average", score)]

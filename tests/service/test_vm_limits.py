"""A VM must fit the nodes it may run on, in the figures the nodes published (real ZooKeeper, no daemons).

Nodes here are written by the test with fixed figures, so capacity is exact: a VM that should run on
a node and is not in its ``running_vms`` yet counts against its free memory (pending, as placement sees it).
"""

from __future__ import annotations

import pytest

from pvccore.errors import ConflictError, ValidationError
from pvccore.demo.cluster import sample_domain_xml as domain
from pvccore.operations import Operations
from pvccore.zk.session import Session
from tests.conftest import make_node

T = 10


@pytest.fixture
def ops(store, plugins):
    store.create_node(make_node("small", cpu_count=4, memory_total_mib=8192, memory_free_mib=8192,
                                memory_used_mib=0))
    store.create_node(make_node("big", cpu_count=16, memory_total_mib=65536, memory_free_mib=32768))
    view = Session.on(store).view
    assert view.wait_for(lambda c: set(c.nodes) == {"small", "big"}, T)
    yield Operations(store, view, plugins)
    view.stop()


def refused(fn, error, field, message):
    with pytest.raises(error) as exc:
        fn()
    assert exc.value.field == field and message in exc.value.message, exc.value.message


def test_size_is_checked_against_the_nodes_in_the_vms_limit(ops):
    refused(lambda: ops.define_vm(domain("wide", 1024, 8), {"node_limit": ["small"]}), ValidationError, "xml",
            "VM 'wide' has 8 vCPUs; the largest node it may run on has 4 CPUs")
    refused(lambda: ops.define_vm(domain("tall", 16384), {"node_limit": ["small"]}), ValidationError, "xml",
            "VM 'tall' has 16384 MiB of memory; the largest node it may run on has 8192 MiB")
    refused(lambda: ops.define_vm(domain("huge", 1024, 32)), ValidationError, "xml", "largest node it may run on "
            "has 16 CPUs")
    assert ops.define_vm(domain("wide", 1024, 8)).node == "big"  # any node: big has 16
    refused(lambda: ops.set_meta("wide", {"node_limit": ["small"]}), ValidationError, "node_limit",
            "VM 'wide' has 8 vCPUs; the largest node it may run on has 4 CPUs")
    refused(lambda: ops.replace_xml("wide", domain("wide", 1024, 17)), ValidationError, "xml", "has 16 CPUs")
    stored = ops.store.get_vm("wide")
    assert (stored.vcpus, stored.meta.node_limit, ops.store.vm_names()) == (8, (), ["wide"])


def test_nodes_that_have_not_reported_are_not_counted(ops):
    ops.store.create_node(make_node("new", cpu_count=0, memory_total_mib=0))  # no CPUs nor total reported yet
    assert ops.view.wait_for(lambda c: "new" in c.nodes, T)
    refused(lambda: ops.define_vm(domain("wide", 1024, 8), {"node_limit": ["new", "small"]}, start=False),
            ValidationError, "xml", "has 4 CPUs")
    assert ops.define_vm(domain("any", 1024, 64), {"node_limit": ["new"]}).node == "new"  # nothing to go by


def test_a_uuid_is_one_vms_only(ops):
    first = ops.define_vm(domain("one"), start=False)
    twin = domain("two").replace("</domain>", f"<uuid>{first.uuid.replace('-', '').upper()}</uuid></domain>")
    refused(lambda: ops.define_vm(twin, start=False), ConflictError, "xml",
            f"UUID {first.uuid} is already VM 'one''s")
    other = domain("one").replace("</domain>", "<uuid>6f1c1a0e-51a3-4b8e-9d0c-3b2f4f0d8a11</uuid></domain>")
    refused(lambda: ops.replace_xml("one", other), ValidationError, "xml", "differs from the VM's")
    assert ops.replace_xml("one", domain("one", 1024)).uuid == first.uuid  # no <uuid>: the VM keeps its own
    assert f"<uuid>{first.uuid}</uuid>" in ops.store.get_vm_xml("one")


def test_a_running_vm_grows_only_into_its_nodes_free_memory(ops):
    ops.define_vm(domain("app", 4096), target="small")  # pending on small: 4096 of 8192 MiB left
    refused(lambda: ops.replace_xml("app", domain("app", 8193)), ConflictError, "xml",
            "VM 'app' runs on small, which has 4096 MiB free: 4097 MiB more does not fit")
    assert ops.store.get_vm("app").memory_mib == 4096 and "4096" in ops.store.get_vm_xml("app")
    assert ops.replace_xml("app", domain("app", 8192)).memory_mib == 8192  # exactly what is left

    ops.store.update_config(lambda c: c.updated({"allow_overcommit": True}))
    assert ops.view.wait_for(lambda c: c.config.allow_overcommit, T)
    assert ops.replace_xml("app", domain("app", 8192, 2)).vcpus == 2


def test_a_stopped_vm_grown_past_its_node_starts_elsewhere_and_keeps_its_home(ops):
    ops.define_vm(domain("cold", 2048), target="small", start=False)
    ops.define_vm(domain("hot", 4096), target="small")  # small: 4096 MiB left
    ops.replace_xml("cold", domain("cold", 6144))  # stopped: nothing is claimed until it starts
    started = ops.set_state("cold", "start")
    assert (started.node, started.last_node, started.state) == ("big", "small", "start")
    assert "its node small has 4096 MiB free, 6144 MiB needed" in started.reason


def test_a_start_that_fits_nowhere_is_refused_and_changes_nothing(ops):
    ops.define_vm(domain("cold", 6144), {"node_limit": ["small"]}, target="small", start=False)
    ops.define_vm(domain("hot", 4096), {"node_limit": ["small"]}, target="small")
    refused(lambda: ops.set_state("cold", "start"), ConflictError, "state",
            "VM 'cold' cannot start: its node small has 4096 MiB free, 6144 MiB needed, and no node can host")
    assert (ops.store.get_vm("cold").state, ops.store.get_vm("cold").node) == ("stop", "small")


def test_overcommit_lets_a_vm_start_at_home(ops):
    ops.store.update_config(lambda c: c.updated({"allow_overcommit": True}))
    assert ops.view.wait_for(lambda c: c.config.allow_overcommit, T)
    ops.define_vm(domain("cold", 6144), target="small", start=False)
    ops.define_vm(domain("hot", 4096), target="small")
    assert ops.set_state("cold", "start").node == "small"

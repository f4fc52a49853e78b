"""schemathesis drives every operation of the OpenAPI document with generated input: nothing answers 5xx.

Against a real ZooKeeper holding a few nodes and VMs (no daemons: waits time out
fast), so that generated names sometimes hit existing things. Bounded to about
300 cases in all.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from pvcapi.app import Deps, create_app
from pvccore.demo.cluster import sample_domain_xml
from pvccore.operations import Operations
from pvccore.zk.session import Session
from tests.conftest import make_node

KEY = "fuzz-key"


@pytest.fixture(scope="module")
def fuzz_app(zk_server, plugins):
    import uuid

    from pvccore.zk.store import Store, delete_tree

    root = f"/pvc-fuzz/{uuid.uuid4().hex[:8]}"
    store = Store.connect(zk_server.hosts, root)
    for name in ("hv1", "hv2", "a"):
        store.create_node(make_node(name))
    view = Session.on(store).view
    ops = Operations(store, view, plugins)
    for name in ("a", "vm1", "0"):
        ops.define_vm(sample_domain_xml(name), {"node_limit": ["hv1", "hv2"]})
    yield create_app(Deps(ops=ops, api_keys=(KEY,), wait_timeout=0.2, stream_seconds=0.3))
    view.stop()
    delete_tree(store.client, root)
    store.close()


def test_no_server_errors(fuzz_app):
    # Each operation's case strategy run by hypothesis directly (schemathesis' pytest fixture
    # integration does not run under pytest 9).
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", fuzz_app, headers={"X-Api-Key": KEY})
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 34
    seen = []

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call(headers={"X-Api-Key": KEY})
            seen.append(response.status_code)
            assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text)
            if response.status_code >= 400:
                assert set(response.json()) == {"message", "field"}

        check()
    assert len(seen) >= 200 and {200, 400, 404} <= set(seen)

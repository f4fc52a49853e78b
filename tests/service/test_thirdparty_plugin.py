"""A third-party selector distribution, built and pip-installed here, is registered and chosen with no configuration."""

import json
import os
import subprocess
import sys
import textwrap

from pvccore.zk.auth import AUTH_ENV
from tests.conftest import make_node

PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "pvc-lastname"
version = "1.2.3"

[project.entry-points."pvc.plugins"]
lastname = "pvc_lastname"
"""

MODULE = '''
"""Prefers the node whose name sorts last: something no built-in selector would do."""
from pvccore import hookimpl
from pvccore.hookspecs import Selector


def score(vm, node, cluster):
    return float(sorted(cluster.nodes).index(node.name))


@hookimpl
def pvc_register_selectors():
    return [Selector("lastname", "the node whose name sorts last", score)]
'''

# Runs in a fresh interpreter that sees the installed distribution, against the real ZooKeeper.
PROBE = """
import json, sys
from pvccore.plugins import load_plugins
from pvccore.domain.placement import place
from pvccore.zk.store import Store
from pvccore.zk.session import Session

hosts, root = sys.argv[1:3]
store = Store.connect(hosts, root)
plugins = load_plugins()
view = Session.on(store).view
vm = store.get_vm("app1")
result = place(vm, view.snapshot(), plugins.selectors)
dist = {r["name"]: r for r in plugins.describe()}["lastname"]
print(json.dumps({"selectors": sorted(plugins.selectors), "target": result.target,
                  "selector": result.selector, "dist": [dist["distribution"], dist["version"]]}))
view.stop(); store.close()
"""


def test_pip_installed_selector_is_registered_and_chosen(tmp_path, store, zk_server):
    from pvccore.domain.models import VM, VMMeta

    src = tmp_path / "src"
    (src / "pvc_lastname").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "pvc_lastname" / "__init__.py").write_text(textwrap.dedent(MODULE))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, capture_output=True)
    assert list(site.glob("pvc_lastname-1.2.3.dist-info"))

    for name, free in (("alpha", 9000), ("bravo", 8000), ("charlie", 1000)):
        store.create_node(make_node(name, memory_free_mib=free))
    store.create_vm(VM(name="app1", uuid="u", memory_mib=512, vcpus=1, meta=VMMeta(node_selector="lastname")), "<d/>")

    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", AUTH_ENV: os.environ[AUTH_ENV]}
    out = subprocess.run([sys.executable, "-c", PROBE, zk_server.hosts, store.paths.root],
                         env=env, check=True, capture_output=True, text=True)
    got = json.loads(out.stdout)
    assert "lastname" in got["selectors"] and "mem" in got["selectors"]
    assert got["selector"] == "lastname"
    assert got["target"] == "charlie"  # mem would have picked alpha
    assert got["dist"] == ["pvc-lastname", "1.2.3"]

"""The example distribution in examples/ builds, installs, registers, places VMs and takes part in handovers."""

import json
import os
import subprocess
import sys
from pathlib import Path

from pvccore.zk.auth import AUTH_ENV
from tests.conftest import make_node

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pvc-example-plugins"

PROBE = """
import json, logging, sys
from pvccore.domain.models import VM, VMMeta
from pvccore.domain.placement import place
from pvccore.plugins import load_plugins
from pvccore.zk.store import Store
from pvccore.zk.session import Session

records = []
logging.getLogger("pvc.example.handover").addHandler(type("H", (logging.Handler,), {"emit": lambda s, r:
    records.append(r.getMessage())})())
logging.getLogger("pvc.example.handover").setLevel(logging.INFO)
store = Store.connect(sys.argv[1], sys.argv[2])
plugins = load_plugins()
view = Session.on(store).view
vm = VM(name="x", uuid="u", memory_mib=256, vcpus=1, meta=VMMeta(node_selector="mem-per-vcpu"))
result = place(vm, view.snapshot(), plugins.selectors)
plugins.notify("pvc_handover_phase", phase="stop-services", node="a", role="relinquish", old_primary="a",
               new_primary="b")
rows = {r["name"]: r for r in plugins.describe()}
print(json.dumps({"target": result.target, "scores": result.scores, "log": records,
                  "dists": sorted({rows[n]["distribution"] for n in ("mem-per-vcpu", "handover-log")})}))
view.stop(); store.close()
"""


def test_example_distribution(tmp_path, store, zk_server):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(EXAMPLE)], check=True, capture_output=True, cwd=tmp_path)
    # a: most free memory but crowded; b: less memory, idle -> b has more memory per vCPU
    store.create_node(make_node("a", memory_free_mib=12000, vcpus_allocated=11))
    store.create_node(make_node("b", memory_free_mib=6000, vcpus_allocated=1))
    out = subprocess.run([sys.executable, "-c", PROBE, zk_server.hosts, store.paths.root], check=True,
                         capture_output=True, text=True, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", AUTH_ENV: os.environ[AUTH_ENV]})
    got = json.loads(out.stdout)
    assert got["target"] == "b" and got["scores"] == {"a": 1000.0, "b": 3000.0}
    assert got["log"] == ["handover phase stop-services on a as relinquish (a -> b)"]
    assert got["dists"] == ["pvc-example-plugins"]

"""The floating IP moves with the primary in network namespaces on 198.18.0.0/24, made here.

Two coordinators (hosts 1 and 2) and a third host pinging the floating IP every
25 ms while the primary moves there and back. The API, run by the primary on the
floating IP, answers after each move.
"""

import json
import subprocess
import sys
import time

import pytest

from pvccore.demo.cluster import coordinator_lab
from pvccore.demo.netlab import NetLab, Pinger

FIP = "198.18.0.100"
T = 30

usable, why = NetLab.available()
if not usable:  # only where the machine cannot create namespaces
    pytest.skip(f"network namespaces unavailable: {why}", allow_module_level=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with coordinator_lab(str(tmp_path_factory.mktemp("fip")), FIP) as (net, ops):
        yield net, ops


def api_answers(net: NetLab, host: int) -> bool:
    """GET the API's health on the floating IP from ``host`` (retried under a deadline while it starts)."""
    code = ("import json,sys,time,urllib.request\n"
            "end=time.monotonic()+20\n"
            "while True:\n"
            "  try:\n"
            f"    print(json.load(urllib.request.urlopen('http://{FIP}:7370/api/v1', timeout=2))['name']); break\n"
            "  except OSError:\n"
            "    if time.monotonic()>end: raise\n"
            "    time.sleep(0.1)\n")
    out = subprocess.run([*net.exec(host), sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return out.stdout.strip() == "pvc"


def primary_host(ops) -> int:
    return int(ops.view.snapshot().primary.node[-1])


def test_floating_ip_follows_the_primary_with_no_lost_pings(lab):
    net, ops = lab
    assert ops.view.wait_for(lambda c: c.primary is not None and c.nodes[c.primary.node].coordinator_state
                             == "primary", T)
    first = primary_host(ops)
    assert net.has_address(first, FIP) and not net.has_address(3 - first, FIP)
    assert api_answers(net, 3)

    pinger = Pinger(net, 3, FIP, 0.025)
    time.sleep(1.0)  # a second of pings before the first move, as a baseline (not synchronisation)
    durations = []
    for target in (3 - first, first):
        t0 = time.monotonic()
        final = ops.wait_handover(ops.request_primary(f"hv{target}"), T)
        assert final is not None and final.phase == "done", final
        durations.append(time.monotonic() - t0)
        assert net.has_address(target, FIP) and not net.has_address(3 - target, FIP)
    time.sleep(1.0)  # and a second after the last
    sent, received = pinger.stop()
    lost = sent - received
    print(json.dumps({"pings_sent": sent, "pings_lost": lost, "handover_s": durations}))
    assert sent > 60
    assert lost <= 1, f"{lost} of {sent} pings lost"
    assert all(d < 5 for d in durations), durations
    assert api_answers(net, 3)  # the API moved with the primary

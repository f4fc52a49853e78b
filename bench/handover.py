"""Planned primary handovers: pings lost (from a third host, every 25 ms) and handover time, over 10 handovers.

Two coordinators in network namespaces on 198.18.0.0/24 carrying a floating IP.
Targets: 0 pings lost (<= 1 accepted) and a handover under 2 s.

    .venv/bin/python bench/handover.py       (or: make bench)
"""

import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))

from common import emit, handovers, table  # noqa: E402

from pvccore.demo.cluster import coordinator_lab  # noqa: E402
from pvccore.demo.netlab import NetLab, Pinger  # noqa: E402

FIP = "198.18.0.100"
RUNS = 10


def main() -> None:
    usable, why = NetLab.available()
    if not usable:
        raise SystemExit(f"handover benchmark needs network namespaces: {why}")
    with tempfile.TemporaryDirectory() as work, coordinator_lab(work, FIP) as (net, ops):
        lost, seconds = handovers(ops, lambda: Pinger(net, 3, FIP, 0.025), RUNS)
    emit("handover_lost_pings_max", max(lost), "pings", f"per handover: {lost}")
    emit("handover_lost_pings_total", sum(lost), "pings", f"over {RUNS} handovers")
    emit("handover_s_median", statistics.median(seconds), "s", f"worst {max(seconds):.2f} s")
    table(f"primary handover, {RUNS} runs, ping every 25 ms from a third host")


if __name__ == "__main__":
    main()

"""Poll an authenticated API route every INTERVAL seconds until SIGINT; then print the longest gap.

    python3 apipoll.py URL KEY [INTERVAL]

Each poll is a new connection with a 1 s timeout (a client that just noticed the API moved).
On SIGINT it prints one JSON object: polls, successes, and ``gap_s``, the longest time between
two successful answers (from the first success to the last). Run inside a client network
namespace by the cluster-in-a-box harness (``ClusterBox.api_poller``).
"""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.error
import urllib.request


def main() -> int:
    url, key = sys.argv[1], sys.argv[2]
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.01
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    polls = ok = 0
    last_ok = first_ok = None
    gap = 0.0
    request = urllib.request.Request(url, headers={"X-Api-Key": key})
    while not stop:
        polls += 1
        try:
            with urllib.request.urlopen(request, timeout=1.0) as answer:
                answer.read()
                good = answer.status == 200
        except (OSError, urllib.error.URLError):
            good = False
        now = time.monotonic()
        if good:
            ok += 1
            if last_ok is not None:
                gap = max(gap, now - last_ok)
            first_ok = first_ok or now
            last_ok = now
        time.sleep(interval)
    print(json.dumps({"polls": polls, "successes": ok, "gap_s": round(gap, 4)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

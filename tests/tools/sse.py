"""A client of pvcapid's event stream (``GET /api/v1/events``), read event by event, for tests."""

from __future__ import annotations

import http.client
import json
import time

T = 30.0  # seconds a read may wait


class Stream:
    """An open ``GET /api/v1/events``, read event by event."""

    def __init__(self, netloc: str, key: str):
        self.conn = http.client.HTTPConnection(netloc, timeout=T)
        self.conn.request("GET", "/api/v1/events", headers={"X-Api-Key": key, "Accept": "text/event-stream"})
        self.sock = self.conn.sock  # (kept: the reads below set its timeout)
        self.response = self.conn.getresponse()
        self.status = self.response.status

    def next(self, deadline: float | None = None) -> tuple[str, dict]:
        """The next event (comments skipped), read by ``deadline`` (time.monotonic(); default: T from now)."""
        deadline = time.monotonic() + T if deadline is None else deadline
        kind, data = "message", []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no event in time")
            self.sock.settimeout(left)  # a quiet stream sends only a comment every 15 s
            try:
                line = self.response.readline()  # (the answer is chunked: this reads through the framing)
            except TimeoutError:
                raise AssertionError("no event in time") from None
            assert line, "the stream ended"
            line = line.decode().rstrip("\n")
            if not line:
                if data:
                    return kind, json.loads("\n".join(data))
                continue
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())

    def until(self, test, deadline: float) -> dict:
        """The first change that passes ``test`` (a delta; or a new snapshot, seen as one: a stream behind the
        feed starts again from one)."""
        while True:
            kind, data = self.next(deadline)
            if kind == "snapshot":
                data = {**data, "gone": {"nodes": [], "vms": []}}
            if test(data):
                return data

    def close(self) -> None:
        self.conn.close()

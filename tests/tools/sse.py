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
        self.response = self.conn.getresponse()
        self.status = self.response.status

    def next(self) -> tuple[str, dict]:
        """The next event (comments skipped)."""
        kind, data = "message", []
        while True:
            line = self.response.readline()  # (the answer is chunked: this reads through the framing)
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
        while time.monotonic() < deadline:
            kind, data = self.next()
            if kind == "delta" and test(data):
                return data
        raise AssertionError("no such event in time")

    def close(self) -> None:
        self.conn.close()

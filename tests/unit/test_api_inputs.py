"""The API's first line against hostile input, without a server: strict JSON, the name filter, the limits
the OpenAPI document states (the same input, end to end against gunicorn, is in tests/service/test_hostile.py)."""

from __future__ import annotations

import io
import json
import time

import falcon
import falcon.testing
import pytest
from kazoo.exceptions import ConnectionLoss, OperationTimeoutError, SessionExpiredError
from kazoo.handlers.threading import KazooTimeoutError

from pvcapi.app import Deps, create_app
from pvcapi.errors import BadRequest
from pvcapi.guards import MAX_BODY, MAX_DEPTH, StrictJSON
from pvcapi.openapi import document
from pvcapi.vms import MAX_LIMIT, name_filter
from pvccore.domain.models import VM
from pvccore.errors import Unavailable


def parse(data: bytes):
    return StrictJSON().deserialize(io.BytesIO(data), falcon.MEDIA_JSON, len(data))


def refused(data: bytes) -> str:
    with pytest.raises(BadRequest) as caught:
        parse(data)
    assert caught.value.field is None
    return caught.value.description


@pytest.mark.parametrize("data, message", [
    (b'{"a": NaN}', "not valid JSON: NaN is not a JSON number"),
    (b'{"a": -Infinity}', "not valid JSON: -Infinity is not a JSON number"),
    (b'{"a": 1e400}', "a number out of range: 1e400"),
    (b'{"a": -2.5e308}', "a number out of range: -2.5e308"),
    (b'{"a": ' + b"1" * 20 + b"}", "an integer of more than 19 digits"),
    (b'{"a": -' + b"1" * 5000 + b"}", "an integer of more than 19 digits: -1111111111111111111... (5001 characters)"),
    (b'{"a": "\\ud800"}', "not valid Unicode"),
    (b'{"\\udc00": 1}', "not valid Unicode"),
    (b'[' * 100_000 + b']' * 100_000, "nested too deeply"),
    (b'{"a": ' + b'[' * (MAX_DEPTH) + b']' * (MAX_DEPTH) + b"}", f"more than {MAX_DEPTH} levels"),
    (b'{"a": "\xff"}', "not valid JSON"),
    (b'{"a": 1', "not valid JSON"),
])
def test_unusable_json_is_bad_input(data, message):
    assert message in refused(data)


def test_usable_json_passes_whole():
    body = {"entries": [{"fencer": "ipmi", "params": {"port": 623, "ratio": 0.5, "host": "bmc-1", "ok": True}}],
            "big": 9_223_372_036_854_775_807, "text": "caf\u00e9 \U0001f600"}
    assert parse(json.dumps(body).encode()) == body
    assert parse(b'{"a": ' + b'[' * (MAX_DEPTH - 1) + b']' * (MAX_DEPTH - 1) + b"}")


def test_a_body_over_the_limit_is_refused_while_reading():
    with pytest.raises(falcon.HTTPContentTooLarge):
        parse(b'"' + b" " * MAX_BODY + b'"')


def test_answers_are_json_always():
    handler = StrictJSON()
    with pytest.raises(ValueError):
        handler.serialize({"a": float("nan")}, falcon.MEDIA_JSON)  # a 500 rather than a body that is not JSON
    out = handler.serialize({"message": "unknown selector '\ud800'"}, falcon.MEDIA_JSON)
    assert json.loads(out) == {"message": "unknown selector '\ud800'"}  # escaped, not a UnicodeEncodeError


def test_name_filter_is_a_glob_or_a_substring_of_the_name_or_uuid():
    names = ["web1", "web2", "db1", "Web3", "a" * 40 + "-", "x[1]"]
    vms = [VM(n, f"{i:08d}-0000-4000-8000-00000000000{i}", 512, 1) for i, n in enumerate(names)]

    def chosen(limit):
        return [v.name for v in vms if name_filter(limit)(v)]

    assert chosen("web*") == ["web1", "web2"]
    assert chosen("eb") == ["web1", "web2", "Web3"]
    assert chosen("?b1") == ["db1"]
    assert chosen("(a+)+$") == []  # a substring, not a regular expression
    assert chosen("x[[]1]") == ["x[1]"]
    assert chosen(None) == names
    assert chosen("00000002-") == ["db1"] and chosen("00000002-0000-4000") == ["db1"]  # the start of the UUID
    assert chosen("0000") == [] and chosen("*-00000000000[45]") == []  # too short; globs are for names


@pytest.mark.parametrize("pattern", ["*a" * 63 + "*b", "[z-a]*", "[", "[!]", "[]-]*", "*" * 128])
def test_name_filter_costs_a_scan(pattern):
    matches = name_filter(pattern[:MAX_LIMIT])
    t0 = time.monotonic()
    for name in ("a" * 63 + "-", "a" * 64, "ab" * 32):
        matches(VM(name, "0" * 32, 512, 1))
    assert time.monotonic() - t0 < 0.5


def test_name_filter_is_bounded():
    with pytest.raises(BadRequest) as caught:
        name_filter("a" * (MAX_LIMIT + 1))
    assert caught.value.field == "limit"


def test_openapi_states_the_limits():
    doc = document("1", ("ipmi",))
    paths = doc["paths"]
    define = paths["/api/v1/vm"]["post"]
    xml = define["requestBody"]["content"]["application/json"]["schema"]["properties"]["xml"]
    assert xml["minLength"] == 1 and xml["maxLength"] == 512 * 1024
    assert {"413", "415", "503"} <= set(define["responses"])
    meta = paths["/api/v1/vm/{vm}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert meta["minProperties"] == 1
    settings = paths["/api/v1/cluster/status"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert settings["minProperties"] == 1
    fence = paths["/api/v1/node/{node}/fence-config"]["post"]["requestBody"]["content"]["application/json"]
    assert fence["schema"]["properties"]["entries"]["items"]["properties"]["fencer"]["enum"] == ["ipmi"]
    limit = next(p for p in paths["/api/v1/vm"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maxLength"] == MAX_LIMIT
    assert "X-PVC-Stale" in paths["/api/v1/cluster/status"]["get"]["responses"]["200"]["headers"]


class _Connection:
    connected = True

    def subscribe(self, fn) -> None:
        pass


class _Failing:
    """Operations whose every read fails as ZooKeeper can, mid-request."""

    def __init__(self, exc: Exception):
        self.store = type("Store", (), {"connection": _Connection()})()
        self.view = self
        self.exc = exc

    def caught_up(self, timeout):
        return False  # (as the view's: a sync that failed leaves the view as it stands)

    def snapshot(self):
        raise self.exc


@pytest.mark.parametrize("exc", [ConnectionLoss(), SessionExpiredError(), OperationTimeoutError(),
                                 KazooTimeoutError("timed out"), Unavailable("ZooKeeper did not answer within 0.8s")])
def test_a_zookeeper_failure_in_a_handler_is_503_never_500(exc):
    client = falcon.testing.TestClient(create_app(Deps(ops=_Failing(exc), api_keys=("k",))))
    resp = client.simulate_get("/api/v1/node", headers={"X-Api-Key": "k"})
    assert resp.status_code == 503 and set(resp.json) == {"message", "field"}, resp.text
    assert "ZooKeeper" in resp.json["message"]
    assert "X-PVC-Stale" in resp.headers  # and the next answers come from the view at once


def test_an_event_stream_behind_the_feeds_history_starts_again_from_a_snapshot():
    from pvcapi.feed import HISTORY, Feed

    feed = Feed(ops=None)
    feed._seq = 3 * HISTORY
    feed._history.extend((n, f"e{n}".encode()) for n in range(2 * HISTORY + 1, 3 * HISTORY + 1))
    assert feed.after(10, 0) is None  # events 11 .. 2*HISTORY are gone
    assert feed.after(2 * HISTORY, 0) == [f"e{n}".encode() for n in range(2 * HISTORY + 1, 3 * HISTORY + 1)]
    assert feed.after(3 * HISTORY - 1, 0) == [f"e{3 * HISTORY}".encode()]
    assert feed.after(3 * HISTORY, 0.01) == []  # nothing new


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/v1/node"), ("GET", "//api/v1/node"), ("GET", "///api/v1/vm"), ("GET", "//api/v1/events"),
    ("POST", "//api/v1/cluster/status"), ("DELETE", "//api/v1/vm/web1"), ("GET", "//api/v1/node/"),
])
def test_no_path_reaches_the_api_without_a_key(method, path):
    """The dashboard's files need no key; nothing else does, however its path is written (falcon routes
    "//api/v1/node" as "/api/v1/node")."""
    client = falcon.testing.TestClient(create_app(Deps(ops=_Failing(RuntimeError("read")), api_keys=("k",),
                                                       read_only_keys=("r",))))
    assert client.simulate_request(method, path).status_code == 401
    assert client.simulate_request(method, path, headers={"X-Api-Key": "nope"}).status_code == 401
    if method != "GET":
        resp = client.simulate_request(method, path, headers={"X-Api-Key": "r"}, json={"maintenance": True})
        assert resp.status_code == 403 and "read-only" in resp.json["message"]
    assert client.simulate_get("/dashboard").status_code == 200
    assert client.simulate_get("/dashboard/app.js").status_code == 200

"""The attacks of a careless or hostile client, against a real pvcapid under gunicorn.

Every one is answered with a clear 4xx ``{"message", "field"}`` (never a 5xx, never a hung
worker), and none of them changes anything in ZooKeeper.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse

import pytest

from pvccore.demo.cluster import sample_domain_xml


def send(live, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
         key: bool = True) -> tuple[int, dict | str, float]:
    """One raw request: any bytes, any headers. Returns (status, decoded JSON or text, seconds)."""
    url = urllib.parse.urlsplit(live.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    sent = {"Content-Type": "application/json", **({"X-Api-Key": live.key} if key else {}), **(headers or {})}
    t0 = time.monotonic()
    conn.request(method, "/api/v1" + path, body=body, headers=sent)
    resp = conn.getresponse()
    raw = resp.read()
    took = time.monotonic() - t0
    conn.close()
    try:
        return resp.status, json.loads(raw), took
    except ValueError:
        return resp.status, raw.decode(errors="replace"), took


def state(live) -> tuple:
    """What an attack must not change: settings, every VM document and XML, every node's states."""
    store = live.store
    vms = tuple((store.get_vm(n), store.get_vm_xml(n)) for n in store.vm_names())
    nodes = tuple((n.name, n.daemon_state, n.domain_state) for n in store.list_nodes())
    return store.get_config(), vms, nodes, store.get_fence_config("hv1")


@pytest.fixture(scope="module")
def victim(live):
    """A VM to aim at, and one whose name makes a backtracking regular expression explode."""
    for name in ("web1", "a" * 40 + "-"):
        status, answer, _ = send(live, "POST", "/vm", json.dumps({"xml": sample_domain_xml(name, 256, 1),
                                                                  "start": False}).encode())
        assert status == 201, answer
    return live


def define(inner: str) -> bytes:
    return json.dumps({"xml": f"<domain type='test'>{inner}<os><type>hvm</type></os></domain>"}).encode()


def deep(n: int) -> bytes:
    return b'{"node_autostart": ' + b"[" * n + b"]" * n + b"}"


ATTACKS = [
    # (what, method, path, body, status, field, message part)
    ("NaN setting", "POST", "/cluster/status", b'{"keepalive_limit": NaN}', 400, None, "not valid JSON"),
    ("Infinity setting", "POST", "/cluster/status", b'{"fence_grace": Infinity}', 400, None, "not valid JSON"),
    ("huge setting", "POST", "/cluster/status", b'{"keepalive_limit": 1e308}', 400, "keepalive_limit",
     "from 0.3 to 300"),
    ("fence loop settings", "POST", "/cluster/status", b'{"keepalive_limit": 0.5, "fence_grace": 0}', 400,
     "keepalive_limit", "3 keepalive intervals"),
    ("self-fence loop", "POST", "/cluster/status", b'{"self_fence_deadline": 0.5}', 400, "self_fence_deadline",
     "from 1 to 3600"),
    ("short self-fence", "POST", "/cluster/status", b'{"self_fence_deadline": 2}', 400, "self_fence_deadline",
     "session timeout plus two keepalive intervals"),
    ("empty settings", "POST", "/cluster/status", b"{}", 400, None, "give at least one setting"),
    ("deep JSON", "POST", "/vm/web1", deep(5000), 400, None, "nested too deeply"),
    ("5,000 digits", "POST", "/vm/web1", b'{"node_autostart": ' + b"9" * 5000 + b"}", 400, None,
     "an integer of more than 19 digits"),
    ("not UTF-8", "POST", "/vm/web1", b'{"node_selector": "\xff"}', 400, None, "not valid JSON"),
    ("empty metadata", "POST", "/vm/web1", b"{}", 400, None, "give at least one of"),
    ("empty XML", "POST", "/vm", b'{"xml": ""}', 400, "xml", "must not be empty"),
    ("XML too large", "POST", "/vm", json.dumps({"xml": "<domain>" + " " * 600_000 + "</domain>"}).encode(), 400,
     "xml", "the limit is 524288 bytes"),
    ("name with newline", "GET", "/vm/web1%0a", None, 400, "vm", "invalid VM name"),
    ("name with newline, meta", "POST", "/vm/web1%0a/meta", b'{"node_autostart": true}', 400, "vm",
     "invalid VM name"),
    ("name with newline, delete", "DELETE", "/vm/web1%0a?force=true", None, 400, "vm", "invalid VM name"),
    ("node name with newline", "GET", "/node/hv1%0a", None, 400, "node", "invalid node name"),
    ("node name, flush", "POST", "/node/hv1%0a/domain-state", b'{"state": "flush"}', 400, "node",
     "invalid node name"),
    ("bad name, state", "POST", "/vm/..x/state", b'{"state": "start"}', 400, "vm", "invalid VM name"),
    ("long filter", "GET", "/vm?limit=" + "a" * 200, None, 400, "limit", "at most 128"),
    ("superscript memory", "POST", "/vm", define("<name>x1</name><memory>²</memory>"), 400, "xml",
     "ASCII digits"),
    ("superscript vcpus", "POST", "/vm", define("<name>x1</name><memory>1024</memory><vcpu>²</vcpu>"), 400, "xml",
     "<vcpu> must be a whole number"),
    ("400-digit bytes", "POST", "/vm", define("<name>x1</name><memory unit='b'>" + "9" * 400 + "</memory>"), 400,
     "xml", "<memory> must be a whole number"),
    ("name with spaces", "POST", "/vm", define("<name> ws1 </name><memory>1024</memory>"), 400, "xml",
     "spaces around it"),
    ("two names", "POST", "/vm", define("<name>ws1</name><name>ws2</name><memory>1024</memory>"), 400, "xml",
     "2 <name> elements"),
    ("a million vCPUs", "POST", "/vm", define("<name>x1</name><memory>1024</memory><vcpu>1000000</vcpu>"), 400,
     "xml", "from 1 to 1024"),
    ("more vCPUs than any node", "POST", "/vm", define("<name>x1</name><memory>1024</memory><vcpu>16</vcpu>"),
     400, "xml", "the largest node it may run on has 8 CPUs"),
    ("more memory than any node", "POST", "/vm", define("<name>x1</name><memory unit='GiB'>64</memory>"),
     400, "xml", "the largest node it may run on has 16384 MiB"),
    ("10^9 MiB on a VM", "PUT", "/vm/web1", define("<name>web1</name><memory unit='MiB'>1000000000</memory>"),
     400, "xml", "domain memory must be from 1 MiB"),
    # Numbers: none may reach the core as Infinity, or as an integer too long to convert (it did: 500).
    ("4,000-digit setting", "POST", "/cluster/status", b'{"keepalive_limit": ' + b"9" * 4000 + b"}", 400, None,
     "an integer of more than 19 digits"),
    ("1e400 setting", "POST", "/cluster/status", b'{"keepalive_limit": 1e400}', 400, None,
     "a number out of range: 1e400"),
    ("-1e400 setting", "POST", "/cluster/status", b'{"fence_grace": -1e400}', 400, None, "a number out of range"),
    ("NaN fence param", "POST", "/node/hv1/fence-config",
     b'{"entries": [{"fencer": "ipmi", "params": {"port": NaN}}]}', 400, None, "not valid JSON"),
    # Strings JSON lets through and UTF-8 cannot carry (they did: 500 when echoed or measured).
    ("unpaired surrogate XML", "POST", "/vm", b'{"xml": "\\ud800"}', 400, None, "not valid Unicode"),
    ("unpaired surrogate key", "POST", "/vm/web1", b'{"x\\udfff": 1}', 400, None, "not valid Unicode"),
    # Nesting within what the parser takes, but deeper than any pvc body (it is serialised again downstream).
    ("deep fence params", "POST", "/node/hv1/fence-config",
     b'{"entries": [{"fencer": "ipmi", "params": {"host": ' + b"[" * 900 + b"]" * 900 + b"}}]}", 400, None,
     "nested too deeply"),
    ("33 levels", "POST", "/vm/web1", deep(32), 400, None, "nested too deeply (more than 32 levels)"),
    ("not an object", "POST", "/vm", b"[]", 400, None, "must be a JSON object"),
    ("empty settings, no body", "POST", "/cluster/status", None, 400, None, "give at least one setting"),
    ("unknown setting", "POST", "/cluster/status", b'{"keepalive": 5}', 400, "keepalive", "unknown field"),
    ("unknown fencer", "POST", "/node/hv1/fence-config", b'{"entries": [{"fencer": "nope", "params": {}}]}', 400,
     "entries", "unknown fencer 'nope'"),
    ("empty metadata, meta", "POST", "/vm/web1/meta", b"{}", 400, None, "give at least one of"),
    # A trailing newline in a path name, on every method (the name check once accepted it).
    ("name with newline, post", "POST", "/vm/web1%0a", b'{"node_autostart": true}', 400, "vm", "invalid VM name"),
    ("name with newline, put", "PUT", "/vm/web1%0a", define("<name>web1</name><memory>1024</memory>"), 400, "vm",
     "invalid VM name"),
    ("name with newline, state", "POST", "/vm/web1%0a/state", b'{"state": "stop"}', 400, "vm", "invalid VM name"),
    ("name with newline, placement", "GET", "/vm/web1%0a/placement", None, 400, "vm", "invalid VM name"),
    ("node name, delete", "DELETE", "/node/hv1%0a", None, 400, "node", "invalid node name"),
    ("node name, fence config", "GET", "/node/hv1%0a/fence-config", None, 400, "node", "invalid node name"),
    ("node name, set fence config", "POST", "/node/hv1%0a/fence-config", b'{"entries": []}', 400, "node",
     "invalid node name"),
    ("node name, primary", "POST", "/node/hv1%0a/coordinator-state", b'{"state": "primary"}', 400, "node",
     "invalid node name"),
    ("NUL in a name", "GET", "/vm/web1%00", None, 400, "vm", "invalid VM name"),
]


@pytest.mark.parametrize("what, method, path, body, status, field, message", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_is_a_clear_error_and_changes_nothing(victim, what, method, path, body, status, field, message):
    before = state(victim)
    got, answer, _ = send(victim, method, path, body)
    assert got == status, answer
    assert isinstance(answer, dict) and set(answer) == {"message", "field"}, answer
    assert answer["field"] == field and message in answer["message"], answer
    assert state(victim) == before


def test_a_second_vm_with_the_same_uuid_is_refused(victim):
    uuid = victim.store.get_vm("web1").uuid
    before = state(victim)
    got, answer, _ = send(victim, "POST", "/vm", define(f"<name>twin</name><uuid>{uuid}</uuid><memory>1024</memory>"))
    assert got == 409 and answer["field"] == "xml" and "already VM 'web1'" in answer["message"], answer
    assert state(victim) == before


def test_growing_a_running_vm_past_its_node_is_refused(victim):
    for name, mib in (("grow1", 4096), ("ballast", 8192)):  # hv2 (16 GiB) left with 4 GiB free
        got, answer, _ = send(victim, "POST", "/vm", json.dumps({"xml": sample_domain_xml(name, mib, 1),
                                                                 "target": "hv2"}).encode())
        assert got == 201, answer
    assert victim.view.wait_for(lambda c: {"grow1", "ballast"} <= set(c.nodes["hv2"].running_vms), 30)
    before = state(victim)
    got, answer, _ = send(victim, "PUT", "/vm/grow1", define("<name>grow1</name><memory unit='MiB'>12000</memory>"))
    assert got == 409 and answer["field"] == "xml" and "does not fit" in answer["message"], answer
    assert state(victim) == before
    for name in ("grow1", "ballast"):
        send(victim, "DELETE", f"/vm/{name}?force=true")


def test_oversized_body_is_refused_before_it_is_read(victim):
    before = state(victim)
    url = urllib.parse.urlsplit(victim.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    # Announce 100 MB and send none of it: the answer comes at once, from the headers alone.
    conn.putrequest("POST", "/api/v1/vm")
    for k, v in (("X-Api-Key", victim.key), ("Content-Type", "application/json"), ("Content-Length", "100000000")):
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    assert resp.status == 413 and "the limit is 1048576 bytes" in answer["message"], answer
    assert state(victim) == before


def test_a_large_domain_xml_is_refused_by_its_size_before_it_is_read(victim):
    """A 1.1 MB domain XML once reached ZooKeeper and failed there (500 ConnectionLoss)."""
    before = state(victim)
    body = json.dumps({"xml": define("<name>big1</name><memory>1024</memory>").decode() + " " * 1_100_000}).encode()
    got, answer, _ = send(victim, "POST", "/vm", body)
    assert got == 413 and answer == {"message": f"the request body is {len(body)} bytes; the limit is 1048576 "
                                                "bytes (1 MiB)", "field": None}, answer
    assert state(victim) == before


def chunked(live, path: str, first_chunk: bytes) -> tuple[int, dict]:
    """A POST with a chunked body (no Content-Length) of which only the first chunk is ever sent."""
    url = urllib.parse.urlsplit(live.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(f"POST /api/v1{path} HTTP/1.1\r\nHost: x\r\nX-Api-Key: {live.key}\r\nContent-Type: "
                  f"application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                  + b"%x\r\n%s\r\n" % (len(first_chunk), first_chunk))
        resp = http.client.HTTPResponse(s)
        resp.begin()
        return resp.status, json.loads(resp.read())


def test_a_chunked_body_is_refused_unread(victim):
    """Without a Content-Length Falcon read no body, and answered as if a field were missing; now the
    answer comes at once, without waiting for (or reading) the rest of the body."""
    before = state(victim)
    for path, first in (("/vm", b'{"xml": "' + b" " * 65536), ("/vm/web1/state", b'{"state": "stop"}')):
        got, answer = chunked(victim, path, first)
        assert got == 400 and answer == {"message": "send the request body with a Content-Length: chunked bodies "
                                                    "are not taken", "field": None}, answer
    assert state(victim) == before


def test_a_body_that_is_not_json_is_refused_by_its_type(victim):
    before = state(victim)
    got, answer, _ = send(victim, "POST", "/cluster/status", b"keepalive_limit=NaN",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert got == 415 and answer["field"] is None and "unsupported media type" in answer["message"], answer
    assert state(victim) == before


@pytest.mark.parametrize("pattern", ["*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b", "[z-a]*",
                                     "[", "[!]", "[]-]*", "(a|a)*$", "\\", "%", "\x00"])
def test_glob_filters_cost_a_scan_of_the_names(victim, pattern):
    got, answer, took = send(victim, "GET", "/vm?limit=" + urllib.parse.quote(pattern))
    assert got == 200 and answer == [], (pattern, answer)
    assert took < 2.0, took


def test_backtracking_pattern_is_a_substring_and_answers_at_once(victim):
    got, answer, took = send(victim, "GET", "/vm?limit=" + urllib.parse.quote("(a+)+$"))
    assert got == 200 and answer == []
    assert took < 2.0, took  # a regular expression would backtrack for minutes on the 'aaa...a-' VM
    got, answer, _ = send(victim, "GET", "/vm?limit=" + urllib.parse.quote("a*-"))
    assert got == 200 and [v["name"] for v in answer] == ["a" * 40 + "-"]


def test_unauthenticated_attacks_learn_nothing(victim):
    for method, path, body in (("POST", "/cluster/status", b'{"keepalive_limit": NaN}'),
                               ("GET", "/vm/web1%0a", None), ("POST", "/vm", b"[" * 5000)):
        got, answer, _ = send(victim, method, path, body, key=False)
        assert got == 401 and answer["field"] is None, answer


def test_no_answer_is_ever_invalid_json(victim):
    """NaN never reaches a stored setting, so no answer can carry it (it did: GET /cluster/status)."""
    got, answer, _ = send(victim, "GET", "/cluster/status")
    assert got == 200 and isinstance(answer, dict)
    assert json.dumps(answer, allow_nan=False)

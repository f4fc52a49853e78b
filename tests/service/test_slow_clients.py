"""Slow, stalled and waiting clients do not take the API from others (a real pvcapid under gunicorn).

The API here has 2 workers of 8 threads and a 3 s request timeout: more stalled clients than
threads would have made every request wait with gunicorn's own gthread worker. Bounds on answer
times are generous (a loaded 2-core machine); the performance figures are bench/api.py's.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pvccli.client import ApiError, Client
from pvccore.demo.zookeeper import free_port

from tests.conftest import make_node

STALLERS = 40  # more than every thread of the API (2 workers x 8 threads)
REQUEST_TIMEOUT = 3.0
PROMPT = 2.0  # seconds: the most a health answer may take while others stall


class Api:
    """A running pvcapid: where it listens, a client for it, and raw connections to it."""

    def __init__(self, port: int, client: Client, tls: ssl.SSLContext | None, log: Path):
        self.port, self.client, self.tls, self.log = port, client, tls, log

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        return self.tls.wrap_socket(s, server_hostname="127.0.0.1") if self.tls else s

    def timed_health(self) -> float:
        t0 = time.monotonic()
        self.client.health()
        return time.monotonic() - t0

    def worst_health(self, probes: int = 20) -> float:
        return max(self.timed_health() for _ in range(probes))


def start_api(zk_server, zk_root, work: Path, tls: bool = False):
    port = free_port()
    lines = [f'zookeeper_hosts = "{zk_server.hosts}"', f'zookeeper_root = "{zk_root}"', f'listen = "127.0.0.1:{port}"',
             "workers = 2", "threads = 8", f"request_timeout = {REQUEST_TIMEOUT}", 'api_keys = ["k"]',
             "wait_timeout = 20.0"]
    context = None
    if tls:
        cert, key = work / "api.crt", work / "api.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
        lines += [f'tls_cert = "{cert}"', f'tls_key = "{key}"']
        context = ssl.create_default_context(cafile=str(cert))
    cfg = work / "api.toml"
    cfg.write_text("\n".join(lines) + "\n")
    log = open(work / "api.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "pvcapid"), "-c", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    scheme = "https" if tls else "http"
    client = Client(f"{scheme}://127.0.0.1:{port}", "k", timeout=10, ca=str(work / "api.crt") if tls else None)
    deadline = time.monotonic() + 30
    while True:  # gunicorn starting in another process: poll its health under a deadline
        try:
            client.health()
            break
        except ApiError:
            assert proc.poll() is None and time.monotonic() < deadline, (work / "api.log").read_text()
            time.sleep(0.1)
    return proc, log, Api(port, client, context, work / "api.log")


@pytest.fixture
def api(zk_server, zk_root, tmp_path):
    proc, log, api = start_api(zk_server, zk_root, tmp_path)
    yield api
    proc.terminate()
    proc.wait(20)
    log.close()


@pytest.fixture
def tls_api(zk_server, zk_root, tmp_path):
    proc, log, api = start_api(zk_server, zk_root, tmp_path, tls=True)
    yield api
    proc.terminate()
    proc.wait(20)
    log.close()


HEAD = b"POST /api/v1/vm HTTP/1.1\r\nHost: x\r\nX-Api-Key: k\r\nContent-Type: application/json\r\n"
STALLS = {
    "in its headers": b"POST /api/v1/vm HTTP/1.1\r\nHost: x\r\nX-Api-Key: k\r\n",
    "in its body": HEAD + b"Content-Length: 1000\r\n\r\n{\"xml\": \"",
    "in its body, length first": b"POST /api/v1/vm HTTP/1.1\r\nContent-Length: 1000\r\nHost: x\r\nX-Api-Key: k\r\n\r\n{",
    "in a pipelined request": b"GET /api/v1 HTTP/1.1\r\nHost: x\r\n\r\n" + HEAD + b"Content-Length: 100\r\n\r\n{",
    "before its first byte": b"",
}


def read_all(s: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (within ``timeout`` seconds)."""
    s.settimeout(timeout)
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    return answer


def assert_timed_out(answer: bytes) -> None:
    last = answer[answer.rfind(b"HTTP/1.1 "):]
    assert last.startswith(b"HTTP/1.1 408"), answer[:300]
    assert json.loads(last.split(b"\r\n\r\n", 1)[1])["message"].startswith("the request was not received in time")


@pytest.mark.parametrize("kind", ["plain", "tls"])
def test_stalled_clients_hold_no_thread_and_are_closed_after_the_request_timeout(kind, request):
    api = request.getfixturevalue("api" if kind == "plain" else "tls_api")
    kinds = list(STALLS)
    stalled = []
    for i in range(STALLERS):
        how = kinds[i % len(kinds)]
        s = api.connect()
        s.sendall(STALLS[how])
        stalled.append((how, s, time.monotonic()))
    if api.tls:  # and clients that stall in the TLS handshake itself
        for _ in range(STALLERS // 4):
            s = socket.create_connection(("127.0.0.1", api.port))
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
            stalled.append(("in its TLS handshake", s, time.monotonic()))
    try:
        # With gunicorn's own gthread, every thread would be taken by now; here each answer is prompt.
        worst = api.worst_health()
        assert worst < PROMPT, worst
        # Past the request timeout, the server answers 408 and closes each one (a stalled TLS
        # handshake cannot carry an answer: it is closed).
        for how, s, since in stalled:
            answer = read_all(s, REQUEST_TIMEOUT + 10)
            took = time.monotonic() - since
            assert took > REQUEST_TIMEOUT - 0.5, (how, took)
            if how == "in a pipelined request":
                assert answer.startswith(b"HTTP/1.1 200"), answer[:200]  # the request that came whole
            if how == "in its TLS handshake":
                assert answer == b""
            else:
                assert_timed_out(answer)
    finally:
        for _, s, _ in stalled:
            s.close()


def test_a_client_sending_a_byte_now_and_then_gets_no_more_time(api):
    """The deadline is for the whole request, not for each read."""
    s = api.connect()
    request = b"POST /api/v1/vm HTTP/1.1\r\nHost: x\r\nX-Api-Key: k\r\nContent-Length: 10\r\n\r\n{\"xml\": 1}"
    t0 = time.monotonic()
    closed = threading.Event()

    def trickle():
        for byte in request[:-1]:
            if closed.is_set():
                return
            try:
                s.send(bytes([byte]))
            except OSError:
                return
            time.sleep(0.25)  # the pace of the slow client (under the timeout), not synchronisation

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        answer = read_all(s, REQUEST_TIMEOUT + 10)
        took = time.monotonic() - t0
    finally:
        closed.set()
        sender.join(5)
        s.close()
    assert_timed_out(answer)
    assert REQUEST_TIMEOUT - 0.5 < took < REQUEST_TIMEOUT + 2.5, took


def test_a_request_sent_slowly_but_whole_is_answered(api):
    s = api.connect()
    body = json.dumps({"state": "start"}).encode()
    request = (HEAD.replace(b"/api/v1/vm", b"/api/v1/vm/nosuch/state") + b"Content-Length: " + str(len(body)).encode()
               + b"\r\nConnection: close\r\n\r\n" + body)
    for i in range(0, len(request), 7):  # a slow link: the request arrives in pieces
        s.sendall(request[i:i + 7])
        time.sleep(0.01)  # the pace of the slow client, not synchronisation
    answer = read_all(s, 10)
    s.close()
    assert answer.startswith(b"HTTP/1.1 404"), answer[:200]


def test_bodies_the_api_does_not_read_are_answered_at_once_and_the_connection_closed(api):
    """Over 1 MiB by its length (413) or chunked (read by length, so none): answered without waiting
    for the body, with "Connection: close", and no thread waits for the rest."""
    heads = {
        b"HTTP/1.1 413": HEAD + b"Content-Length: 2000000\r\n\r\n{\"xml\": \"",
        b"HTTP/1.1 400": HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"xml",
    }
    conns = []
    for i in range(STALLERS):
        status, head = list(heads.items())[i % 2]
        s = api.connect()
        s.sendall(head)
        conns.append((status, s))
    try:
        worst = api.worst_health()
        assert worst < PROMPT, worst
        for status, s in conns:
            t0 = time.monotonic()
            answer = read_all(s, 10)
            assert answer.startswith(status) and b"\r\nConnection: close\r\n" in answer, answer[:300]
            assert time.monotonic() - t0 < 2.0 + 3 * PROMPT  # closed after the answer (the server lingers 2 s at most)
    finally:
        for _, s in conns:
            s.close()


def test_expect_100_continue_is_answered_by_the_event_loop(api):
    body = json.dumps({"xml": "<domain>" + "x" * 3000 + "</domain>"}).encode()
    s = api.connect()
    s.sendall(HEAD + b"Expect: 100-continue\r\nConnection: close\r\nContent-Length: " + str(len(body)).encode()
              + b"\r\n\r\n")
    s.settimeout(PROMPT)
    assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"  # at once: curl waits a second without it
    s.sendall(body)
    answer = read_all(s, 10)
    s.close()
    assert answer.startswith(b"HTTP/1.1 400") and b"100 Continue" not in answer, answer[:300]  # just once


def test_a_client_that_does_not_take_its_answer_is_cut_off(api):
    """Many answers asked for on one connection and none read: the thread writing them gives up
    after the request timeout and closes the connection, instead of waiting for the client."""
    ask = b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\nX-Api-Key: k\r\n\r\n"
    readers = []
    for _ in range(STALLERS // 2):  # more than the threads: some wait for a thread that gave up
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", api.port))
        s.sendall(ask * 500)  # far more than the kernel's buffers hold
        readers.append(s)
    try:
        deadline = time.monotonic() + 60
        while api.log.read_text().count("the answer was not taken") < len(readers):
            assert time.monotonic() < deadline, api.log.read_text()[-3000:]
            time.sleep(0.2)  # polling the server's log
        assert api.worst_health(5) < PROMPT
        for s in readers:  # each was closed by the server, short of the 500 answers
            assert read_all(s, 30).count(b"HTTP/1.1 200 OK") < 500
    finally:
        for s in readers:
            s.close()


def test_waiting_requests_leave_threads_for_others(api, store):
    """More wait=true requests than threads: the excess answer 202 at once, health stays prompt."""
    from pvccore.demo.cluster import sample_domain_xml
    from pvccore.domain.models import VM

    # A running VM whose node has no daemon: a stop is accepted and never observed.
    store.create_node(make_node("hv1", running_vms=("idle",)))
    store.create_vm(VM("idle", "u-1", 256, 1, node="hv1", state="start"), sample_domain_xml("idle", 256, 1))
    body = json.dumps({"state": "stop", "wait": True}).encode()
    waiters = []
    for _ in range(24):  # each would wait the whole wait_timeout (20 s)
        s = api.connect()
        s.sendall(b"POST /api/v1/vm/idle/state HTTP/1.1\r\nHost: x\r\nX-Api-Key: k\r\nContent-Type: application/json"
                  b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        waiters.append(s)
    try:
        worst = api.worst_health()
        assert worst < PROMPT, worst
        quick = 0
        for s in waiters:
            s.settimeout(0.5)
            try:
                answer = s.recv(4096)
            except socket.timeout:
                continue
            assert answer.startswith(b"HTTP/1.1 202") and b"not waiting for it" in answer, answer
            quick += 1
        assert quick >= 24 - 2 * 4, quick  # at most half the threads of each worker wait
    finally:
        for s in waiters:
            s.close()

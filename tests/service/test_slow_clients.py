"""Slow and waiting clients do not take the API from others (a real pvcapid under gunicorn)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from pvccli.client import ApiError, Client
from pvccore.localzk import free_port

STALLERS = 40  # more than every thread of the API (2 workers x 8 threads here)


@pytest.fixture
def api(zk_server, zk_root, tmp_path):
    """pvcapid with few threads and a short request timeout, so that exhausting it would be cheap."""
    port = free_port()
    cfg = tmp_path / "api.toml"
    cfg.write_text(f'zookeeper_hosts = "{zk_server.hosts}"\nzookeeper_root = "{zk_root}"\n'
                   f'listen = "127.0.0.1:{port}"\nworkers = 2\nthreads = 8\nrequest_timeout = 3.0\n'
                   f'api_keys = ["k"]\nwait_timeout = 20.0\n')
    log = open(tmp_path / "api.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "pvcapid"), "-c", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    client = Client(f"http://127.0.0.1:{port}", "k", timeout=5)
    deadline = time.monotonic() + 30
    while True:  # gunicorn starting in another process: poll its health under a deadline
        try:
            client.health()
            break
        except ApiError:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "api.log").read_text()
            time.sleep(0.1)
    yield client, port
    proc.terminate()
    proc.wait(20)
    log.close()


def stall(port: int, stage: str) -> socket.socket:
    """A client that starts a request and stops: in its headers, or in its body."""
    s = socket.create_connection(("127.0.0.1", port))
    if stage == "headers":
        s.sendall(b"POST /api/v1/vm HTTP/1.1\r\nHost: x\r\nX-Api-Key: k\r\n")
    else:
        s.sendall(b"POST /api/v1/vm HTTP/1.1\r\nHost: x\r\nX-Api-Key: k\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"xml\": \"")
    return s


def timed_health(client) -> float:
    t0 = time.monotonic()
    client.health()
    return time.monotonic() - t0


def test_stalled_clients_hold_no_thread_and_are_closed_after_the_request_timeout(api):
    client, port = api
    stalled = [stall(port, "headers" if i % 2 else "body") for i in range(STALLERS)]
    try:
        # Every thread would be taken by now with gunicorn's own gthread; here each answer is prompt.
        worst = max(timed_health(client) for _ in range(20))
        assert worst < 2.0, worst
        # Past the request timeout, each stalled client gets a 408 and its connection is closed.
        for s in stalled:
            s.settimeout(10)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["message"].startswith("the request was not received")
    finally:
        for s in stalled:
            s.close()


def test_a_request_sent_slowly_but_whole_is_answered(api):
    client, port = api
    s = socket.create_connection(("127.0.0.1", port))
    body = json.dumps({"state": "start"}).encode()
    request = (b"POST /api/v1/vm/nosuch/state HTTP/1.1\r\nHost: x\r\nX-Api-Key: k\r\nContent-Type: application/json\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    for i in range(0, len(request), 7):  # a slow link: the request arrives in pieces
        s.sendall(request[i:i + 7])
        time.sleep(0.01)  # the pace of the slow client, not synchronisation
    s.settimeout(10)
    answer = b""
    while chunk := s.recv(4096):
        answer += chunk
    s.close()
    assert answer.startswith(b"HTTP/1.1 404"), answer[:200]


def test_waiting_requests_leave_threads_for_others(api, store):
    """More wait=true requests than threads: the excess answer 202 at once, health stays prompt."""
    from pvccore.localcluster import sample_domain_xml
    from pvccore.models import VM

    client, port = api
    store.create_vm(VM("idle", "u-1", 256, 1, node="nowhere", state="stop"), sample_domain_xml("idle", 256, 1))
    url = urllib.parse.urlsplit(client.url)
    body = json.dumps({"state": "start", "wait": True}).encode()
    waiters = []
    for _ in range(24):  # nothing runs the VM: each would wait the whole wait_timeout
        s = socket.create_connection((url.hostname, url.port))
        s.sendall(b"POST /api/v1/vm/idle/state HTTP/1.1\r\nHost: x\r\nX-Api-Key: k\r\nContent-Type: application/json"
                  b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        waiters.append(s)
    try:
        worst = max(timed_health(client) for _ in range(20))
        assert worst < 2.0, worst
        quick = 0
        for s in waiters:
            s.settimeout(0.5)
            try:
                if s.recv(4096).startswith(b"HTTP/1.1 202"):
                    quick += 1
            except socket.timeout:
                pass
        assert quick >= 24 - 2 * 4, quick  # at most half the threads of each worker wait
    finally:
        for s in waiters:
            s.close()

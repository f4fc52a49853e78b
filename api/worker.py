"""pvcapid's gunicorn worker: gthread, with each request read whole before a thread is given to it.

Why. gunicorn's gthread worker hands a connection to a thread as soon as its first bytes arrive,
and the thread then reads the rest with blocking calls and no deadline: eight clients that sent
their headers and stalled held all the threads, health included, for 100 s.

How. This worker's event loop (the one gthread already runs to accept connections and watch
kept-alive ones) also reads requests: without blocking, alongside every other connection, the
TLS handshake included. A connection takes a thread only once its request is whole: the head,
and the body its ``Content-Length`` announces. A request not whole within ``request_timeout``
seconds of its first byte (of the connection, for the first one) is answered 408 and closed: a
total deadline, which a client sending a byte now and then does not push back. A head larger
than :data:`MAX_HEAD` is answered 431 and closed. So a slow or stalled client costs a socket and
a buffer, never a thread, whatever the number of them (up to gunicorn's ``worker_connections``
per worker; beyond that, new connections wait in the listen backlog until deadlines free some).

Some requests are handed over before their body, because the API answers them without it:
a body over :data:`~pvcapi.guards.MAX_BODY` (the API refuses it with 413 from its length) and
a chunked one (the API reads bodies by their length, so it sees none). Their connections close
after the answer, without reading the rest of the body in the thread. A request that announces
``Expect: 100-continue`` gets its ``100 Continue`` from the event loop, so that a client such as
curl sends its body at once rather than after a second's wait.

In the thread, the socket has a timeout of ``request_timeout`` seconds too: a client that does not
take its answer is cut off after that long (per part of the answer) instead of holding the thread.

The other half of keeping threads for everyone: requests that wait for a change (``wait=true``,
up to ``wait_timeout`` seconds) are capped per worker, at half its threads (see ``Deps.wait`` in
:mod:`pvcapi.app`); beyond the cap they answer 202 at once. Slow clients then hold no thread and
waiting ones at most half of them, so the other half always answers. This was chosen over an
async server (the API and kazoo are synchronous) and over bare socket timeouts (a per-read timeout
is defeated by a byte every few seconds, and still spends a thread per slow client).

Finally, gthread closes a finished connection "gracefully" by waiting, in its event loop, up to
2 s for the client to close its side: a client that kept its socket open after its answer stalled
every other connection of the worker for those 2 s. Here that wait happens in the event loop
without blocking it (:meth:`GuardedThreadWorker.linger`).
"""

from __future__ import annotations

import errno
import json
import resource
import socket
import ssl
import time
from functools import partial
from selectors import EVENT_READ, EVENT_WRITE

from gunicorn import http
from gunicorn.sock import ssl_context
from gunicorn.workers.gthread import TConn, ThreadWorker

from .feed import STOPPING
from .guards import MAX_BODY

MAX_HEAD = 64 * 1024  # bytes of request line and headers
REQUEST_TIMEOUT = 10.0  # seconds; pvcapid sets it from its `request_timeout` setting before forking workers
LINGER = 2.0  # seconds a closed connection waits for the client's side to close (gunicorn's own figure)
FD_RESERVE = 128  # files a worker keeps for itself (ZooKeeper, pipes, logs), beyond its connections
FD_PAUSE = 0.5  # seconds a worker stops accepting when the system refuses it another file

#: what the event loop does with a request read so far
MORE, WHOLE, EARLY, TOO_LARGE = "more", "whole", "early", "too large"


def _answer(status: str, message: str) -> bytes:
    body = json.dumps({"message": message, "field": None}).encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


_TIMED_OUT = _answer("408 Request Timeout", "the request was not received in time; try again")
_HEAD_TOO_LARGE = _answer("431 Request Header Fields Too Large",
                          f"the request line and headers are over {MAX_HEAD} bytes")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def examine(buf: bytes) -> tuple[str, int, bool]:
    """What to do with ``buf``, the start of a request: ``(verdict, length, expects_continue)``.

    The verdict is :data:`MORE` (its head is not all there yet), :data:`WHOLE` once ``length``
    bytes (head and body) are there, :data:`EARLY` (hand it over now: its body is not read by the
    API, or its head is malformed and the parser refuses it without reading more) or
    :data:`TOO_LARGE` (a head over :data:`MAX_HEAD`). ``expects_continue``: the client waits
    for ``100 Continue`` before it sends its body.
    """
    end = buf.find(b"\r\n\r\n")
    bare = buf.find(b"\n\n")
    if end < 0 and bare < 0:
        return (TOO_LARGE if len(buf) > MAX_HEAD else MORE), 0, False
    if end < 0 or 0 <= bare < end:  # lines ending in a bare LF: gunicorn refuses them from the head alone
        return EARLY, 0, False
    if end > MAX_HEAD:
        return TOO_LARGE, 0, False
    lines = buf[:end].split(b"\r\n")
    fields: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields.setdefault(name.lower(), []).append(value.strip(b" \t"))
    if b"transfer-encoding" in fields:
        return EARLY, 0, False
    lengths = fields.get(b"content-length", [b"0"])
    if len(lengths) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 12:
        return EARLY, 0, False  # gunicorn refuses it from the head
    size = int(lengths[0])
    if size > MAX_BODY:
        return EARLY, 0, False  # the API answers 413 from the length
    expects = (size > 0 and lines[0].endswith(b" HTTP/1.1")
               and [v.lower() for v in fields.get(b"expect", [])] == [b"100-continue"])
    return WHOLE, end + 4 + size, expects


def _receive(sock) -> bytes | None:
    """What ``sock`` holds now without blocking (``b""``: nothing yet), or None once the client closed
    (or the connection failed). A TLS socket is drained of the bytes it decrypted already too: they
    would not make the socket readable again."""
    got = []
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(got) or None
            got.append(data)
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                break
    except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        pass
    except OSError:
        return None
    return b"".join(got)


class _Conn(TConn):
    """A connection, with what the event loop has read of its next request."""

    def __init__(self, worker: "GuardedThreadWorker", *args):
        super().__init__(*args)
        self.worker = worker
        self.prebuf: bytearray | None = None  # the request read so far (None: not being read)
        self.length = 0  # bytes of head and body once the head is in (0: not yet)
        self.whole = True  # False: handed over before its body; the connection closes after the answer
        self.continued = False  # the event loop sent "100 Continue"
        self.shaken = not worker.cfg.is_ssl  # the TLS handshake is done (or there is none)

    def init(self):
        """Called by the thread before it reads or writes: every blocking call on the socket is bounded."""
        super().init()
        self.sock.settimeout(REQUEST_TIMEOUT)

    def close(self, graceful=False):
        if graceful:
            self.worker.linger(self)
        else:
            super().close()


class GuardedThreadWorker(ThreadWorker):
    """gthread, reading requests in the event loop under a deadline (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reading: dict[_Conn, float] = {}  # connections being read -> their deadline
        self.lingering: dict[TConn, float] = {}  # half-closed connections -> when to close them anyway
        self.paused_until = 0.0  # no accepting before then: the process is out of files

    def init_process(self):
        """Room for every connection: the soft limit on open files is raised for them (Debian's default
        of 1024 is about gunicorn's 1,000 connections a worker), or the connections are capped."""
        want = self.worker_connections + FD_RESERVE
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < want:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE,
                                   (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
            except (ValueError, OSError):
                pass
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if soft < want:
                self.worker_connections = max(self.cfg.threads + 1, soft - FD_RESERVE)
                self.max_keepalived = self.worker_connections - self.cfg.threads
                self.log.warning("Open files limited to %d: at most %d connections a worker", soft,
                                 self.worker_connections)
        super().init_process()

    def run(self):
        try:
            super().run()
        finally:  # however the loop ended (the master gone too): the streams end, not after their lifetime
            STOPPING.set()

    def handle_exit(self, sig, frame):
        """Told to stop: the event streams end now (each holds a thread the stop would otherwise wait for)."""
        STOPPING.set()
        super().handle_exit(sig, frame)

    def set_accept_enabled(self, enabled):
        super().set_accept_enabled(enabled and time.monotonic() >= self.paused_until)

    # -- reading requests in the event loop ------------------------------------------------------

    def accept(self, listener):
        try:
            sock, addr = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # Out of files (or memory): wait for connections to close rather than fail the worker
                # (and every request it holds); run() enables accepting again after the pause.
                self.log.warning("Not accepting connections for %gs: %s", FD_PAUSE, exc.strerror)
                self.paused_until = time.monotonic() + FD_PAUSE
                self.set_accept_enabled(False)
            elif exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = _Conn(self, self.cfg, sock, addr, listener.getsockname())
        if self.cfg.is_ssl:
            try:  # the context is made per connection, as gunicorn does: a renewed certificate is used at once
                conn.sock = ssl_context(self.cfg).wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False,
                    suppress_ragged_eofs=self.cfg.suppress_ragged_eofs)
            except Exception:  # the loop must go on (a bad certificate file, say): say why, drop this one
                self.log.exception("TLS setup failed")
                self.nr_conns -= 1
                sock.close()
                return
        self._read_request(conn)

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection sends its next request: read it here too."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read_request(conn)

    def enqueue_req(self, conn):
        if conn.prebuf is None:
            # Not read here: a kept-alive connection whose next request the parser holds part of
            # already (pipelined behind the last one). Read the rest here as well.
            self._read_request(conn, conn.parser.unreader.take_buffered())
            return
        super().enqueue_req(conn)

    def _read_request(self, conn: _Conn, start: bytes = b"") -> None:
        conn.prebuf, conn.length, conn.whole, conn.continued = bytearray(), 0, True, False
        self.reading[conn] = time.monotonic() + REQUEST_TIMEOUT
        conn.sock.setblocking(False)
        self.poller.register(conn.sock, EVENT_READ, partial(self._on_event, conn))
        if start:
            self._take(conn, start)

    def _on_event(self, conn: _Conn, sock) -> None:
        if not conn.shaken:
            try:
                sock.do_handshake()
            except ssl.SSLWantReadError:
                self.poller.modify(sock, EVENT_READ, partial(self._on_event, conn))
                return
            except ssl.SSLWantWriteError:
                self.poller.modify(sock, EVENT_WRITE, partial(self._on_event, conn))
                return
            except OSError as exc:  # ssl.SSLError included: not a TLS client, or a broken one
                self.log.debug("TLS handshake failed: %s", exc)
                self._drop(conn)
                return
            conn.shaken = True
            self.poller.modify(sock, EVENT_READ, partial(self._on_event, conn))
        data = _receive(sock)
        if data is None:  # the client went away
            self._drop(conn)
        elif data:
            self._take(conn, data)

    def _take(self, conn: _Conn, data: bytes) -> None:
        conn.prebuf += data
        verdict = WHOLE
        if not conn.length:
            verdict, conn.length, expects = examine(bytes(conn.prebuf))
            if verdict == TOO_LARGE:
                self._drop(conn, _HEAD_TOO_LARGE)
                return
            if verdict == MORE:
                return
            if expects and len(conn.prebuf) < conn.length:
                conn.continued = True
                try:
                    conn.sock.send(_CONTINUE)
                except OSError:  # the client is gone, or its socket is full: it sends its body anyway
                    pass
        if verdict == WHOLE and len(conn.prebuf) < conn.length:
            return
        conn.whole = verdict == WHOLE
        self.poller.unregister(conn.sock)
        del self.reading[conn]
        conn.data_ready = True
        super().enqueue_req(conn)

    def _drop(self, conn: _Conn, answer: bytes = b"") -> None:
        """Close a connection being read, with a last answer if any (and if it can carry one)."""
        self.reading.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        self.nr_conns -= 1
        if answer and conn.shaken:
            try:
                conn.sock.send(answer)
            except OSError:
                answer = b""
            conn.close(graceful=bool(answer))
        else:
            conn.close()

    def murder_pending(self):
        super().murder_pending()
        now = time.monotonic()
        for conn, deadline in list(self.reading.items()):
            if deadline <= now:
                self._drop(conn, _TIMED_OUT)
        for conn, deadline in list(self.lingering.items()):
            if deadline <= now:
                self._unlinger(conn)

    # -- in the thread ---------------------------------------------------------------------------

    def handle(self, conn):
        buf, conn.prebuf = conn.prebuf, None
        conn.sock.setblocking(True)
        if not conn.initialized:  # the parser reads what the event loop read, then the (wrapped) socket
            conn.initialized = True
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(bytes(buf))
        return super().handle(conn)

    def handle_request(self, req, conn):
        if conn.continued:  # sent by the event loop already; gunicorn would send a second one
            req._expected_100_continue = False
        if not conn.whole:  # handed over before its body: answered "Connection: close", the body never read
            req.must_close = True
        try:
            return super().handle_request(req, conn)
        except TimeoutError:
            self.log.info("Closing the connection of %s: the answer was not taken within %gs",
                          conn.client, REQUEST_TIMEOUT)
            raise StopIteration() from None

    # -- closing without blocking ----------------------------------------------------------------

    def linger(self, conn: TConn) -> None:
        """Close gracefully: send our FIN, then drain what the client still sends until it closes too
        (or LINGER seconds pass), so the kernel never resets a connection with our answer in flight."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
            self.poller.register(conn.sock, EVENT_READ, partial(self._on_linger, conn))
        except (OSError, ValueError, KeyError):
            conn.sock.close()
            return
        self.lingering[conn] = time.monotonic() + LINGER

    def _on_linger(self, conn: TConn, sock) -> None:
        if _receive(sock) is None:
            self._unlinger(conn)

    def _unlinger(self, conn: TConn) -> None:
        self.lingering.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        conn.sock.close()

"""pvcapid's gunicorn worker: gthread, with each request read whole before a thread is given to it.

gunicorn's gthread worker hands a connection to a thread as soon as its first bytes arrive, and the
thread then reads the rest with blocking calls and no deadline: eight clients that send their
headers and stall held all eight threads, health included, for 100 s. Here the worker's event loop
reads each request (headers, and a body up to its Content-Length) without blocking, alongside every
other connection, and only a complete request takes a thread. A request not complete within
``request_timeout`` seconds of its first byte is answered 408 and closed. So slow or stalled clients
cost a socket and a buffer, never a thread; threads go to requests that can be answered (see also
the cap on ``wait=true`` requests in :mod:`pvcapi.app`, which keeps threads for everyone else).

Over TLS the bytes on the socket are encrypted until the handshake, which gunicorn does in the
thread: those connections are handed over at once, as gthread does (a TLS-terminating proxy in
front of pvcapid gives them the same protection).
"""

from __future__ import annotations

import errno
import re
import socket
import time
from functools import partial
from selectors import EVENT_READ

from gunicorn.workers.gthread import TConn, ThreadWorker

from .guards import MAX_BODY

MAX_HEAD = 64 * 1024  # bytes of request line and headers; gunicorn refuses more itself
_LENGTH = re.compile(rb"^content-length:[ \t]*([0-9]{1,12})[ \t]*$", re.I | re.M)
_CHUNKED = re.compile(rb"^transfer-encoding:", re.I | re.M)
_TIMEOUT_ANSWER = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
                   b"Content-Length: 77\r\n\r\n"
                   b'{"message": "the request was not received in time; try again", "field": null}')


def complete(buf: bytes) -> bool:
    """Whether ``buf`` holds a whole request: its head, and its body when the head announces one.

    A head that is too long, a body larger than the API takes, or a chunked one, counts as complete:
    the thread that gets it answers (or refuses) it without waiting for more.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return len(buf) > MAX_HEAD
    head = buf[:end]
    if _CHUNKED.search(head):
        return True
    length = _LENGTH.search(head)
    size = int(length.group(1)) if length else 0
    return size > MAX_BODY or len(buf) >= end + 4 + size


class _Conn(TConn):
    """A connection whose graceful close lingers in the worker's event loop instead of blocking it."""

    def __init__(self, worker: "GuardedThreadWorker", *args):
        super().__init__(*args)
        self.worker = worker
        self.prebuf: bytearray | None = None

    def close(self, graceful=False):
        if graceful:
            self.worker.linger(self)
        else:
            super().close()


class GuardedThreadWorker(ThreadWorker):
    """gthread, reading requests in the event loop under a deadline (see the module docstring).

    One more difference: gthread closes a finished connection "gracefully" by waiting, in its event
    loop, up to 2 s for the client to close its side; a client that keeps its socket open after the
    answer stalled every other connection of the worker for those 2 s. Here the wait happens in the
    event loop without blocking it (:meth:`linger`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reading: dict[TConn, float] = {}  # connections being read -> their deadline
        self.lingering: dict[TConn, float] = {}  # half-closed connections -> when to close them anyway

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
        try:
            if sock.recv(65536):
                return  # still sending: keep draining
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._unlinger(conn)

    def _unlinger(self, conn: TConn) -> None:
        self.lingering.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        conn.sock.close()

    def accept(self, listener):
        try:
            sock, addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self._read_request(_Conn(self, self.cfg, sock, addr, listener.getsockname()))

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection sends its next request: read it here too."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read_request(conn)

    def _read_request(self, conn: TConn) -> None:
        if self.cfg.is_ssl:  # encrypted until the thread's handshake: handed over as gthread does
            self.enqueue_req(conn)
            return
        self.reading[conn] = time.monotonic() + REQUEST_TIMEOUT
        conn.sock.setblocking(False)
        conn.prebuf = bytearray()
        self.poller.register(conn.sock, EVENT_READ, partial(self._on_bytes, conn))

    def _on_bytes(self, conn: TConn, sock) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._drop(conn)
            return
        conn.prebuf += data
        if complete(bytes(conn.prebuf)):
            self.poller.unregister(sock)
            del self.reading[conn]
            conn.data_ready = True
            self.enqueue_req(conn)

    def handle(self, conn):
        buf = conn.prebuf
        if buf:
            conn.prebuf = None
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(bytes(buf))
        return super().handle(conn)

    def _drop(self, conn: TConn, answer: bytes = b"") -> None:
        self.reading.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        if answer:
            try:
                conn.sock.send(answer)
            except OSError:
                pass
        self.nr_conns -= 1
        conn.close(graceful=bool(answer))

    def murder_pending(self):
        super().murder_pending()
        now = time.monotonic()
        for conn, deadline in list(self.reading.items()):
            if deadline <= now:
                self._drop(conn, _TIMEOUT_ANSWER)
        for conn, deadline in list(self.lingering.items()):
            if deadline <= now:
                self._unlinger(conn)


REQUEST_TIMEOUT = 10.0  # seconds; pvcapid sets it from its `request_timeout` setting
LINGER = 2.0  # seconds a closed connection waits for the client's side to close (gunicorn's own figure)

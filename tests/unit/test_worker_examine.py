"""How pvcapid's worker decides that a request is whole (pure code: no server)."""

import pytest

from pvcapi.guards import MAX_BODY
from pvcapi.worker import EARLY, MAX_HEAD, MORE, TOO_LARGE, WHOLE, examine

LINE = b"POST /api/v1/vm HTTP/1.1\r\n"


def head(*fields: bytes) -> bytes:
    return LINE + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


@pytest.mark.parametrize("buf, verdict", [
    (b"", MORE),
    (LINE + b"Host: x\r\n", MORE),  # the head is not over
    (head(b"Host: x"), WHOLE),  # no body
    (head(b"Content-Length: 5", b"Host: x") + b"{}", WHOLE),  # whole once 5 body bytes are there
    (head(b"Host: x", b"content-length:\t5 ") + b"{}", WHOLE),
    (head(b"Transfer-Encoding: chunked") + b"5\r\n{", EARLY),  # the API reads bodies by their length
    (head(b"Content-Length: %d" % (MAX_BODY + 1)), EARLY),  # refused with 413 from its length
    (head(b"Content-Length: 5", b"Content-Length: 6"), EARLY),  # gunicorn refuses these from the head
    (head(b"Content-Length: -5"), EARLY),
    (head(b"Content-Length: 1e3"), EARLY),
    (head(b"Content-Length: " + b"9" * 40), EARLY),
    (b"GET /api/v1 HTTP/1.1\nHost: x\n\n", EARLY),  # bare LF line ends: refused from the head
    (LINE + b"X: " + b"a" * MAX_HEAD, TOO_LARGE),
    (head(b"X: " + b"a" * MAX_HEAD), TOO_LARGE),
])
def test_verdicts(buf, verdict):
    assert examine(buf)[0] == verdict


def test_the_length_counts_head_and_body_wherever_content_length_is():
    for fields in ((b"Content-Length: 10", b"Host: x"), (b"Host: x", b"Content-Length: 10")):
        start = head(*fields)
        assert examine(start + b"{") == (WHOLE, len(start) + 10, False)


def test_expect_100_continue_only_for_a_body_over_http_1_1():
    assert examine(head(b"Expect: 100-continue", b"Content-Length: 10"))[2] is True
    assert examine(head(b"expect: 100-Continue", b"Content-Length: 10"))[2] is True
    assert examine(head(b"Expect: 100-continue"))[2] is False  # no body to wait for
    assert examine(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n")[2] is False
    assert examine(head(b"Expect: something-else", b"Content-Length: 10"))[2] is False

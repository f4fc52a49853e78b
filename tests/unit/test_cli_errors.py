"""`pvc` given a bad address, a bad key, or something that is not the API: one readable line, exit 1."""

from __future__ import annotations

import socket
import threading

import pytest
from click.testing import CliRunner

from pvccli.main import cli


def run(tmp_path, *args):
    return CliRunner().invoke(cli, list(args), env={"PVC_CONFIG": str(tmp_path / "none.toml"),
                                                    "PVC_API_URL": None, "PVC_API_KEY": None})


def one_line_error(result, contains: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pvc: error: ") and contains in lines[0], result.stderr


@pytest.mark.parametrize("url, contains", [
    ("not a url", "invalid API URL 'not a url': expected http(s)://HOST:PORT"),
    ("ftp://host", "expected http(s)://HOST:PORT"),
    ("http://", "expected http(s)://HOST:PORT"),
    ("http://[::1", "Invalid IPv6 URL"),
    ("http://127.0.0.1:abc", "Port could not be cast"),
    ("http://127.0.0.1:99999", "Port out of range"),
    ("http://exa mple.com", "spaces or control characters"),
    ("http://127.0.0.1:9\n", "spaces or control characters"),
    ("http://a..b:9", "cannot send the request"),
    ("http://127.0.0.1:9", "cannot reach the API at http://127.0.0.1:9/api/v1"),
])
def test_a_bad_api_url_is_one_line(tmp_path, url, contains):
    one_line_error(run(tmp_path, "--api", url, "vm", "list"), contains)


def test_a_bad_key_is_one_line_and_not_repeated(tmp_path):
    result = run(tmp_path, "--api", "http://127.0.0.1:9", "--key", "secret\nX-Evil: 1", "node", "list")
    one_line_error(result, "invalid API key: it contains spaces or control characters")
    assert "secret" not in result.stderr


def test_something_that_is_not_http_is_one_line(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))

    def answer_garbage() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        conn.close()

    threading.Thread(target=answer_garbage, daemon=True).start()
    try:
        one_line_error(run(tmp_path, "--api", f"http://127.0.0.1:{server.getsockname()[1]}", "vm", "list"),
                       "no HTTP answer from")
    finally:
        server.close()


def test_a_web_server_that_is_not_the_api_is_one_line(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))

    def answer_html() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 13\r\n"
                     b"Connection: close\r\n\r\n<html></html>")
        conn.close()

    threading.Thread(target=answer_html, daemon=True).start()
    try:
        one_line_error(run(tmp_path, "--api", f"http://127.0.0.1:{server.getsockname()[1]}", "vm", "list"),
                       "is not the pvc API's (text/html, not JSON)")
    finally:
        server.close()


def test_a_non_finite_number_is_one_line(tmp_path):
    one_line_error(run(tmp_path, "--api", "http://127.0.0.1:9", "cluster", "set", "--fence-grace", "nan"),
                   "numbers must be finite")

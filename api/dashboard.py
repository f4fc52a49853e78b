"""The web dashboard: a page and its script and style, served by pvcapid itself at ``/dashboard``.

The files (``api/static/``) hold no data and need no key; the page asks for one and then reads the API
with it like any client (``X-Api-Key``), and follows ``GET /api/v1/events`` for live changes. No framework
and nothing fetched from elsewhere: the Content-Security-Policy below lets the page load only its own
files and talk only to this server.
"""

from __future__ import annotations

import re
from pathlib import Path

import falcon

STATIC = Path(__file__).with_name("static")
PAGE = "/dashboard"
FILES = {"": ("index.html", "text/html; charset=utf-8"), "app.js": ("app.js", "text/javascript; charset=utf-8"),
         "app.css": ("app.css", "text/css; charset=utf-8"), "icon.svg": ("icon.svg", "image/svg+xml")}
#: exactly the paths the dashboard serves (the API's key check lets these, and only these, through: falcon routes
#: "//api/v1/node" to the API, so "not under /api/v1" must never be the test)
PATHS = re.compile(r"/(dashboard(/[A-Za-z0-9][A-Za-z0-9._-]*)?)?")
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
          "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class Files:
    """``/`` sends the browser to the dashboard; ``/dashboard`` is its page, ``/dashboard/<file>`` its files."""

    def __init__(self):
        self._files = {name: ((STATIC / file).read_bytes(), kind) for name, (file, kind) in FILES.items()}

    def __call__(self, req: falcon.Request, resp: falcon.Response, **_params) -> None:
        if req.method not in ("GET", "HEAD"):
            raise falcon.HTTPMethodNotAllowed(("GET", "HEAD"))
        if req.path == "/":
            raise falcon.HTTPFound(PAGE)
        name = req.path[len(PAGE) + 1:]
        if name not in self._files:
            raise falcon.HTTPNotFound(title="not found", description=f"no such dashboard file: {name!r}")
        resp.data, resp.content_type = self._files[name]
        resp.set_header("Cache-Control", "no-cache")


class Headers:
    """Falcon middleware: every answer says not to sniff types; the dashboard's also what the page may load."""

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        resp.set_header("X-Content-Type-Options", "nosniff")
        if PATHS.fullmatch(req.path):
            resp.set_header("Content-Security-Policy", POLICY)
            resp.set_header("Referrer-Policy", "no-referrer")
            resp.set_header("X-Frame-Options", "DENY")


def serve(app: falcon.App) -> None:
    app.add_sink(Files(), re.compile(f"^{PATHS.pattern}$"))

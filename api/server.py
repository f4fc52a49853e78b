"""``pvcapid``: the API under gunicorn, configured from a TOML file and flags."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

from gunicorn.app.base import BaseApplication
from kazoo.exceptions import KazooException
from kazoo.handlers.threading import KazooTimeoutError

from pvccore.errors import ValidationError
from pvccore.zk.store import Store

from . import worker
from .config import API, ApiConfig


#: how building a worker's application fails while ZooKeeper is away: no session, the view not loaded, the
#: connection lost meanwhile
UNREACHABLE = (KazooTimeoutError, TimeoutError, KazooException)


class Server(BaseApplication):
    """gunicorn with our settings; each worker builds the app (and its ZooKeeper client) after the fork."""

    def __init__(self, cfg: ApiConfig, lifeline: bool = False):
        self.cfg_api, self.lifeline = cfg, lifeline
        super().__init__()

    def load_config(self) -> None:
        c = self.cfg_api
        worker.REQUEST_TIMEOUT = c.request_timeout  # inherited by the workers gunicorn forks
        settings = {"bind": c.listen, "workers": c.workers, "worker_class": "pvcapi.worker.GuardedThreadWorker",
                    "threads": c.threads, "keepalive": 5, "loglevel": c.log_level, "accesslog": "-",
                    "errorlog": "-", "timeout": max(60, int(c.wait_timeout) + 30), "graceful_timeout": 10,
                    "proc_name": "pvcapid",
                    # HTTP/1.1 only (gunicorn's default, pinned): the worker reads HTTP/1 requests itself
                    "http_protocols": "h1", "http2_cleartext": "off",
                    # gunicorn's control socket has one fixed path per user: a second pvcapid on the
                    # machine would take it over and delete it when it stops. pvcapid needs none.
                    "control_socket_disable": True}
        if c.tls_cert:
            settings.update(certfile=c.tls_cert, keyfile=c.tls_key)
        if self.lifeline:
            settings["when_ready"] = _watch_lifeline
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        from .app import get_app

        try:
            return get_app(self.cfg_api)
        except UNREACHABLE:
            # A worker (re)started while ZooKeeper is away. Failing to boot would make gunicorn's master stop
            # every worker: this one serves 503 instead and connects in the background.
            return Connecting(lambda: get_app(self.cfg_api), self.cfg_api.zookeeper_hosts)


class Connecting:
    """A worker's application until ZooKeeper first answers: every request 503 at once, the real application
    built in a thread that keeps trying (every 1, 2, 4 ... 10 s)."""

    BODY = json.dumps({"message": "ZooKeeper unreachable: this API worker has not reached it since it started; "
                                  "nothing was changed: try again", "field": None}).encode()

    def __init__(self, build, hosts: str):
        self._build, self._hosts, self._app = build, hosts, None
        threading.Thread(target=self._connect, name="pvcapi-connect", daemon=True).start()

    def _connect(self) -> None:
        log, delay = logging.getLogger("gunicorn.error"), 1.0
        while self._app is None:
            log.warning("cannot reach ZooKeeper at %s: answering 503, trying again in %gs", self._hosts, delay)
            time.sleep(delay)  # the back-off between attempts
            delay = min(delay * 2, 10.0)
            try:
                self._app = self._build()
            except UNREACHABLE:
                continue
            log.info("reached ZooKeeper at %s: serving", self._hosts)

    def __call__(self, environ, start_response):
        app = self._app
        if app is not None:
            return app(environ, start_response)
        start_response("503 Service Unavailable", [("Content-Type", "application/json"),
                                                   ("Content-Length", str(len(self.BODY))), ("Retry-After", "2")])
        return [self.BODY]


def _watch_lifeline(_server) -> None:
    """In gunicorn's master: stop gracefully once standard input closes, i.e. once the process
    holding its other end (the pvcnoded that started us) is gone, however it ended."""

    def watch() -> None:
        while os.read(0, 4096):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    # Started by a pvcnoded primary, this process inherits its blocked SIGTERM/SIGINT: gunicorn needs them.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    parser = argparse.ArgumentParser(prog="pvcapid", description="pvc REST API (gunicorn)")
    API.add_flags(parser)
    parser.add_argument("--lifeline", action="store_true",
                        help="Exit when standard input closes (pvcnoded starts the API so: it never outlives "
                             "the primary that started it).")
    args = parser.parse_args(argv)
    try:
        cfg = API.from_args(args)
    except ValidationError as exc:
        print(f"pvcapid: error: {exc.message}", file=sys.stderr)
        return 2
    logging.getLogger("kazoo").setLevel(logging.ERROR)  # its retries, before gunicorn sets up logging
    try:  # one clear line now, rather than every worker failing to boot
        Store.connect(cfg.zookeeper_hosts, cfg.zookeeper_root, timeout=cfg.zookeeper_session_timeout,
                      auth=cfg.zookeeper_auth or None).close()
    except KazooTimeoutError:
        print(f"pvcapid: error: cannot reach ZooKeeper at {cfg.zookeeper_hosts} "
              f"within {cfg.zookeeper_session_timeout:g}s", file=sys.stderr)
        return 1
    Server(cfg, lifeline=args.lifeline).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

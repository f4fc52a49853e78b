"""``pvcapid``: the API under gunicorn, configured from a TOML file and flags."""

from __future__ import annotations

import argparse
import signal
import sys

from gunicorn.app.base import BaseApplication

from pvccore.errors import ValidationError

from .config import API, ApiConfig


class Server(BaseApplication):
    """gunicorn with our settings; each worker builds the app (and its ZooKeeper client) after the fork."""

    def __init__(self, cfg: ApiConfig):
        self.cfg_api = cfg
        super().__init__()

    def load_config(self) -> None:
        c = self.cfg_api
        settings = {"bind": c.listen, "workers": c.workers, "worker_class": "gthread", "threads": 4,
                    "keepalive": 5, "loglevel": c.log_level, "accesslog": "-",
                    "errorlog": "-", "timeout": max(60, int(c.wait_timeout) + 30), "graceful_timeout": 10,
                    "proc_name": "pvcapid"}
        if c.tls_cert:
            settings.update(certfile=c.tls_cert, keyfile=c.tls_key)
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        from .app import get_app

        return get_app(self.cfg_api)


def main(argv: list[str] | None = None) -> int:
    # Started by a pvcnoded primary, this process inherits its blocked SIGTERM/SIGINT: gunicorn needs them.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    parser = argparse.ArgumentParser(prog="pvcapid", description="pvc REST API (gunicorn)")
    API.add_flags(parser)
    args = parser.parse_args(argv)
    try:
        cfg = API.from_args(args)
    except ValidationError as exc:
        print(f"pvcapid: error: {exc.message}", file=sys.stderr)
        return 2
    Server(cfg).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

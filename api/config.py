"""``pvcapid`` configuration (TOML file and flags), on the shared schema of :mod:`pvccore.config`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pvccore.config import LOG_OPTION, ZOOKEEPER_OPTIONS, ConfigSchema, Option, check_root
from pvccore.errors import ValidationError


@dataclass(frozen=True)
class ApiConfig:
    zookeeper_hosts: str = "127.0.0.1:2181"
    zookeeper_root: str = "/pvc"
    zookeeper_auth: str = ""
    zookeeper_session_timeout: float = 4.0
    listen: str = "127.0.0.1:7370"
    workers: int = 2
    threads: int = 32
    request_timeout: float = 10.0
    auth: bool = True
    api_keys: tuple[str, ...] = ()
    read_only_keys: tuple[str, ...] = ()
    tls_cert: str = ""
    tls_key: str = ""
    wait_timeout: float = 60.0
    log_level: str = "info"


def _check(values: dict[str, Any]) -> None:
    check_root(values)
    host, sep, port = values["listen"].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError(f"listen: expected host:port, got {values['listen']!r}", "listen")
    if values["auth"] and not values["api_keys"] and not values["read_only_keys"]:
        raise ValidationError("api_keys: required while auth is on (or set auth = false)", "api_keys")
    both = set(values["api_keys"]) & set(values["read_only_keys"])
    if both:
        raise ValidationError(f"read_only_keys: {len(both)} key(s) also in api_keys; a key has one role",
                              "read_only_keys")
    if bool(values["tls_cert"]) != bool(values["tls_key"]):
        raise ValidationError("tls_cert and tls_key: give both or neither", "tls_cert")


API = ConfigSchema("pvcapid", (
    *ZOOKEEPER_OPTIONS,
    Option("listen", str, "127.0.0.1:7370", "Address and port the API listens on (the primary's floating IP).",
           "--listen"),
    Option("workers", int, 2, "gunicorn worker processes.", "--workers", 1, 64),
    Option("threads", int, 32, "Threads per worker: requests answered at once. Half of them at most wait for a "
           "change (wait=true); a request beyond that answers 202 at once.", "--threads", 4, 256),
    Option("request_timeout", float, 10.0, "Seconds a client has to send a whole request (headers and body) once "
           "it has connected or started its next one; a slow or stalled one is answered 408 and closed, and never "
           "holds a thread. Also how long a client may take to accept each part of its answer (raise it for very "
           "large answers over slow links).", "--request-timeout", 1.0, 300.0),
    Option("auth", bool, True, "Require an API key (header X-Api-Key) on every route but GET /api/v1.", "--auth"),
    Option("api_keys", list, (), "Accepted API keys: each may read and change everything.", "--api-key"),
    Option("read_only_keys", list, (), "API keys that may only read (GET): for monitoring, and a dashboard without "
           "actions.", "--read-only-key"),
    Option("tls_cert", str, "", "TLS certificate file (PEM); TLS is off when empty.", "--tls-cert"),
    Option("tls_key", str, "", "TLS private key file (PEM).", "--tls-key"),
    Option("wait_timeout", float, 60.0, "Longest a request with wait=true waits for its change to be observed.",
           "--wait-timeout", 0.0, 3600.0),
    LOG_OPTION,
), ApiConfig, _check)

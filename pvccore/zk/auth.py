"""ZooKeeper digest authentication: one identity per cluster, every znode readable by it only."""

from __future__ import annotations

import os

from kazoo.security import make_digest_acl

from pvccore.errors import ValidationError

AUTH_ENV = "PVC_ZOOKEEPER_AUTH"


def parse_auth(text: str) -> tuple[str, str]:
    """``digest:USER:PASSWORD`` -> ``(USER, PASSWORD)``; the error never repeats the password."""
    scheme, _, rest = text.partition(":")
    user, _, password = rest.partition(":")
    if scheme != "digest" or not user or not password:
        raise ValidationError("zookeeper_auth: expected digest:USER:PASSWORD", "zookeeper_auth")
    return user, password


def auth_options(auth: str | None) -> dict:
    """kazoo options that authenticate as ``auth`` and create every znode readable by that identity only.

    ``auth`` None means ``$PVC_ZOOKEEPER_AUTH``; empty means no authentication (world-readable znodes).
    """
    if auth is None:
        auth = os.environ.get(AUTH_ENV, "")
    if not auth:
        return {}
    user, password = parse_auth(auth)
    return {"auth_data": [("digest", f"{user}:{password}")],
            "default_acl": [make_digest_acl(user, password, all=True)]}

"""One error shape for every answer: ``{"message": ..., "field": ...}``; domain errors mapped once."""

from __future__ import annotations

import falcon

from pvccore.errors import ConflictError, LockTimeout, NotFoundError, PVCError, Unavailable, ValidationError

STATUS = {
    ValidationError: falcon.HTTP_400,
    NotFoundError: falcon.HTTP_404,
    ConflictError: falcon.HTTP_409,
    LockTimeout: falcon.HTTP_409,
    Unavailable: falcon.HTTP_503,
}


def domain_error(req, resp, exc: PVCError, params) -> None:
    resp.status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), falcon.HTTP_400)
    resp.media = {"message": exc.message, "field": exc.field}


def zookeeper_error(req, resp, exc: Exception, params) -> None:
    """A ZooKeeper session or connection failure met mid-request (kazoo's own exceptions): 503, never 500."""
    resp.status = falcon.HTTP_503
    resp.media = {"message": f"ZooKeeper failed during the request ({type(exc).__name__}); "
                             "a change may or may not have been applied: look, then try again", "field": None}


def serialize_http_error(req, resp, exc: falcon.HTTPError) -> None:
    """Falcon's own errors (bad JSON, unknown route, 401) in the same shape."""
    message = exc.description or exc.title or str(exc.status)
    resp.content_type = falcon.MEDIA_JSON
    resp.media = {"message": message, "field": getattr(exc, "field", None)}


class BadRequest(falcon.HTTPBadRequest):
    """A malformed request field, named."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(title="bad request", description=message)
        self.field = field

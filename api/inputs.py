"""Reading request bodies and query strings: types checked, unknown keys refused, fields named."""

from __future__ import annotations

import re
from typing import Any

import falcon

from pvccore.domain.fields import Field, Kind, check
from pvccore.errors import ValidationError

from .errors import BadRequest

_MISSING = object()


def body(req: falcon.Request, allowed: set[str]) -> dict[str, Any]:
    """The JSON object body; keys outside ``allowed`` are an error (a typo must not be ignored)."""
    media = req.get_media(default_when_empty={})
    if not isinstance(media, dict):
        raise BadRequest("the request body must be a JSON object")
    unknown = sorted(set(media) - allowed)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; expected some of: {', '.join(sorted(allowed))}", unknown[0])
    return media


def field(data: dict, name: str, kind: type, default: Any = _MISSING, choices: tuple = ()) -> Any:
    """``data[name]`` checked by :func:`pvccore.domain.fields.check` as a ``kind`` (bool, str, int, float or
    list), one of ``choices`` when given; ``default`` when absent (required when no default is given)."""
    value = data.get(name, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise BadRequest(f"{name} is required", name)
        return default
    spec = Field(name, Kind.ENUM if choices else _KINDS[kind], choices=tuple(choices))
    try:
        return check(spec, value)
    except ValidationError as exc:
        raise BadRequest(exc.message, exc.field) from None


def flag(req: falcon.Request, name: str) -> bool:
    """A boolean query parameter (``?force=true``)."""
    raw = req.get_param(name)
    if raw is None:
        return False
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise BadRequest(f"{name} must be true or false", name)


_KINDS = {bool: Kind.BOOL, str: Kind.STR, int: Kind.INT, float: Kind.FLOAT, list: Kind.LIST}


MAX_LOG_LINES = 10000


def log_answer(req, store, path: str, key: str, name: str) -> dict:
    """``{key: name, "lines": [...], "updated": epoch | None}``: the last ``?lines=N`` (default 100) lines of a log
    kept in ZooKeeper (pvccore.node.logs); none yet is an empty list."""
    raw = req.get_param("lines") or "100"
    if not re.fullmatch(r"[0-9]{1,5}", raw) or not 1 <= int(raw) <= MAX_LOG_LINES:  # ASCII digits only
        raise BadRequest(f"lines must be a whole number from 1 to {MAX_LOG_LINES}", "lines")
    got = store.get_log(path)
    lines = got[0].splitlines()[-int(raw):] if got else []
    return {key: name, "lines": lines, "updated": got[1] if got else None}

"""Reading request bodies and query strings: types checked, unknown keys refused, fields named."""

from __future__ import annotations

from typing import Any

import falcon

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
    value = data.get(name, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise BadRequest(f"{name} is required", name)
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise BadRequest(f"{name} must be {_kind_name(kind)}", name)
    if choices and value not in choices:
        raise BadRequest(f"{name} must be one of {', '.join(choices)}; got {value!r}", name)
    return value


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


def _kind_name(kind: type) -> str:
    return {str: "a string", bool: "true or false", int: "an integer", float: "a number", list: "a list",
            dict: "an object"}.get(kind, kind.__name__)

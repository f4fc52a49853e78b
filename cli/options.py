"""Click options made from the field tables of :mod:`pvccore.domain.fields`: one option per field,
its help the field's help. The values are checked by the API, so its errors are the ones shown."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import click

from pvccore.domain.fields import Field, Kind

_TYPES = {Kind.STR: str, Kind.INT: int, Kind.FLOAT: float}
_LISTS = (Kind.NAMES, Kind.TAGS)  # given comma-separated


def option_name(f: Field) -> str:
    """How the option reads in help and errors: ``--limit``, ``--autostart/--no-autostart``."""
    return f"--{f.option}/--no-{f.option}" if f.kind is Kind.BOOL else f"--{f.option}"


def field_option(f: Field) -> Callable:
    """The click option of one field; a value not given is None (the API leaves that field as it is)."""
    if f.kind is Kind.BOOL:
        return click.option(option_name(f), f.name, default=None, help=f.help)
    if f.kind is Kind.ENUM:
        return click.option(option_name(f), f.name, type=click.Choice(f.choice_values), help=f.help)
    if f.kind in _LISTS:
        return click.option(option_name(f), f.name, help=f"{f.help} Comma-separated.")
    if f.kind in _TYPES:
        span = f" [{f.low:g} to {f.high:g}]" if f.low is not None and f.high is not None else ""
        return click.option(option_name(f), f.name, type=_TYPES[f.kind], help=f.help + span)
    raise ValueError(f"{f.name}: no command-line form for a {f.kind} field")


def field_options(table: Mapping[str, Field]) -> Callable:
    """A decorator adding the options of every field of ``table``, in the table's order."""
    def decorate(command: Callable) -> Callable:
        for f in reversed(table.values()):
            command = field_option(f)(command)
        return command

    return decorate


def given(table: Mapping[str, Field], options: Mapping[str, Any]) -> dict[str, Any]:
    """The options given (not None), as the API takes them: a comma-separated list becomes a list."""
    out = {}
    for name, f in table.items():
        value = options.get(name)
        if value is None:
            continue
        out[name] = [n.strip() for n in value.split(",") if n.strip()] if f.kind in _LISTS else value
    return out

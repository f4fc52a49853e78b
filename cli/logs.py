"""``pvc node log`` and ``pvc vm log``: the last lines of a log the cluster keeps, and ``--follow``."""

from __future__ import annotations

import time
from typing import Callable

import click

FOLLOW_EVERY = 1.0  # seconds between looks while following


def new_lines(before: list[str], after: list[str]) -> list[str]:
    """The lines of ``after`` that ``before`` did not end with (the window moved on by them)."""
    for k in range(min(len(before), len(after)), 0, -1):
        if before[-k:] == after[:k]:
            return after[k:]
    return after


def show(fetch: Callable[[int], dict], lines: int, follow: bool, what: str) -> None:
    """Print the last ``lines`` lines; with ``follow``, then each new line as it is published, until Ctrl-C."""
    answer = fetch(lines)
    seen = answer["lines"]
    if not seen and answer["updated"] is None and not follow:
        click.echo(f"{what}: nothing published yet", err=True)
    for line in seen:
        click.echo(line)
    while follow:
        time.sleep(FOLLOW_EVERY)  # following: a look at the published log each second
        current = fetch(lines)["lines"]  # the same window each time: the new lines follow the old ones
        for line in new_lines(seen, current):
            click.echo(line)
        seen = current

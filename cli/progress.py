"""Progress of a ``--wait``: on a terminal one line redrawn in place (a bar when there is a count, and the
time elapsed); otherwise a plain line each time the text changes, for logs and scripts."""

from __future__ import annotations

import sys
import time

import click

BAR = 24  # characters


class Progress:
    def __init__(self, stream=None, clock=time.monotonic):
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._clock = clock
        self._t0 = clock()
        self._last = None
        self._width = 0

    def show(self, text: str, done: int | None = None, total: int | None = None) -> None:
        if not self.tty:
            if text != self._last:
                click.echo(text, file=self.stream)
                self._last = text
            return
        elapsed = f"{self._clock() - self._t0:5.1f}s"
        if total:
            filled = round(BAR * min(done or 0, total) / total)
            line = f"[{'#' * filled}{'.' * (BAR - filled)}] {done}/{total}  {elapsed}  {text}"
        else:
            line = f"{elapsed}  {text}"
        click.echo("\r" + line.ljust(self._width), nl=False, file=self.stream)
        self._width = len(line)

    def close(self) -> None:
        """End the redrawn line (before the outcome, or an error on stderr)."""
        if self.tty and self._width:
            click.echo("", file=self.stream)
            self._width = 0

    def done(self, text: str) -> None:
        """The last line: the outcome."""
        self.close()
        click.echo(text, file=self.stream)

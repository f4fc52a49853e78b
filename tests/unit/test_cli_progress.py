"""The --wait progress display: plain lines for logs and pipes, one redrawn line with a bar on a terminal."""

import io

from pvccli.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_pipe_gets_a_line_per_change():
    out = io.StringIO()
    progress = Progress(out)
    for text in ("hv1: flush, 3 left", "hv1: flush, 3 left", "hv1: flush, 1 left"):
        progress.show(text, 0, 3)
    progress.done("node hv1 is flushed")
    assert out.getvalue().splitlines() == ["hv1: flush, 3 left", "hv1: flush, 1 left", "node hv1 is flushed"]


def test_a_terminal_gets_one_line_redrawn_with_counts_and_time_elapsed():
    now = [100.0]
    out = Terminal()
    progress = Progress(out, clock=lambda: now[0])
    progress.show("hv1: flush, 20 running VM(s) left", 0, 20)
    now[0] = 104.25
    progress.show("hv1: flush, 5 running VM(s) left", 15, 20)
    progress.done("node hv1 is flushed")
    text = out.getvalue()
    frames = text.split("\r")[1:]
    assert frames[0].startswith("[" + "." * 24 + "] 0/20    0.0s  hv1: flush, 20")
    assert frames[1].startswith("[" + "#" * 18 + "." * 6 + "] 15/20    4.2s  hv1: flush, 5")
    assert text.endswith("\nnode hv1 is flushed\n") and text.count("\n") == 2
    progress = Progress(Terminal(), clock=lambda: 0.0)
    progress.show("g1: migrate hv1 -> hv2, memory")  # no count: the time and the text
    assert progress.stream.getvalue() == "\r  0.0s  g1: migrate hv1 -> hv2, memory"

"""Logs served through the API: the tails kept, the console file found in the XML, following new lines."""

import logging

from pvccli.logs import new_lines
from pvccore.domain.domainxml import console_path
from pvccore.node.logs import MAX_LINES, RecentLines, read_tail, tail


def test_a_tail_is_cut_at_a_line_start_within_its_bytes(tmp_path):
    text = "".join(f"line {i}\n" for i in range(10000))
    cut = tail(text, 1000)
    assert len(cut.encode()) <= 1000 and cut.startswith("line ") and cut.endswith("line 9999\n")
    assert tail("short\n", 1000) == "short\n"
    f = tmp_path / "console.log"
    f.write_bytes(text.encode() + b"\x1b[0m\xff\xfeboot ok\n")  # a console's bytes are not all UTF-8
    got = read_tail(str(f), 1000)
    assert got.startswith("line ") and got.endswith("boot ok\n") and "\ufffd" in got
    f.write_text("two\nlines\n")
    assert read_tail(str(f), 1000) == "two\nlines\n"


def test_recent_lines_keep_the_last_ones_and_count_changes():
    recent = RecentLines()
    logger = logging.getLogger("test-recent-lines")
    logger.propagate = False
    logger.addHandler(recent)
    logger.setLevel(logging.INFO)
    try:
        for i in range(MAX_LINES + 10):
            logger.info("event %d", i)
        logger.info("two\nlines")
    finally:
        logger.removeHandler(recent)
    lines = recent.text().splitlines()
    assert len(lines) == MAX_LINES and lines[-2].endswith("two") and lines[-1] == "lines"
    assert recent.version == MAX_LINES + 11 and "event 9" not in recent.text().split("\n", 1)[0]


def test_the_console_file_is_found_where_libvirt_writes_it():
    file_serial = "<domain><devices><serial type='file'><source path='/srv/c/g1.log' append='on'/></serial></devices></domain>"
    logged = "<domain><devices><console type='pty'><log file='/var/log/g2.log'/></console></devices></domain>"
    assert console_path(file_serial) == "/srv/c/g1.log" and console_path(logged) == "/var/log/g2.log"
    assert console_path("<domain><devices><serial type='pty'/></devices></domain>") == ""
    assert console_path("not xml") == ""


def test_following_prints_only_what_came_after_the_last_look():
    assert new_lines(["a", "b", "c"], ["b", "c", "d", "e"]) == ["d", "e"]
    assert new_lines(["a", "b"], ["a", "b"]) == []
    assert new_lines([], ["x"]) == ["x"]
    assert new_lines(["a"], ["z", "y"]) == ["z", "y"]  # nothing in common: the window moved past us

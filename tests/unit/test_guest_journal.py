"""The real guests' disk journal check (tests/tools/guestimage.py): what it reads, and what it objects to."""

from tests.tools.guestimage import RECORD, journal_problems, new_disk, read_journal


def write(disk, records):
    with open(disk, "r+b") as fh:
        for i, (boot, seq) in enumerate(records):
            fh.seek(i * RECORD)
            fh.write(f"pvc {boot} {seq}".ljust(RECORD - 1).encode() + b"\n")


def test_one_writer_then_a_reboot_is_fine(tmp_path):
    disk = new_disk(tmp_path / "d.img", sectors=64)
    records = [("aaaa", i) for i in range(5)] + [("bbbb", i) for i in range(3)]
    write(disk, records)
    assert read_journal(disk) == records  # up to the first empty sector
    assert journal_problems(records) == []


def test_two_writers_a_lost_record_and_a_bad_start_are_named():
    assert "two writers" in journal_problems([("a", 0), ("a", 1), ("b", 0), ("a", 2)])[0]
    assert "a record lost or repeated" in journal_problems([("a", 0), ("a", 2)])[0]
    assert "a record lost or repeated" in journal_problems([("a", 0), ("a", 1), ("a", 1)])[0]
    assert "starts at sequence 4" in journal_problems([("a", 4)])[0]

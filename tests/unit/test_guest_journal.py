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


def _elf(notes: list[tuple[bytes, int]]) -> bytes:
    """A minimal ELF64 image with one PT_NOTE segment holding ``(name, type)`` notes."""
    import struct

    body = b""
    for name, kind in notes:
        name += b"\x00"
        body += struct.pack("<III", len(name), 4, kind) + name.ljust((len(name) + 3) // 4 * 4, b"\x00") + b"\x00" * 4
    phoff, note_at = 64, 64 + 56
    header = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, 64, 56,
                                                               1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 4, 4, note_at, 0, 0, len(body), len(body), 4)
    return header + phdr + body


def test_the_pvh_kernel_is_taken_out_of_a_bzimage_only_when_it_has_the_pvh_entry_note():
    import gzip
    import lzma

    from tests.tools.guestimage import _pvh_elf

    pvh = _elf([(b"Xen", 6), (b"Xen", 18)])
    plain = _elf([(b"Xen", 6), (b"GNU", 18)])
    setup = b"\x00" * 300 + b"HdrS"  # the real-mode part a bzImage starts with
    assert _pvh_elf(setup + lzma.compress(pvh, format=lzma.FORMAT_XZ)) == pvh
    assert _pvh_elf(setup + gzip.compress(pvh)) == pvh
    assert _pvh_elf(setup + lzma.compress(plain, format=lzma.FORMAT_XZ)) is None  # no PVH entry: the bzImage
    assert _pvh_elf(setup + b"\xfd7zXZ\x00 not really xz") is None
    assert _pvh_elf(setup) is None
    import lzma as _lzma
    cut = _lzma.compress(pvh, format=_lzma.FORMAT_XZ)
    assert _pvh_elf(setup + cut[:len(cut) // 2]) is None  # a payload cut short is no kernel

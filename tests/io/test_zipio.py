"""The streaming stored-zip writer and the mapped reader."""

from __future__ import annotations

import io
import zipfile

import pytest

from persistkit.io import use_fs
from persistkit.io.zipio import ZipStreamWriter, ZipStructureError, map_file, read_entries
from persistkit.testing.fs.recordfs import RecordingFS


def build(entries, **kw) -> bytes:
    out = io.BytesIO()
    writer = ZipStreamWriter(out.write, **kw)
    for name, pieces in entries:
        writer.add(name, pieces)
    writer.finish()
    return out.getvalue()


@pytest.mark.parametrize("force_zip64", [False, True])
def test_zipfile_reads_what_we_write_with_valid_crcs(force_zip64):
    big = bytes(range(256)) * 20_000  # over the threshold: CRC on a worker thread + data descriptor
    data = build(
        [
            ("a.bin", [b"hello ", memoryview(b"world")]),
            ("big.bin", [big, b"!"]),
            ("empty", []),
            ("ünï", [b"x"]),
        ],
        force_zip64=force_zip64,
    )
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None
        assert z.read("a.bin") == b"hello world"
        assert z.read("big.bin") == big + b"!"
        assert z.read("empty") == b"" and z.read("ünï") == b"x"
    view = memoryview(data)
    entries = read_entries(view)
    assert [e.name for e in entries] == ["a.bin", "big.bin", "empty", "ünï"]
    assert bytes(view[entries[1].start : entries[1].start + entries[1].size]) == big + b"!"


def test_small_pieces_are_coalesced_into_few_writes(tmp_path):
    sink_calls = []
    writer = ZipStreamWriter(sink_calls.append)
    for i in range(50):
        writer.add(f"m{i}", [b"x" * 100])
    writer.finish()
    assert len(sink_calls) == 1


def test_duplicates_are_reported_not_merged():
    data = build([("a", [b"1"]), ("a", [b"2"])])
    assert [e.name for e in read_entries(memoryview(data))] == ["a", "a"]


def test_structure_errors_say_whether_it_looked_like_a_zip():
    data = build([("a", [b"1" * 100])])
    with pytest.raises(ZipStructureError) as info:
        read_entries(memoryview(data[: len(data) // 2]))
    assert info.value.looks_like_zip
    with pytest.raises(ZipStructureError) as info:
        read_entries(memoryview(b"just text, no zip"))
    assert not info.value.looks_like_zip
    deflated = io.BytesIO()
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a", b"a" * 1000)
    with pytest.raises(ZipStructureError, match="compressed"):
        read_entries(memoryview(deflated.getvalue()))


def test_map_file_maps_and_falls_back(tmp_path, fd_guard):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc" * 100)
    with map_file(path) as mapped:
        assert bytes(mapped.view[:3]) == b"abc" and mapped.view.readonly
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with map_file(empty) as mapped:
        assert mapped.view.nbytes == 0
    with use_fs(RecordingFS()), map_file(path) as mapped:
        assert mapped.view.nbytes == 300

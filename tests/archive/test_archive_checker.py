"""Restore refuses exactly what verify reports: links that escape together, damaged directories,
changed mode bytes, crafted manifests, and work beyond what the archive's size allows."""

from __future__ import annotations

import json
import os
import struct
import time
import tracemalloc
import zipfile
import zlib

import pytest
from archive_crafting import DIR, FILE, LINK, central_record, craft, replace_manifest, set_mode, tree_of

from persistkit.archive import Archiver, restore
from persistkit.errors import IntegrityError, PersistkitError, UnsafeArchiveError


@pytest.fixture
def box(tmp_path):
    """A directory to restore into, with a sibling file that must never change."""
    b = tmp_path / "box"
    b.mkdir()
    (b / "sibling.txt").write_text("untouched")
    return b


def assert_refused_and_untouched(archive, box, error=UnsafeArchiveError, match=None):
    before = tree_of(box.parent)
    with pytest.raises(error, match=match) as info:
        restore(archive, box / "restored")
    assert tree_of(box.parent) == before, "restore changed files outside its target"
    assert not (box / "restored").exists()
    return info.value


# -- finding 1: links that only escape together --------------------------------------------------

CHAIN = [
    ("a/", "dir", ""),
    ("a/b", "symlink", ".."),
    ("a/b/c", "symlink", ".."),
    ("a/b/c/d", "symlink", ".."),
    ("a/b/c/d/evil.txt", "file", "written above the restore directory"),
]


def test_a_chain_of_links_each_harmless_alone_is_refused(box):
    archive = craft(box.parent / "chain.zip", CHAIN)
    err = assert_refused_and_untouched(archive, box)
    assert "a/b" in str(err)
    assert not (box.parent / "evil.txt").exists() and not (box / "evil.txt").exists()


def test_a_chain_is_reported_by_verify_too(box):
    archive = craft(box.parent / "chain.zip", CHAIN)
    report = Archiver(box).verify(archive)
    assert not report.ok and any("a/b" in p for p in report.problems), report.problems


def test_a_link_to_a_link_that_escapes_is_refused(box):
    # a/b/q -> ../.. stays inside on paper (it names the restore root), and so does p -> a/b/q/..
    # on paper (a/b); followed by the kernel, p is the restore root's parent.
    archive = craft(
        box.parent / "link2link.zip",
        [("a/b/", "dir", ""), ("a/b/q", "symlink", "../.."), ("p", "symlink", "a/b/q/..")],
    )
    assert_refused_and_untouched(archive, box, match="p")


def test_a_file_written_through_a_link_laid_down_earlier_is_refused(box):
    archive = craft(
        box.parent / "through.zip",
        [("real/", "dir", ""), ("alias", "symlink", "real"), ("alias/f.txt", "file", "through a link")],
    )
    assert_refused_and_untouched(archive, box, match="alias")


def test_a_link_listed_after_the_files_below_it_is_refused(box):
    archive = craft(
        box.parent / "late.zip",
        [("a/b/c", "symlink", ".."), ("a/b", "symlink", ".."), ("a/b/c/evil.txt", "file", "x")],
    )
    assert_refused_and_untouched(archive, box)


def test_a_cycle_of_links_is_refused_not_looped(box):
    archive = craft(box.parent / "cycle.zip", [("x", "symlink", "y/z"), ("y", "symlink", "x/..")])
    assert_refused_and_untouched(archive, box)


def test_links_to_links_inside_the_workspace_still_round_trip(tmp_path):
    ws = tmp_path / "ws"
    (ws / "models" / "v2").mkdir(parents=True)
    (ws / "models" / "v2" / "w.npy").write_bytes(b"weights")
    os.symlink("v2", ws / "models" / "current")
    os.symlink("current", ws / "models" / "latest")
    os.symlink("../latest/w.npy", ws / "models" / "v2" / "self_ref")
    path = Archiver(ws, root_patterns=()).create()
    out = restore(path, tmp_path / "out")
    assert os.readlink(out / "models" / "latest") == "current"
    assert (out / "models" / "latest" / "w.npy").read_bytes() == b"weights"


# -- finding 10: restore checks what verify checks -----------------------------------------------


@pytest.fixture
def made(tmp_path):
    ws = tmp_path / "ws"
    (ws / "logs").mkdir(parents=True)
    (ws / "config").mkdir()
    (ws / "logs" / "training.log").write_text("step 1 loss 0.5\n" * 50)
    (ws / "config" / "config.json").write_text('{"lr": 0.1}')
    os.symlink("../config/config.json", ws / "logs" / "config_link")
    arc = Archiver(ws, root_patterns=())
    return arc, arc.create()


def test_an_archive_with_an_emptied_directory_is_refused(made, tmp_path):
    arc, path = made
    data = bytearray(path.read_bytes())
    eocd = data.rindex(b"PK\x05\x06")
    struct.pack_into("<HHI", data, eocd + 8, 0, 0, 0)  # no entries, directory size 0
    damaged = tmp_path / "emptied.zip"
    damaged.write_bytes(bytes(data))
    assert not arc.verify(damaged).ok
    with pytest.raises(IntegrityError, match=r"MANIFEST\.json"):
        restore(damaged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("member", "mode"),
    [("logs/config_link", FILE | 0o777), ("logs/training.log", LINK), ("config/", FILE)],
    ids=["link-to-file", "file-to-link", "dir-to-file"],
)
def test_a_changed_mode_byte_is_detected_and_refused(made, tmp_path, member, mode):
    arc, path = made
    damaged = tmp_path / "mode.zip"
    damaged.write_bytes(path.read_bytes())
    set_mode(damaged, member, mode)
    report = arc.verify(damaged)
    assert not report.ok and any(member.rstrip("/") in p for p in report.problems), report.problems
    with pytest.raises(PersistkitError, match=member.rstrip("/")):
        restore(damaged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_member_missing_from_the_manifest_or_the_zip_is_refused(made, tmp_path):
    arc, path = made
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("MANIFEST.json"))
    manifest["files"] = [e for e in manifest["files"] if e["path"] != "config/config.json"]
    extra = replace_manifest(path, tmp_path / "extra.zip", json.dumps(manifest))
    assert not arc.verify(extra).ok
    with pytest.raises(IntegrityError, match=r"config/config\.json"):
        restore(extra, tmp_path / "out")


def test_a_changed_byte_is_refused_by_restore(made, tmp_path):
    _, path = made
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("MANIFEST.json"))
    for entry in manifest["files"]:
        if entry["path"] == "config/config.json":
            entry["sha256"] = "0" * 64
    edited = replace_manifest(path, tmp_path / "edited.zip", json.dumps(manifest))
    with pytest.raises(IntegrityError, match=r"config/config\.json"):
        restore(edited, tmp_path / "out")
    assert not (tmp_path / "out").exists()


CRAFTED_MANIFESTS = {
    "a-list": "[]",
    "files-not-a-list": '{"format": "persistkit-archive/1", "files": 5}',
    "entry-not-a-dict": '{"format": "persistkit-archive/1", "files": [1, "x"]}',
    "path-not-a-string": '{"format": "persistkit-archive/1", "files": [{"path": 1, "kind": "file"}]}',
    "path-a-list": '{"format": "persistkit-archive/1", "files": [{"path": ["x"], "kind": "file"}]}',
    "size-a-string": (
        '{"format": "persistkit-archive/1", "files": [{"path": "logs/training.log", "kind": "file",'
        ' "size": "800", "sha256": {}}]}'
    ),
    "format-a-list": '{"format": ["persistkit-archive/1"], "files": []}',
    "deeply-nested": "[" * 100_000 + "]" * 100_000,
    "huge-number": '{"format": "persistkit-archive/1", "files": [], "x": ' + "9" * 5000 + "}",
    "not-utf8": b"\xff\xfe{}",
    "null": "null",
}


@pytest.mark.parametrize("text", CRAFTED_MANIFESTS.values(), ids=CRAFTED_MANIFESTS.keys())
def test_a_crafted_manifest_is_reported_not_raised(made, tmp_path, text):
    arc, path = made
    crafted = replace_manifest(path, tmp_path / "crafted.zip", text)
    report = arc.verify(crafted)
    assert not report.ok and report.problems
    with pytest.raises(PersistkitError):
        restore(crafted, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", CRAFTED_MANIFESTS.values(), ids=CRAFTED_MANIFESTS.keys())
def test_create_survives_a_crafted_archive_among_the_old_ones(made, text):
    arc, path = made
    old = arc.archive_dir / "training_backup_20000101_000000.zip"
    replace_manifest(path, old, text)
    arc.policy = type(arc.policy)(1)
    report = arc.create_report()  # prunes, reading the crafted manifest on the way
    assert report.path.exists() and arc.verify(report.path).ok


def test_verify_work_is_bounded_by_the_archive_size(made, tmp_path):
    """A deflated MANIFEST.json of 256 MiB of spaces fits in ~250 KiB of zip."""
    arc, path = made
    bomb = tmp_path / "bomb.zip"
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = squeeze.compress(b"{" + b" " * (256 << 20)) + squeeze.compress(b"}") + squeeze.flush()
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(bomb, "w") as zout:
        for info in zin.infolist():
            if info.filename != "MANIFEST.json":
                zout.writestr(info, zin.read(info))
        info = zipfile.ZipInfo("MANIFEST.json")
        info.compress_type = zipfile.ZIP_DEFLATED
        info.file_size = (256 << 20) + 2
        info.compress_size = len(body)
        info.CRC = zlib.crc32(b"}", zlib.crc32(b" " * (256 << 20), zlib.crc32(b"{")))
        zout.fp.write(info.FileHeader())  # the deflated body, written as a zip would
        zout.fp.write(body)
        info.header_offset = zout.start_dir
        zout.start_dir += len(info.FileHeader()) + len(body)
        zout.filelist.append(info)
        zout.NameToInfo[info.filename] = info
    assert bomb.stat().st_size < 2 << 20
    tracemalloc.start()
    start = time.perf_counter()
    try:
        report = arc.verify(bomb)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not report.ok and any("MANIFEST.json" in p for p in report.problems), report.problems
    assert peak < 64 << 20, f"verify allocated {peak >> 20} MiB for a {bomb.stat().st_size >> 10} KiB archive"
    assert elapsed < 5, f"verify took {elapsed:.1f} s"
    with pytest.raises(UnsafeArchiveError, match=r"MANIFEST\.json"):
        restore(bomb, tmp_path / "out")


def test_many_small_bombs_are_bounded_by_the_archive_size(tmp_path):
    """Each member under the 1 MiB per-member allowance, together far over any sane ratio."""
    zeros = b"\0" * (1 << 20)
    archive = craft(tmp_path / "many.zip", [(f"logs/{i}.bin", "file", zeros) for i in range(300)])
    deflated = tmp_path / "many_deflated.zip"  # deflated, each member is ~1 KiB in the file
    with zipfile.ZipFile(archive) as zin, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info), compress_type=zipfile.ZIP_DEFLATED)
    assert deflated.stat().st_size < 1 << 20
    report = Archiver(tmp_path).verify(deflated)
    assert not report.ok and any("bytes" in p for p in report.problems), report.problems
    with pytest.raises(UnsafeArchiveError):
        restore(deflated, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_well_formed_crafted_archive_restores(tmp_path):
    """The crafting helper itself makes archives the checker accepts: the refusals above are real."""
    archive = craft(
        tmp_path / "fine.zip",
        [("d/", "dir", ""), ("d/f.txt", "file", "hello"), ("d/link", "symlink", "f.txt")],
    )
    set_mode(archive, "d/", DIR)  # the mode it already has
    assert Archiver(tmp_path).verify(archive).ok
    restore(archive, tmp_path / "ok")
    assert (tmp_path / "ok" / "d" / "link").read_text() == "hello"


def test_a_member_whose_name_changed_case_is_not_the_one_listed(made, tmp_path):
    """Found by the mutation fuzz: 'logs/' renamed 'logS/' in the directory restored an extra directory."""
    arc, path = made
    data = bytearray(path.read_bytes())
    at = central_record(data, "logs/")
    data[at + 46 : at + 46 + 5] = b"logS/"
    renamed = tmp_path / "renamed.zip"
    renamed.write_bytes(bytes(data))
    report = arc.verify(renamed)
    assert not report.ok and any("logS/" in p for p in report.problems), report.problems
    with pytest.raises(IntegrityError, match="logS/"):
        restore(renamed, tmp_path / "out")


def test_a_link_that_escapes_only_where_case_matters_is_refused(box):
    """On a case-sensitive disk A/ is a directory and A/../.. climbs out, even though the link a -> x/y/z
    (the same name on a case-insensitive disk) would keep it inside."""
    archive = craft(
        box.parent / "case.zip",
        [
            ("A/f.txt", "file", "x"),
            ("x/y/z/", "dir", ""),
            ("a", "symlink", "x/y/z"),
            ("p", "symlink", "A/../.."),
        ],
    )
    problems = Archiver(box).verify(archive).problems
    assert any(p.startswith("symlink 'p'") and "outside" in p for p in problems), problems
    assert_refused_and_untouched(archive, box)


def test_a_flipped_data_byte_is_damage_not_an_attack(made, tmp_path):
    _, path = made
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("logs/training.log")
    data[info.header_offset + 30 + len(info.filename) + 4] ^= 0x01
    damaged = tmp_path / "flipped.zip"
    damaged.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"training\.log") as caught:
        restore(damaged, tmp_path / "out")
    assert not isinstance(caught.value, UnsafeArchiveError)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(IntegrityError, match="not a readable zip"):
        restore(truncated, tmp_path / "out")


def test_two_members_at_one_offset_are_refused_not_raised(tmp_path):
    """Found by `nox -s fuzz` (seeds 31036144, 31043295): equal spans made sorting compare ZipInfos."""
    import struct
    import zipfile

    import persistkit as pk
    from persistkit.errors import PersistkitError

    path = tmp_path / "twins.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.txt", b"x" * 10)
        zf.writestr("b.txt", b"y" * 10)
    data = bytearray(path.read_bytes())
    first = data.find(b"PK\x01\x02")
    second = data.find(b"PK\x01\x02", first + 4)
    offset = struct.unpack_from("<I", data, first + 42)[0]
    struct.pack_into("<I", data, second + 42, offset)  # b.txt's header is a.txt's
    path.write_bytes(bytes(data))
    with pytest.raises(PersistkitError):
        pk.Archiver(tmp_path / "ws").restore(path, tmp_path / "out")
    assert not pk.Archiver(tmp_path / "ws").verify(path).ok

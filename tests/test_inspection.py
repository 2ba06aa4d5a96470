"""pk.inspect on every kind of persistkit file, and a typed error naming the path for everything else."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import xxhash

import persistkit as pk
from persistkit.archive import VerifyReport
from persistkit.bundle import inspect as inspect_bundle
from persistkit.errors import FormatError, IntegrityError, PersistIOError, PersistkitError
from persistkit.format import envelope
from persistkit.format.crypto import KdfParams, Key
from persistkit.format.envelope import Header
from persistkit.format.manifest import Manifest
from persistkit.inspection import KeyFileInfo, inspect, to_json
from persistkit.io.fs import DelegatingFS, current_fs, use_fs
from persistkit.keys import write_key_file
from persistkit.state import BoundedLog, StateStore
from persistkit.state.audit import JournalInfo, StoreInfo


@pytest.fixture
def store_dir(tmp_path):
    """A real store: three checkpoints; gen-000002's journal holds two appends, the others are empty."""
    directory = tmp_path / "store"
    store = StateStore(directory, autosave_every=0)
    counter, trades = {"value": 0}, BoundedLog(10)  # a plain dict is its own state
    store.register("counter", counter)
    store.register("trades", trades)
    store.load()
    counter["value"] = 7
    store.save()
    trades.append({"id": 1})
    trades.append({"id": 2})
    store.close()
    return directory


@pytest.fixture
def bundle(tmp_path):
    return pk.save_bundle(tmp_path / "model.models", {"q_table": np.ones((4, 2), dtype=np.float32)})


@pytest.fixture
def archive(tmp_path):
    ws = tmp_path / "ws"
    (ws / "logs").mkdir(parents=True)
    (ws / "logs" / "training.log").write_text("step 1 loss 0.5\n" * 50)
    (ws / "logs" / "events.gz").write_bytes(b"event-bytes" * 50)  # already-compressed suffix: stored as is
    return pk.Archiver(ws, sources=("logs",), root_patterns=()).create()


def journal_with_records(store_dir):
    (path,) = [p for p in store_dir.glob("gen-*/trades.journal") if p.stat().st_size]
    return path


def sealed(tmp_path, name="note.pk", **kw):
    path = tmp_path / name
    path.write_bytes(envelope.seal(b"x" * 1000, kind="note", codec="bytes", meta={"who": "test"}, **kw))
    return path


# -- every kind --------------------------------------------------------------------------------------


def test_public_inspect_is_the_dispatcher():
    assert pk.inspect is inspect


def test_a_bundle_gives_its_manifest_as_before(bundle, fd_guard):
    os.unlink(str(bundle) + ".key")  # no key needed
    manifest = pk.inspect(bundle)
    assert isinstance(manifest, Manifest)
    assert manifest == inspect_bundle(bundle)
    assert [m.name for m in manifest.members] == ["q_table", "metadata"]
    assert manifest.encrypted


def test_kinds_are_sniffed_from_content_not_names(bundle, archive, tmp_path):
    disguised_bundle = tmp_path / "weights.bin"
    shutil.copy(bundle, disguised_bundle)
    disguised_archive = tmp_path / "backup.models"
    shutil.copy(archive, disguised_archive)
    assert isinstance(pk.inspect(disguised_bundle), Manifest)
    assert isinstance(pk.inspect(disguised_archive), VerifyReport)


def test_a_state_store_directory_gives_store_info(store_dir, fd_guard):
    info = pk.inspect(store_dir)
    assert isinstance(info, StoreInfo)
    assert info.current == 3 and info.problems == []
    assert [g.number for g in info.generations] == [1, 2, 3]
    assert {c.name for c in info.generations[-1].components} == {"counter", "trades"}


def test_an_archive_gives_its_verify_report(archive, fd_guard):
    report = pk.inspect(archive)
    assert isinstance(report, VerifyReport)
    assert report.ok and report.checked == 2


def test_a_damaged_archive_member_is_reported_not_hidden(archive):
    data = bytearray(archive.read_bytes())
    data[data.index(b"event-bytes") + 3] ^= 0x01
    archive.write_bytes(bytes(data))
    report = pk.inspect(archive)
    assert isinstance(report, VerifyReport)
    assert not report.ok and any("logs/events.gz" in p for p in report.problems)


def test_state_envelopes_give_their_headers(store_dir, fd_guard):
    store_file = pk.inspect(store_dir / "STORE")
    assert isinstance(store_file, Header) and store_file.kind == "store"
    current = pk.inspect(store_dir / "CURRENT")
    assert current.kind == "current" and current.meta["generation"] == 3
    manifest = pk.inspect(store_dir / "gen-000003" / "MANIFEST")
    assert manifest.kind == "manifest"
    component = pk.inspect(store_dir / "gen-000003" / "counter.pk")
    assert (component.kind, component.codec, component.encrypted) == ("component", "tree", False)
    assert component.meta["component"] == "counter"
    assert component.total_len == (store_dir / "gen-000003" / "counter.pk").stat().st_size


def test_an_encrypted_envelope_is_described_without_its_key(tmp_path):
    path = sealed(tmp_path, key=Key.generate())
    header = pk.inspect(path)
    assert isinstance(header, Header)
    assert header.encrypted and header.encryption.key_source == "key"
    assert (header.kind, header.codec, header.plain_len) == ("note", "bytes", 1000)
    doc = to_json(header)
    assert doc["encrypted"] is True and doc["encryption"]["alg"] == "AES-256-GCM-STREAM"
    assert "salt" not in json.dumps(doc["encryption"])


def test_a_journal_gives_its_record_count(store_dir):
    path = journal_with_records(store_dir)
    renamed = store_dir.parent / "copy-of-trades"  # sniffed by its framing, not its name
    shutil.copy(path, renamed)
    for candidate in (path, renamed):
        info = pk.inspect(candidate)
        assert isinstance(info, JournalInfo)
        assert (info.records, info.first_seq, info.torn_bytes, info.problem) == (2, 0, 0, "")
        assert info.file == str(candidate) and info.bytes == path.stat().st_size


def test_an_empty_journal_of_a_generation_is_an_empty_journal(store_dir):
    info = pk.inspect(store_dir / "gen-000003" / "trades.journal")
    assert isinstance(info, JournalInfo) and info.records == 0 and info.name == "trades"


def test_a_journal_with_a_torn_tail_or_inner_damage(store_dir):
    path = journal_with_records(store_dir)
    good = path.read_bytes()
    path.write_bytes(good + good[:10])  # an append that never finished
    torn = pk.inspect(path)
    assert torn.records == 2 and torn.torn_bytes == 10 and torn.problem == ""
    damaged = bytearray(good)
    damaged[len(good) // 2 - 8] ^= 0xFF  # inside the first record, the second still intact
    path.write_bytes(bytes(damaged))
    info = pk.inspect(path)
    assert "damaged at byte 0" in info.problem


def test_a_key_file_gives_its_fingerprint_and_mode(tmp_path):
    key = write_key_file(tmp_path / "team.key")
    info = pk.inspect(tmp_path / "team.key")
    assert info == KeyFileInfo(str(tmp_path / "team.key"), key.fingerprint, 0o600)
    assert info.secure
    os.chmod(tmp_path / "team.key", 0o644)
    loose = pk.inspect(tmp_path / "team.key")  # no InsecureKeyFileWarning (warnings are errors here)
    assert not loose.secure and loose.mode == 0o644
    assert key.material().hex() not in json.dumps(to_json(loose))


def test_to_json_serialises_every_kind(bundle, archive, store_dir, tmp_path):
    write_key_file(tmp_path / "k.key")
    cases = {
        bundle: "persistkit.bundle",
        archive: "persistkit.archive",
        store_dir: "persistkit.state-store",
        store_dir / "CURRENT": "persistkit.envelope",
        journal_with_records(store_dir): "persistkit.journal",
        tmp_path / "k.key": "persistkit.key-file",
    }
    for path, fmt in cases.items():
        doc = json.loads(json.dumps(to_json(pk.inspect(path)), default=str))
        assert doc["format"] == fmt, path


# -- everything else: a typed error naming the path ---------------------------------------------------


def assert_not_persistkit(path, *words):
    with pytest.raises(FormatError) as info:
        pk.inspect(path)
    message = str(info.value)
    assert str(path) in message and info.value.path == str(path)
    assert "persistkit files are" in message  # says what persistkit files look like
    for word in words:
        assert word in message
    return info.value


def test_a_missing_path_is_a_typed_io_error(tmp_path):
    missing = tmp_path / "nope.models"
    with pytest.raises(PersistIOError) as info:
        pk.inspect(missing)
    assert info.value.errno == errno.ENOENT and str(missing) in str(info.value)


class FailingReads(DelegatingFS):
    def open_read(self, path):
        raise OSError(errno.EIO, "Input/output error", os.fspath(path))


def test_a_read_error_is_a_typed_io_error(tmp_path):
    path = sealed(tmp_path)
    with use_fs(FailingReads(current_fs())), pytest.raises(PersistIOError) as info:
        pk.inspect(path)
    assert info.value.errno == errno.EIO and str(path) in str(info.value)


def test_garbage_is_not_a_persistkit_file(tmp_path):
    garbage = tmp_path / "random.bin"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_not_persistkit(garbage, "neither a zip")
    text = tmp_path / "config.json"
    text.write_text('{"steps": 1000}\n')
    assert_not_persistkit(text)


def test_a_pickle_is_named_as_one(tmp_path):
    path = tmp_path / "agent.pkl"
    path.write_bytes(pickle.dumps({"q": [1, 2, 3]}))
    assert_not_persistkit(path, "looks like a pickle")


def test_an_empty_file_is_not_a_persistkit_file(tmp_path):
    empty = tmp_path / "empty.models"
    empty.write_bytes(b"")
    assert_not_persistkit(empty, "empty (0 bytes)")
    lone = tmp_path / "trades.journal"  # not inside a generation: nothing says it is a journal
    lone.write_bytes(b"")
    assert_not_persistkit(lone, "empty")


def test_a_directory_that_is_not_a_store(tmp_path, store_dir):
    plain = tmp_path / "logs"
    plain.mkdir()
    (plain / "training.log").write_text("hi")
    assert_not_persistkit(plain, "without a STORE file")
    assert_not_persistkit(store_dir / "gen-000002", "inspect its parent directory")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert_not_persistkit(fifo, "not a regular file")


def test_a_foreign_zip_is_not_a_persistkit_file(tmp_path):
    path = tmp_path / "policy.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data", "{}")
    assert_not_persistkit(path, "other zip file")
    lookalike = tmp_path / "other.zip"
    with zipfile.ZipFile(lookalike, "w") as z:
        z.writestr("MANIFEST.json", '{"format": "someone-else/3"}')
    assert_not_persistkit(lookalike, "not a persistkit archive manifest")


def test_a_truncated_bundle_is_an_integrity_error(bundle):
    data = bundle.read_bytes()
    bundle.write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match="damaged or truncated") as info:
        pk.inspect(bundle)
    assert info.value.path == str(bundle) and str(bundle) in str(info.value)


def test_a_truncated_archive_is_an_integrity_error(archive):
    data = archive.read_bytes()
    archive.write_bytes(data[:-30])
    with pytest.raises(IntegrityError, match="damaged or truncated") as info:
        pk.inspect(archive)
    assert info.value.path == str(archive)


def test_a_bundle_with_an_edited_manifest_is_an_integrity_error(bundle):
    with zipfile.ZipFile(bundle) as z:
        entries = [(i, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(bundle, "w") as z:
        for info, data in entries:
            if info.filename == "manifest.json":
                data = data.replace(b'"float32"', b'"float64"')
            z.writestr(info, data)
    with pytest.raises(IntegrityError, match="manifest") as info:
        pk.inspect(bundle)
    assert info.value.path == str(bundle)


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda data: data[:-5], "truncated"),
        (lambda data: data + b"\0\0\0", "extra bytes appended"),
        (lambda data: data[:30], "cut off inside the"),
        (lambda data: data[:4], "cut off inside the magic"),
    ],
)
def test_a_cut_or_padded_envelope_is_an_integrity_error(tmp_path, damage, words):
    path = sealed(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(IntegrityError, match=words) as info:
        pk.inspect(path)
    assert info.value.path == str(path)


def test_a_damaged_envelope_header_is_an_integrity_error(tmp_path):
    path = sealed(tmp_path)
    data = bytearray(path.read_bytes())
    data[20] ^= 0x10  # inside the msgpack header: the header check no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="header checksum") as info:
        pk.inspect(path)
    assert info.value.path == str(path)


def test_an_envelope_from_a_newer_persistkit_says_upgrade(tmp_path):
    path = sealed(tmp_path)
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, 8, envelope.FORMAT_VERSION + 1)
    (header_len,) = struct.unpack_from("<I", data, 10)
    end = 14 + header_len
    data[end : end + 8] = xxhash.xxh3_64_digest(bytes(data[:end]))  # an intact newer file, not damage
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="upgrade persistkit") as info:
        pk.inspect(path)
    assert info.value.path == str(path)


def test_importing_the_dispatcher_stays_light():
    code = "import json, sys, persistkit.inspection; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    heavy = (
        "cryptography",
        "torch",
        "sklearn",
        "zstandard",
        "msgpack",
        "persistkit.state",
        "persistkit.bundle",
    )
    assert not {m for m in loaded for h in heavy if m == h or m.startswith(h + ".")}


def test_an_archive_with_a_mangled_method_field_reports_that_member(archive):
    data = bytearray(archive.read_bytes())
    central = data.rindex(b"PK\x01\x02", 0, data.rindex(b"logs/training.log"))  # that file's entry
    struct.pack_into("<H", data, central + 10, 99)  # a compression method no zip reader knows
    archive.write_bytes(bytes(data))
    report = pk.inspect(archive)
    assert not report.ok and any("logs/training.log" in p for p in report.problems), report.problems


def test_cut_and_bit_flipped_files_only_ever_raise_typed_errors(bundle, archive, store_dir, tmp_path):
    """The Detection promise for inspect: damage gives a result or a PersistkitError, never another exception."""
    rng = np.random.default_rng(7)
    victim = tmp_path / "victim"
    sources = [bundle, archive, store_dir / "CURRENT", journal_with_records(store_dir)]
    for source in sources:
        data = source.read_bytes()
        cases = [data[:n] for n in np.linspace(0, len(data) - 1, 30, dtype=int)]
        for _ in range(30):
            flipped = bytearray(data)
            flipped[rng.integers(len(data))] ^= 1 << int(rng.integers(8))
            cases.append(bytes(flipped))
        for case in cases:
            victim.write_bytes(case)
            try:
                pk.inspect(victim)
            except PersistkitError as err:
                assert err.path is not None and str(victim) in str(err), (source, str(err))


def test_an_encrypted_store_is_described_without_its_password(tmp_path):
    directory = tmp_path / "secret-store"
    store = StateStore(directory, autosave_every=0, password="s3cret", kdf=KdfParams.floor())
    counter, trades = {"value": 0}, BoundedLog(5)
    store.register("counter", counter)
    store.register("trades", trades)
    store.load()
    trades.append({"id": 1})
    store.abandon()
    info = pk.inspect(directory)
    assert isinstance(info, StoreInfo) and info.encrypted and info.problems == []
    component = pk.inspect(directory / "gen-000001" / "counter.pk")
    assert component.encrypted and component.encryption.key_source == "password"
    assert to_json(component)["encryption"]["kdf"]["name"] == "scrypt"
    journal = pk.inspect(directory / "gen-000001" / "trades.journal")
    assert isinstance(journal, JournalInfo) and journal.records == 1  # framing is readable, payload is not

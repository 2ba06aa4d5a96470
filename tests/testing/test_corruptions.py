"""corruptions: damaged copies of every kind; assert_detected fails only on silent wrong loads."""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from pathlib import Path

import pytest

from persistkit.errors import IntegrityError, PersistkitError
from persistkit.format import envelope
from persistkit.io import atomic_write
from persistkit.testing.corruptions import KINDS, Corruptions, damaged_copies


def test_every_kind_is_produced_deterministically():
    data = bytes(range(256)) * 20  # 5120 bytes: two 4 KiB cut points, ten sectors
    first = list(damaged_copies(data, seed=3))
    assert {kind for kind, _, _ in first} == set(KINDS)
    assert first == list(damaged_copies(data, seed=3))
    assert all(damaged != data for _, _, damaged in first)
    cuts = {len(d) for kind, _, d in first if kind == "truncated"}
    assert {0, 1, 2560, 4096, 5119} <= cuts


def test_sealed_envelopes_are_detected(tmp_path):
    path = tmp_path / "state.pk"
    atomic_write(path, envelope.seal(json.dumps({"balance": 5}).encode(), kind="state", codec="json"))

    def load(p):
        return json.loads(envelope.open_envelope(Path(p).read_bytes(), source=str(p)).payload)

    corruptions = Corruptions(samples=8)
    assert sum(1 for _ in corruptions(path)) > 20
    tried = corruptions.assert_detected(load, raises=PersistkitError)
    assert tried > 20
    assert load(path) == {"balance": 5}  # the original is restored


def test_silent_defaults_fail_with_the_damage_named(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"balance": 5}))

    def load_or_default(p):
        try:
            return json.loads(Path(p).read_text())
        except ValueError:
            return {"balance": 0}

    corruptions = Corruptions()
    corruptions(path, kinds=("truncated",))
    with pytest.raises(
        AssertionError, match=r"silent corruption\). First: state.json: truncated to 0 of 14 bytes"
    ):
        corruptions.assert_detected(load_or_default, kinds=("truncated",))


def test_untyped_exceptions_fail_when_typed_ones_are_required(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"balance": 5}))
    corruptions = Corruptions()
    corruptions(path)
    with pytest.raises(
        AssertionError, match=r"raised something other than IntegrityError\. First: .*JSONDecodeError"
    ):
        corruptions.assert_detected(lambda p: json.loads(Path(p).read_text()), raises=IntegrityError)


def test_a_reported_fallback_counts_as_detected(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"balance": 5}))

    def load_with_fallback(p):
        try:
            return json.loads(Path(p).read_text())
        except ValueError:
            warnings.warn(f"{p} is damaged; using the backup", FallbackWarning, stacklevel=2)
            return {"balance": 4}

    corruptions = Corruptions()
    corruptions(path, kinds=("truncated",))
    assert corruptions.assert_detected(load_with_fallback, kinds=("truncated",), warns=FallbackWarning) > 0


class FallbackWarning(UserWarning):
    pass


def test_an_unrelated_warning_is_not_detection(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"balance": 5}))

    def load_noisily():
        try:
            return json.loads(path.read_text())
        except ValueError:
            warnings.warn("some unrelated library notice", UserWarning, stacklevel=2)
            return {"balance": 0}  # silently wrong

    with pytest.raises(AssertionError, match="silent corruption"):
        Corruptions()(path, kinds=("truncated",)).assert_detected(load_noisily)


def test_the_returned_set_chains_iterates_and_takes_a_zero_arg_load(tmp_path):
    path = tmp_path / "state.pk"
    path.write_bytes(envelope.seal(b"payload" * 50, kind="blob", codec="bytes"))
    damaged = Corruptions()(path, kinds=("bit-flipped",))
    assert all(c.kind == "bit-flipped" for c in damaged) and len(list(damaged)) > 2
    assert damaged.assert_detected(lambda: envelope.open_envelope(path.read_bytes()).payload) > 2


def test_an_mmap_backed_baseline_is_detached_before_the_file_is_damaged(tmp_path):
    np = pytest.importorskip("numpy")
    path = tmp_path / "w.npy"
    np.save(path, np.arange(64, dtype=np.float64))

    # np.load(mmap_mode="r") aliases the file: without a detached baseline, the damaged
    # data would show on both sides of the comparison and the damage would pass as equal.
    with pytest.raises(AssertionError, match="silent corruption"):
        Corruptions()(path, kinds=("sector-trashed",)).assert_detected(lambda: np.load(path, mmap_mode="r"))


def test_safetensors_loads_are_compared_against_a_detached_copy(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    np = pytest.importorskip("numpy")
    path = tmp_path / "w.safetensors"
    st.save_file({"w": np.arange(256, dtype=np.float32)}, str(path))
    with pytest.raises(AssertionError, match="silent corruption"):
        Corruptions()(path, kinds=("bit-flipped",)).assert_detected(lambda: st.load_file(str(path)))


def test_nothing_registered_is_an_error():
    with pytest.raises(ValueError, match="call corruptions\\(path\\) first"):
        Corruptions().assert_detected(print)


# -- damage aimed where the data is; loads isolated; hollow loaders caught ------------------------


def children_of_this_process() -> set[int]:
    found: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            found.update(int(p) for p in f.read().split())
    return found


def allocated_bytes(path) -> int:
    return os.stat(path).st_blocks * 512


def test_a_sparse_lmdb_map_is_damaged_in_its_few_data_pages_and_sigbus_is_a_finding(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    where = str(tmp_path / "positions")
    with lmdb.open(where, map_size=4 << 20, writemap=True) as env, env.begin(write=True) as txn:
        for i in range(50):
            txn.put(f"pos{i}".encode(), f"qty={i * 10};px={100 + i}".encode() * 4)
    path = tmp_path / "positions" / "data.mdb"
    pristine = path.read_bytes()
    assert len(pristine) == 4 << 20 and allocated_bytes(path) < 64 << 10  # 4 MiB map, a few pages written

    def load():
        with lmdb.open(where, readonly=True, lock=False, map_size=4 << 20) as env, env.begin() as txn:
            return dict(txn.cursor())

    before = children_of_this_process()
    corruptions = Corruptions()
    with pytest.raises(AssertionError) as failure:
        corruptions(path).assert_detected(load)
    message = str(failure.value)
    # LMDB has no checksums: a flipped bit in a value page loads as another value
    assert "silent corruption). First: data.mdb: " in message and "(LMDB leaf page" in message
    # and a file shorter than its map kills the reader with SIGBUS: reported, the session goes on
    assert "load() crashed its process on" in message and "damaged copies of data.mdb (LMDB)" in message
    report = corruptions.last_report.files[0]
    assert any("killed by SIGBUS" in detail for _, detail in report.cases["crashed"])
    regions = {region for _, region in report.table}
    assert {"LMDB meta page 0", "LMDB meta page 1"} <= regions
    assert any(region.startswith("LMDB leaf page") for region in regions)
    in_holes = sum(sum(c.values()) for (_, region), c in report.table.items() if region.startswith("hole"))
    assert in_holes <= 2  # a cut one byte short and one at the end of the data; all else hit the 20 KiB
    assert path.read_bytes() == pristine and allocated_bytes(path) < 64 << 10  # restored, holes and all
    assert children_of_this_process() == before


def test_lightgbm_hangs_and_aborts_on_damaged_models_are_findings_not_the_end_of_the_run(tmp_path):
    np = pytest.importorskip("numpy")
    lgb = pytest.importorskip("lightgbm")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    params = {"objective": "binary", "verbose": -1, "num_leaves": 4, "num_threads": 1, "deterministic": True}
    path = tmp_path / "model.txt"
    lgb.train(params, lgb.Dataset(x, (x[:, 0] > 0).astype(int)), 5).save_model(str(path))

    def load(p):
        return lgb.Booster(model_file=str(p)).predict(x[:5])

    corruptions = Corruptions()
    with pytest.raises(AssertionError) as failure:
        corruptions(path).assert_detected(load, timeout=2)
    message = str(failure.value)
    assert "load() never returned on" in message and "did not return within 2 s; stuck at " in message
    assert "load() crashed its process on" in message and "killed by SIGABRT" in message
    report = corruptions.last_report.files[0]
    assert report.count("hung") >= 1 and report.count("crashed") >= 1 and report.count("detected") >= 1


def make_ledger(path, *, checksummed=False):
    import hashlib
    import sqlite3

    rows = [(i, f"SYM{i}", 100.0 + i, i) for i in range(200)]
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE trades (id INTEGER PRIMARY KEY, sym TEXT, price REAL, qty INTEGER)")
        conn.executemany("INSERT INTO trades VALUES (?, ?, ?, ?)", rows)
        if checksummed:
            conn.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT)")
            conn.execute(
                "INSERT INTO meta VALUES ('digest', ?)", (hashlib.sha256(repr(rows).encode()).hexdigest(),)
            )
    conn.close()


def read_trades(path, *, check="none"):
    import hashlib
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        if check == "quick_check" and conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise ValueError(f"{path}: PRAGMA quick_check failed")
        rows = conn.execute("SELECT * FROM trades ORDER BY id").fetchall()
        if check == "digest":
            (want,) = conn.execute("SELECT v FROM meta WHERE k = 'digest'").fetchone()
            if hashlib.sha256(repr(rows).encode()).hexdigest() != want:
                raise ValueError(f"{path}: ledger checksum mismatch")
        return rows
    finally:
        conn.close()


@pytest.mark.parametrize("check", ["none", "quick_check"])
def test_a_sqlite_ledger_gets_a_verdict_naming_sqlites_lack_of_checksums_and_the_options(tmp_path, check):
    path = tmp_path / "ledger.db"
    make_ledger(path)
    corruptions = Corruptions()
    with pytest.raises(AssertionError) as failure:
        corruptions(path).assert_detected(lambda p: read_trades(p, check=check))
    message = str(failure.value)
    assert "silent corruption" in message and "b-tree page" in message
    assert "SQLite keeps no checksums" in message
    for option in (
        "cksumvfs",
        ".filectrl reserve_bytes 8",
        "PRAGMA quick_check",
        "application-level checksum",
    ):
        assert option in message
    assert "Exclude the file" in message


def test_a_sqlite_ledger_with_a_checksummed_row_passes(tmp_path):
    path = tmp_path / "ledger.db"
    make_ledger(path, checksummed=True)
    corruptions = Corruptions()
    assert corruptions(path).assert_detected(lambda p: read_trades(p, check="digest")) > 50
    report = corruptions.last_report.files[0]
    assert report.format == "SQLite" and report.count("silent") == 0 and report.count("detected") > 50


def test_a_torch_checkpoint_is_damaged_in_each_part_of_its_zip(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    torch.save({"w": torch.arange(100.0), "b": torch.ones(3)}, path)
    regions = {c.region for c in Corruptions()(path)}
    assert {"zip central directory", "zip end of central directory"} <= regions
    assert {"zip local header of model/data.pkl", "zip member data of model/data.pkl"} <= regions
    assert "zip member data of model/data/0" in regions
    corruptions = Corruptions()
    # torch.load does not check the members' CRC-32: a flipped bit in a tensor loads as another value
    with pytest.raises(
        AssertionError, match=r"silent corruption\). First: model.pt: .*\(zip member data of model/data/"
    ):
        corruptions(path).assert_detected(lambda: torch.load(path))
    assert corruptions.last_report.files[0].format == "zip (torch .pt)"


def test_a_load_that_ignores_the_path_it_is_handed_fails(tmp_path):
    path = tmp_path / "positions.json"
    path.write_text(json.dumps({"AAPL": 10}))
    elsewhere = tmp_path / "positions"  # the loader reads a directory, never the file
    elsewhere.mkdir()

    def load_directory(_path):
        return {f.name: json.loads(f.read_text()) for f in elsewhere.glob("*.json")}

    with pytest.raises(
        AssertionError, match=r"load\(\) does not read the damaged file: all \d+ damaged copies"
    ):
        Corruptions()(path).assert_detected(load_directory)


def test_a_memoised_load_fails(tmp_path):
    import functools

    path = tmp_path / "positions.json"
    path.write_text(json.dumps({"AAPL": 10}))

    @functools.cache
    def load(p):
        return json.loads(Path(p).read_text())

    with pytest.raises(AssertionError, match="does not read the damaged file"):
        Corruptions()(path).assert_detected(load)


def test_a_json_number_digit_is_flipped_into_another_valid_number(tmp_path):
    path = tmp_path / "positions.json"
    path.write_text(json.dumps({"AAPL": {"qty": 10, "px": 187.5}}))
    copies = Corruptions()(path, kinds=("bit-flipped",))
    digits = [c for c in copies if c.region == "JSON number digit" and c.description.startswith("bit 0 ")]
    assert digits and all(json.loads(c.data) != json.loads(path.read_text()) for c in digits)
    with pytest.raises(AssertionError, match=r"(?s)silent corruption.*\(JSON number digit\)"):
        Corruptions()(path).assert_detected(lambda p: json.loads(Path(p).read_text()))


def test_a_load_that_rewrites_the_file_never_leaks_into_the_next_copy(tmp_path):
    path = tmp_path / "state.pk"
    path.write_bytes(envelope.seal(b"payload" * 50, kind="blob", codec="bytes"))
    pristine = path.read_bytes()

    def load_and_scribble(p):
        data = Path(p).read_bytes()
        with open(p, "r+b") as f:  # a careless reader that "repairs" the file in place
            f.write(b"\0" * 16)
        return envelope.open_envelope(data).payload

    corruptions = Corruptions(samples=4)
    corruptions(path).assert_detected(load_and_scribble, raises=PersistkitError)
    assert corruptions.last_report.files[0].load_writes > 0  # noticed, and undone before the next copy
    assert path.read_bytes() == pristine


def test_the_report_says_what_happened_per_kind_and_region(tmp_path):
    path = tmp_path / "state.pk"
    atomic_write(path, envelope.seal(json.dumps({"balance": 5}).encode(), kind="state", codec="json"))
    corruptions = Corruptions(samples=4)
    corruptions(path).assert_detected(
        lambda p: envelope.open_envelope(Path(p).read_bytes()), raises=PersistkitError
    )
    text = corruptions.last_report.render()
    assert text.startswith("state.pk (persistkit envelope, ")
    assert re.search(r"bit-flipped +envelope header check +\d+ detected", text)
    assert re.search(r"truncated +envelope trailer +\d+ detected", text)


def test_tolerate_accepts_crashes_as_detection(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    where = str(tmp_path / "db")
    with lmdb.open(where, map_size=1 << 20, writemap=True) as env, env.begin(write=True) as txn:
        txn.put(b"k", b"v" * 100)

    def load():
        with lmdb.open(where, readonly=True, lock=False, map_size=1 << 20) as env, env.begin() as txn:
            return dict(txn.cursor())

    corruptions = Corruptions()
    with pytest.raises(AssertionError) as failure:
        corruptions(Path(where) / "data.mdb", kinds=("truncated",)).assert_detected(load, tolerate=("crash",))
    assert "crashed its process" not in str(failure.value)
    with pytest.raises(ValueError, match="tolerate= takes"):
        corruptions.assert_detected(load, tolerate=("segfault",))


def test_a_load_that_cannot_work_in_the_worker_is_an_error_not_a_pass(tmp_path):
    path = tmp_path / "state.pk"
    path.write_bytes(envelope.seal(b"payload" * 50, kind="blob", codec="bytes"))
    parent = os.getpid()

    def load_like_cuda(p):  # CUDA, for one, refuses to run in a forked child: every load would "raise"
        if os.getpid() != parent:
            raise RuntimeError("Cannot re-initialize CUDA in forked subprocess")
        return envelope.open_envelope(Path(p).read_bytes()).payload

    with pytest.raises(AssertionError, match=r"loading the undamaged state.pk inside the isolated worker"):
        Corruptions()(path).assert_detected(load_like_cuda)
    assert Corruptions(isolate=False)(path).assert_detected(load_like_cuda, raises=PersistkitError) > 20


def test_a_load_that_is_not_deterministic_is_an_error(tmp_path):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"balance": 5}))

    def load_with_timestamp(p):
        return {**json.loads(Path(p).read_text()), "loaded_at": time.time_ns()}

    with pytest.raises(
        AssertionError, match=r"does not give what the first load gave \(silent: load\(\)\['loaded_at'\]"
    ):
        Corruptions()(path).assert_detected(load_with_timestamp)


def test_the_session_report_gets_the_verdicts_per_file(tmp_path):
    from persistkit.testing.report import Recorder

    path = tmp_path / "state.pk"
    path.write_bytes(envelope.seal(b"payload" * 50, kind="blob", codec="bytes"))
    recorder = Recorder()
    tried = Corruptions(recorder=recorder, samples=4)(path).assert_detected(
        lambda p: envelope.open_envelope(Path(p).read_bytes()), raises=PersistkitError
    )
    (run,) = recorder.runs
    assert run["corruptions"] == tried and run["violations"] == 0
    assert run["files"] == {str(path): {"format": "persistkit envelope", "detected": tried}}
    json.dumps(recorder.to_dict())  # the JSON report can carry it

"""Minimal repros of the durability bugs listed in docs/findings.md (and of two deliberate choices).

Each test passes while the bug is there and names it; when a library fixes it, the test
fails and the finding (and the catalog row) must be updated. Where a real disk can show
the bug, the repro uses one (a tiny tmpfs filled up: a real ENOSPC, no injection); the
others use the verifier, whose verdict the source of the library confirms (see
docs/findings.md for the file:function of each).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_ml_catalog import _dcp, _lightgbm_trees, _tabular

from persistkit.testing.isolate import Worker, run_isolated


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the file system refuses more (a real ENOSPC)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)


# -- 1. XGBoost 3.2.0: save_model returns normally after the last write failed -----------------
def test_xgboost_save_model_returns_normally_on_a_full_disk_and_leaves_a_truncated_model(tmp_path, tmpfs):
    """dmlc-core FileStream::Close ignores fclose(): the tail flushed there is lost silently."""
    import xgboost as xgb

    x, y = _tabular()
    data = xgb.DMatrix(x, label=y)
    params = {"max_depth": 2, "nthread": 1}
    old = xgb.train(params, data, num_boost_round=2)
    new = xgb.train(params, data, num_boost_round=5)
    size = len(new.save_raw("ubj"))
    assert 4096 < size <= 8192  # the first page leaves in fwrite, the tail only in fclose
    with tmpfs(tmp_path / "disk", size="8k") as disk:  # two pages
        path = disk / "model.ubj"
        old.save_model(path)  # one page
        fill(disk / "filler")  # the other one: the disk is full
        new.save_model(path)  # THE BUG: returns normally; the O_TRUNC freed one page, the tail got ENOSPC
        assert os.path.getsize(path) == 4096 < size
        with pytest.raises(xgb.core.XGBoostError):
            xgb.Booster(model_file=str(path))


# -- 2. LightGBM 4.7.0: a torn model file kills or hangs every process that loads it ------------
def _lightgbm_model_text(rounds: int) -> bytes:
    import lightgbm as lgb

    x, y = _tabular()
    params = {"verbose": -1, "num_threads": 1, "min_data_in_leaf": 2}
    booster = lgb.train(params, lgb.Dataset(x, label=y, params={"verbose": -1}), num_boost_round=rounds)
    return booster.model_to_string().encode()


@pytest.fixture
def lightgbm_loader():
    with Worker(_lightgbm_trees, timeout=5.0) as worker:
        yield worker


def test_lightgbm_loader_dies_on_a_truncated_model_file(tmp_path):
    """GBDT::LoadModelFromString trusts the header's tree_sizes and reads past the buffer's end.

    Each cut is loaded in a process of its own: in a reused one, the read past the end can land on
    the freed buffer of the previous (longer) file and return its trees, which hides the crash."""
    text = _lightgbm_model_text(5)
    deaths = set()
    for cut in (1000, 2000, 3000, 4096):  # a process crash or a full disk mid-save leaves a prefix
        path = tmp_path / f"cut-{cut}.txt"
        path.write_bytes(text[:cut])
        result = run_isolated(_lightgbm_trees, str(path), timeout=30.0)
        assert result.kind in ("killed", "raised"), result.describe()
        if result.kind == "killed":
            deaths.add(result.signal)
    assert deaths and deaths <= {"SIGSEGV", "SIGABRT"}, deaths  # THE BUG: no LightGBMError, a dead process


def test_lightgbm_loader_hangs_on_a_model_file_with_a_zero_filled_tail(tmp_path, lightgbm_loader):
    """What a power loss leaves of an in-place rewrite: the size reached the disk, the last page did not.
    Common::GetLine stops at the NUL byte, SkipNewLine does not move past it: an endless loop."""
    text = bytearray(_lightgbm_model_text(5))
    text[4096:] = bytes(len(text) - 4096)
    path = tmp_path / "model.txt"
    path.write_bytes(bytes(text))
    result = lightgbm_loader.call(str(path))
    assert result.kind == "timeout", result.describe()  # THE BUG: never returns, never raises
    assert "LoadModelFromString" in result.traceback or "basic.py" in result.traceback


def test_lightgbm_save_model_on_a_full_disk_leaves_a_file_that_kills_the_loader(
    tmp_path, tmpfs, lightgbm_loader
):
    """save_model does raise here (the Python append of pandas_categorical fails too), but the
    C++ writer has already truncated the model in place and its fclose() error was ignored."""
    import lightgbm as lgb

    old, new = _lightgbm_model_text(2), _lightgbm_model_text(5)
    assert len(old) <= 4096 < len(new) <= 8192
    with tmpfs(tmp_path / "disk", size="8k") as disk:
        path = disk / "model.txt"
        path.write_bytes(old)
        fill(disk / "filler")
        with pytest.raises(OSError, match="No space left on device"):
            lgb.Booster(model_str=new.decode()).save_model(path)
        assert os.path.getsize(path) == 4096  # the old model is gone, the new one torn
        result = lightgbm_loader.call(str(path))
        assert result.kind == "killed" and result.signal in ("SIGSEGV", "SIGABRT"), result.describe()


# -- 4. torch.distributed.checkpoint 2.13.0: .metadata is fsynced before it is written ----------
def test_dcp_fsyncs_the_metadata_before_writing_it_and_never_fsyncs_the_directory(crash_points, tmp_path):
    with contextlib.ExitStack() as stack:
        save, load = _dcp(tmp_path, stack, overwrite=False)
        with pytest.raises(AssertionError, match="power-loss model"):
            crash_points(save, load, model="power-loss", observe="syscalls")
    report = crash_points.reports[-1]
    ops = report.operations
    fsync = next(i for i, op in enumerate(ops) if re.search(r"fsync ckpt/step-2/\.metadata\.tmp$", op))
    write = next(
        i for i, op in enumerate(ops) if re.search(r"write ckpt/step-2/\.metadata\.tmp \[0:\d+\]$", op)
    )
    assert fsync < write, ops  # THE BUG: pickle.dump() into a BufferedWriter, os.fsync() with no flush()
    assert not any(" fsync_dir " in f" {op} " for op in ops), ops  # and no directory is ever synced
    # after dcp.save() returned: the rename reached the disk, the metadata bytes did not
    lost_metadata = [
        v
        for v in report.violations
        if v.complete
        and re.search(r": #\d+ write ckpt/step-2/\.metadata\.tmp \[0:\d+\] left as zeros", v.description)
    ]
    assert lost_metadata and "dcp.load failed" in lost_metadata[0].got.describe(), report.violations


# -- 8. h5py 3.16.0 (HDF5 2.0.0): File.close() after a real ENOSPC corrupts memory -------------
def _h5py_write_on_a_full_disk(directory: str) -> bool:
    """Whether the dataset reads back whole after close() returned."""
    import h5py

    path = os.path.join(directory, "data.h5")
    f = h5py.File(path, "w")
    f["x"] = np.ones(4096)  # 32 KiB
    f.close()  # flushes the dataset into a full disk
    try:
        with h5py.File(path, "r") as again:
            return bool(np.array_equal(again["x"][()], np.ones(4096)))
    except Exception:
        return False


def test_h5py_file_close_never_raises_on_a_full_disk_it_crashes_or_returns(tmp_path, tmpfs):
    """In a fresh process close() dies of SIGSEGV (H5F__dest -> H5D_flush_all -> H5D__flush_all_cb);
    in one that used h5py/Keras before, close() may return normally over the failed write (the
    ENOSPC only printed from ObjectID._dealloc) and the process die later (SIGBUS)."""
    with tmpfs(tmp_path / "disk", size="64k") as disk:
        fill(disk / "filler")
        os.truncate(disk / "filler", os.path.getsize(disk / "filler") - 4 * 4096)  # 4 pages left
        result = run_isolated(_h5py_write_on_a_full_disk, str(disk), timeout=60.0)
    # THE BUG: never the OSError (No space left on device) a full disk should give
    if result.kind == "killed":
        assert result.signal in ("SIGSEGV", "SIGBUS", "SIGABRT"), result.describe()
        assert "in close" in result.traceback, result.traceback
    else:
        assert result.kind == "returned" and result.value is False, result.describe()  # swallowed


# -- deliberate choices ------------------------------------------------------------------------
def _sqlite_put(path: str, value: int) -> None:
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA synchronous=EXTRA")
        con.execute("UPDATE t SET v = ?", (value,))
        con.commit()
    finally:
        con.close()


def _sqlite_get(path: str) -> Any:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT v FROM t").fetchall()
    finally:
        con.close()


def test_sqlite_ignores_a_failed_fsync_of_the_journal_directory_by_design(disk_faults, tmp_path):
    """os_unix.c unixSync: the directory fsync after the journal's creation (UNIXFILE_DIRSYNC) has its
    result ignored on purpose (full_fsync's return value is dropped); the one after the journal's
    unlink (EXTRA) is checked. The consequence the verifier shows: the journal's name may not be
    durable, the transaction goes on overwriting database pages, and a power loss then leaves a
    database with no hot journal to roll it back: PRAGMA integrity_check reports rows missing from
    the index."""
    db = str(tmp_path / "db.sqlite")
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)")
    con.execute("CREATE INDEX tv ON t(v)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"old-{i:04d}-" + "x" * 200) for i in range(60)])
    con.commit()
    con.close()

    def put() -> None:  # one transaction that rewrites table and index pages
        con = sqlite3.connect(db)
        try:
            con.execute("PRAGMA synchronous=EXTRA")
            con.execute("UPDATE t SET v = 'new' || substr(v, 4)")
            con.commit()
        finally:
            con.close()

    def get() -> Any:
        con = sqlite3.connect(db)
        try:
            return con.execute("PRAGMA integrity_check").fetchall(), con.execute(
                "SELECT count(*), min(v), max(v) FROM t"
            ).fetchall()
        finally:
            con.close()

    with pytest.raises(AssertionError):
        disk_faults(put, get, observe="syscalls", errnos=("EIO",), modes=("once",), short_writes=False)
    report = disk_faults.reports[-1]
    dir_syncs = [op for op in report.operations if " fsync_dir " in f" {op} "]
    assert len(dir_syncs) == 2, report.operations
    assert [v.fault for v in report.violations] == [
        f"EIO at {dir_syncs[0].replace(str(tmp_path), '.')} (once)"
    ], [(v.fault, v.problems) for v in report.violations]
    violation = report.violations[0]
    assert violation.raised is None  # SQLite returned normally
    problem = violation.problems[0]
    assert "reverted #1 create db.sqlite-journal did not persist" in problem, problem
    assert "missing from index tv" in problem, problem


def test_torch_save_truncates_the_old_file_before_a_failed_write(disk_faults, tmp_path):
    """torch.save(obj, path) writes in place (PyTorchFileWriter opens the path O_TRUNC): a failed
    write leaves neither the old nor the new checkpoint. pytorch/pytorch#48243, declined."""
    import torch

    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(4096)}, path)
    with pytest.raises(AssertionError):
        disk_faults(
            lambda: torch.save({"w": torch.ones(4096)}, path),
            lambda: float(torch.load(path, weights_only=True)["w"].sum()),
            observe="syscalls",
            errnos=("ENOSPC",),
            modes=("persistent",),
        )
    lost = [
        v for v in disk_faults.reports[-1].violations if any("previous state lost" in p for p in v.problems)
    ]
    assert lost and all(v.raised for v in lost), disk_faults.reports[-1].violations

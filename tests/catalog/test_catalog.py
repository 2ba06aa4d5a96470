"""A catalog of real third-party writers, each judged by ``crash_points`` against its ground truth.

Every entry has a short note taken from the library's own source or documentation
(for the versions pinned in pyproject.toml's ``dev`` extra): what it does on save,
which syncs it issues, and so which verdict the verifier must give. The test then
asserts exactly that verdict for each observer and crash model:

``PASS``
    ``report.violations == []`` and at least ``ops`` operations were seen;
``FAIL``
    ``crash_points`` raises an AssertionError (not ``NotJudgeable``) whose first
    violating state matches ``first`` (and, where given, loads what ``loads`` says);
``NOT JUDGEABLE``
    the python observer could not see the writes (native code) and refused to give
    a verdict: it must never pass such a save, nor blame the library.

Test ids read ``<library>-<observer>-<model>-<verdict>-ops>=N``.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from persistkit.testing.observe import NotJudgeable

Save = Callable[[], Any]
Load = Callable[[], Any]


# -- expected verdicts ---------------------------------------------------------------------
@dataclass(frozen=True)
class Pass:
    ops: int

    def __str__(self) -> str:
        return f"pass-ops>={self.ops}"


@dataclass(frozen=True)
class Fail:
    ops: int
    first: str  # regex on the "First violation: ..." line
    complete: bool | None = None  # the first violating state comes after save() returned?
    loads: str | None = None  # regex on what load() did in that state
    mentions: tuple[str, ...] = ()  # regexes on the whole message

    def __str__(self) -> str:
        return f"fail-ops>={self.ops}"


@dataclass(frozen=True)
class Unjudgeable:
    def __str__(self) -> str:
        return "not-judgeable"


@dataclass
class Entry:
    name: str
    setup: Callable[[Path], tuple[Save, Load]]
    expect: dict[tuple[str, str], Pass | Fail | Unjudgeable] = field(default_factory=dict)


def both(verdict: Pass | Fail | Unjudgeable, observer: str) -> dict[tuple[str, str], Any]:
    return {(observer, "process"): verdict, (observer, "power-loss"): verdict}


CATALOG: list[Entry] = []


def entry(name: str, **expect: Pass | Fail | Unjudgeable) -> Callable[[Callable[[Path], Any]], Any]:
    """Register a writer. Keywords: syscalls_process=, syscalls_power_loss=, python_process=, ..."""

    def register(setup: Callable[[Path], Any]) -> Callable[[Path], Any]:
        table = {}
        for key, verdict in expect.items():
            observer, _, model = key.partition("_")
            table[(observer, model.replace("_", "-"))] = verdict
        CATALOG.append(Entry(name, setup, table))
        return setup

    return register


def in_place(ops: int, name: str) -> dict[str, Fail]:
    """A writer that truncates and rewrites ``name`` in place: both models find a torn or empty file."""
    target = re.escape(name)
    return {
        "process": Fail(ops, rf"process crash after #\d+ (create|write|truncate) {target}\b"),
        # the state is named by what it lost: the truncating create or a write of the target
        "power-loss": Fail(ops, rf"power loss .*#\d+ (create|write|truncate) {target}\b"),
    }


def renamed_without_fsync(ops: int, name: str) -> Fail:
    """temp + rename, no fsync: after power loss the rename can be durable and the data not."""
    return Fail(ops, r"power loss .*(lost|only|zeros|torn|reached the disk).*#\d+ write")


# -- SQLite (rollback journal, journal_mode=DELETE, the default) ----------------------------
def _sqlite(sync: str) -> Callable[[Path], tuple[Save, Load]]:
    def setup(tmp: Path) -> tuple[Save, Load]:
        path = str(tmp / "db.sqlite")
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE t(v)")
        con.execute("INSERT INTO t VALUES (1)")
        con.commit()
        con.close()

        def save() -> None:
            con = sqlite3.connect(path)
            con.execute(f"PRAGMA synchronous={sync}")
            con.execute("UPDATE t SET v = 2")
            con.commit()
            con.close()

        def load() -> Any:
            # a real reader: opening read-write lets SQLite roll back a hot journal
            con = sqlite3.connect(path)
            try:
                return con.execute("SELECT v FROM t").fetchall()
            finally:
                con.close()

        return save, load

    return setup


# SQLite docs (pragma.html#pragma_synchronous, atomiccommit.html): in DELETE journal mode a commit
# writes the original pages to db-journal, fsyncs it and (once, on creation) its directory,
# writes the journal header, fsyncs again, writes the database pages, fsyncs the database, then
# unlinks the journal. EXTRA "is like FULL with the addition that the directory containing a
# rollback journal is synced after that journal is unlinked": every crash state is old or new.
entry(
    "sqlite-EXTRA",
    syscalls_process=Pass(20),
    syscalls_power_loss=Pass(20),
    python_process=Unjudgeable(),
    python_power_loss=Unjudgeable(),
)(_sqlite("EXTRA"))

# FULL (the default) omits that last directory sync: the pragma docs say EXTRA "provides
# additional durability if the commit is followed closely by a power loss". A hot journal rolls
# the database back, so a process crash is always old-or-new; but after a power loss the journal
# unlink may not be on disk, the journal comes back, and the next open rolls the committed
# transaction back. The verdict must name that state: after save() returned, the -journal's
# unlink reverted, load() gives the OLD row.
entry(
    "sqlite-FULL",
    syscalls_process=Pass(19),
    syscalls_power_loss=Fail(
        19,
        r"power loss after #\d+ .*: reverted #\d+ unlink db\.sqlite-journal$",
        complete=True,
        loads=r"^returned \[\(1,\)\]$",
        mentions=(r"after save\(\) returned, so only the state after the save is acceptable",),
    ),
    python_process=Unjudgeable(),
    python_power_loss=Unjudgeable(),
)(_sqlite("FULL"))

# OFF: "SQLite continues without syncing as soon as it has handed data off to the operating
# system. If the application running SQLite crashes, the data will be safe, but the database
# might become corrupted if the operating system crashes or the computer loses power": the
# journal is still written and unlinked, so a process crash is old-or-new; on power loss database
# pages can reach the disk without the journal.
entry(
    "sqlite-OFF",
    syscalls_process=Pass(14),
    syscalls_power_loss=Fail(
        14,
        r"power loss after #\d+ .*((lost|reverted) #\d+ (create|write|unlink) db\.sqlite|#\d+ write db\.sqlite\S* \[\d+:\d+\] (left as zeros|torn))",
    ),
    python_process=Unjudgeable(),
    python_power_loss=Unjudgeable(),
)(_sqlite("OFF"))


# -- torch.save ----------------------------------------------------------------------------
# torch/serialization.py: torch.save(obj, "path") opens the path itself (_open_zipfile_writer_file
# -> torch._C.PyTorchFileWriter(name) for an ASCII name: C++ opens it O_TRUNC) and writes the zip in
# place; no temporary file, no fsync. A crash right after the truncation leaves an empty file.
@entry(
    "torch.save",
    syscalls_process=in_place(3, "model.pt")["process"],
    syscalls_power_loss=in_place(3, "model.pt")["power-loss"],
    python_process=Unjudgeable(),
    python_power_loss=Unjudgeable(),
)
def _torch(tmp: Path) -> tuple[Save, Load]:
    import torch

    path = tmp / "model.pt"
    torch.save({"w": torch.zeros(64)}, path)
    return (lambda: torch.save({"w": torch.ones(64)}, path)), (
        lambda: float(torch.load(path, weights_only=True)["w"].sum())
    )


# -- atomicwrites 1.4.1 -------------------------------------------------------------------
# atomicwrites/__init__.py: AtomicWriter writes a NamedTemporaryFile in the target's directory,
# sync() = flush + _proper_fsync (os.fsync, bound at import time), then commit() =
# os.rename(tmp, path) + _sync_directory (fsync of the directory). Correct under both models.
# (_proper_fsync is captured at import: the python observer must see it anyway.)
@entry(
    "atomicwrites",
    syscalls_process=Pass(8),
    syscalls_power_loss=Pass(8),
    python_process=Pass(8),
    python_power_loss=Pass(8),
)
def _atomicwrites(tmp: Path) -> tuple[Save, Load]:
    from atomicwrites import atomic_write

    path = tmp / "state.txt"
    path.write_text("old")

    def save() -> None:
        with atomic_write(str(path), overwrite=True) as f:
            f.write("new")

    return save, path.read_text


# -- the textbook recipe with the standard library ----------------------------------------
# NamedTemporaryFile(dir=same directory, delete=False) + write + flush + os.fsync(file) +
# os.replace + fsync(directory): the temp data is durable before the rename, the rename is
# durable before save() returns. Correct under both models.
@entry(
    "tempfile+fsync+replace+dirfsync",
    syscalls_process=Pass(6),
    syscalls_power_loss=Pass(6),
    python_process=Pass(6),
    python_power_loss=Pass(6),
)
def _stdlib_recipe(tmp: Path) -> tuple[Save, Load]:
    path = tmp / "state.txt"
    path.write_text("old")

    def save() -> None:
        with tempfile.NamedTemporaryFile("w", dir=tmp, delete=False) as f:
            f.write("new")
            f.flush()
            os.fsync(f.fileno())
        os.replace(f.name, path)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    return save, path.read_text


# -- h5py 3.16.0 --------------------------------------------------------------------------
# h5py.File(path, "w") is H5Fcreate(H5F_ACC_TRUNC): libhdf5 truncates the existing file and
# writes superblock, object headers and data in place; close flushes to the OS, no fsync.
@entry(
    "h5py",
    syscalls_process=in_place(8, "data.h5")["process"],
    syscalls_power_loss=in_place(8, "data.h5")["power-loss"],
    python_process=Unjudgeable(),
    python_power_loss=Unjudgeable(),
)
def _h5py(tmp: Path) -> tuple[Save, Load]:
    import h5py

    path = tmp / "data.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(16)

    def save() -> None:
        with h5py.File(path, "w") as f:
            f["x"] = np.ones(16)

    def load() -> float:
        with h5py.File(path, "r") as f:
            return float(f["x"][()].sum())

    return save, load


# -- pyarrow 26.0.1 -----------------------------------------------------------------------
# pyarrow.parquet.write_table(table, path) opens an arrow::io::FileOutputStream on the path
# (O_WRONLY|O_CREAT|O_TRUNC) and streams the Parquet file into it in place; no fsync.
@entry(
    "pyarrow.parquet",
    syscalls_process=in_place(10, "table.parquet")["process"],
    syscalls_power_loss=in_place(10, "table.parquet")["power-loss"],
    python_process=Unjudgeable(),
    python_power_loss=Unjudgeable(),
)
def _pyarrow(tmp: Path) -> tuple[Save, Load]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp / "table.parquet")
    pq.write_table(pa.table({"x": [0] * 16}), path)
    return (lambda: pq.write_table(pa.table({"x": [1] * 16}), path)), (
        lambda: pq.read_table(path).column("x").to_pylist()
    )


# -- safetensors 0.8.0 --------------------------------------------------------------------
# safetensors/src/tensor.rs buffered_write_to_file: "Write to a sibling tempfile then rename"
# (tempfile::NamedTempFile::new_in(parent), set_len, BufWriter writes, temp.persist(path) =
# rename). There is no sync_all anywhere: atomic against a process crash, but after power loss
# the rename can be on disk while the data is not (an empty or zero-filled file).
@entry(
    "safetensors",
    syscalls_process=Pass(5),
    syscalls_power_loss=renamed_without_fsync(5, "weights.safetensors"),
    python_process=Unjudgeable(),
    python_power_loss=Unjudgeable(),
)
def _safetensors(tmp: Path) -> tuple[Save, Load]:
    from safetensors.numpy import load_file, save_file

    path = str(tmp / "weights.safetensors")
    save_file({"x": np.zeros(16)}, path)
    return (lambda: save_file({"x": np.ones(16)}, path)), (lambda: float(load_file(path)["x"].sum()))


# -- joblib 1.6.0 -------------------------------------------------------------------------
# joblib/numpy_pickle.py dump(value, filename): `with open(filename, "wb") as f:
# NumpyPickler(f, ...).dump(value)`: truncates and pickles in place, no fsync. Pure Python, so
# the python observer sees it too.
@entry(
    "joblib.dump",
    syscalls_process=in_place(3, "obj.joblib")["process"],
    syscalls_power_loss=in_place(3, "obj.joblib")["power-loss"],
    python_process=in_place(3, "obj.joblib")["process"],
    python_power_loss=in_place(3, "obj.joblib")["power-loss"],
)
def _joblib(tmp: Path) -> tuple[Save, Load]:
    import joblib

    path = tmp / "obj.joblib"
    joblib.dump({"x": list(range(16))}, path)
    return (lambda: joblib.dump({"x": list(range(1, 17))}, path)), (lambda: joblib.load(path))


# -- TinyDB 4.9.0 -------------------------------------------------------------------------
# tinydb/storages.py JSONStorage.write: seek(0), write the whole JSON document over the old
# one, flush, os.fsync, then truncate() the leftover tail. One table update shrinking the
# document (a removal) leaves, between the write and the truncate, the new text followed by the
# old tail: invalid JSON even to a process crash. (The truncate is never fsynced either.)
@entry(
    "tinydb",
    syscalls_process=Fail(
        7, r"process crash after #\d+ write db\.json \[0:\d+\]$", loads=r"raised JSONDecodeError"
    ),
    syscalls_power_loss=in_place(7, "db.json")["power-loss"],
    python_process=Fail(
        7, r"process crash after #\d+ write db\.json \[0:\d+\]$", loads=r"raised JSONDecodeError"
    ),
    python_power_loss=in_place(7, "db.json")["power-loss"],
)
def _tinydb(tmp: Path) -> tuple[Save, Load]:
    from tinydb import Query, TinyDB

    path = tmp / "db.json"
    with TinyDB(path) as db:
        db.insert_multiple([{"k": i} for i in range(5)])

    def save() -> None:
        with TinyDB(path) as db:
            db.remove(Query().k >= 1)  # one storage write: a shorter document

    def load() -> Any:
        with TinyDB(path) as db:
            return db.all()

    return save, load


# -- safer 6.1.0 --------------------------------------------------------------------------
# safer/__init__.py: safer.open(path, "w") caches the text in memory; on a clean close it writes
# it to tempfile.mkstemp(dir=parent) and os.replace()s it over the target (_FileRenameCloser).
# The package never calls fsync: atomic against a process crash, not against power loss.
# It writes through io.FileIO directly, which the python observer intercepts too (io.FileIO is
# patched while it runs), so both observers reach the same verdict.
@entry(
    "safer",
    syscalls_process=Pass(6),
    syscalls_power_loss=renamed_without_fsync(6, "state.txt"),
    python_process=Pass(4),
    python_power_loss=renamed_without_fsync(4, "state.txt"),
)
def _safer(tmp: Path) -> tuple[Save, Load]:
    import safer

    path = tmp / "state.txt"
    path.write_text("old")

    def save() -> None:
        with safer.open(path, "w") as f:
            f.write("new")

    return save, path.read_text


# -- stable-baselines3 2.9.2 --------------------------------------------------------------
# stable_baselines3/common/save_util.py save_to_zip_file: open_path(save_path, "w") then
# zipfile.ZipFile(save_path, mode="w") writes data, pytorch_variables.pth, policy.pth, ... into
# the target in place (torch.save into zip entries through Python file objects); no temp file,
# no fsync. Python all the way down to the file object, so both observers see it.
@entry(
    "stable-baselines3",
    syscalls_process=in_place(17, "agent.zip")["process"],
    syscalls_power_loss=in_place(17, "agent.zip")["power-loss"],
    python_process=in_place(16, "agent.zip")["process"],  # buffered Python writes: one fewer write(2)
    python_power_loss=in_place(16, "agent.zip")["power-loss"],
)
def _sb3(tmp: Path) -> tuple[Save, Load]:
    import torch
    from stable_baselines3 import A2C

    path = tmp / "agent.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = A2C(
            "MlpPolicy", "CartPole-v1", n_steps=2, seed=0, device="cpu", policy_kwargs={"net_arch": [4]}
        )
    model.save(path)
    with torch.no_grad():  # the "trained" model: different weights, no training
        for p in model.policy.parameters():
            p.add_(1.0)

    def load() -> list[float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = A2C.load(path, device="cpu")
        return [round(float(p.detach().sum()), 4) for p in loaded.policy.parameters()]

    return (lambda: model.save(path)), load


# -- the test -------------------------------------------------------------------------------
CASES = [
    pytest.param(
        e,
        observer,
        model,
        e.expect[(observer, model)],
        id=f"{e.name}-{observer}-{model}-{e.expect[(observer, model)]}",
    )
    for e in CATALOG
    for observer in ("syscalls", "python")
    for model in ("process", "power-loss")
    if (observer, model) in e.expect
]

_OPS = re.compile(r"by the (\w+) observer \((\d+); paths")


def check(crash_points, save: Save, load: Load, verdict: Any, *, model: str, observer: str, run=None) -> None:
    __tracebackhide__ = True
    run = run or (lambda: crash_points(save, load, model=model, observe=observer))
    if isinstance(verdict, Pass):
        report = run()
        assert report.violations == []
        assert report.observer == observer and report.model == model
        assert len(report.operations) >= verdict.ops, report.operations
        assert report.states > 0 and report.new_states > 0
        print(report.summary())
        return
    if isinstance(verdict, Unjudgeable):
        with pytest.raises(NotJudgeable) as info:
            run()
        text = str(info.value)
        assert f"the {observer} observer did not see the whole save" in text
        assert "do not explain how the directory changed" in text and "observe='syscalls'" in text
        assert "First violation" not in text  # no verdict, so nobody is blamed
        print(text)
        return
    with pytest.raises(AssertionError) as info:
        run()
    assert not isinstance(info.value, NotJudgeable), str(info.value)
    text = str(info.value)
    print(text)
    assert f"({model} model)" in text
    seen = _OPS.search(text)
    assert seen and seen.group(1) == observer, text
    assert int(seen.group(2)) >= verdict.ops, text
    first = re.search(r"^First violation: (.*)$", text, re.M)
    assert first and re.search(verdict.first, first.group(1)), text
    lines = text.splitlines()
    at = lines.index(first.group(0))
    if verdict.complete is not None:
        assert ("after save() returned" in lines[at + 1]) is verdict.complete, lines[at + 1]
    if verdict.loads is not None:
        got = lines[at + 2].strip()
        assert got.startswith("load() ") and re.search(verdict.loads, got[len("load() ") :]), got
    for pattern in verdict.mentions:
        assert re.search(pattern, text), pattern


@pytest.mark.parametrize(("entry", "observer", "model", "verdict"), CASES)
def test_writer(crash_points, tmp_path, entry, observer, model, verdict):
    save, load = entry.setup(tmp_path)
    check(crash_points, save, load, verdict, model=model, observer=observer)


# -- programs that are not Python: crash_points.subprocess --------------------------------
# POSIX sh: `printf new > f.tmp && mv f.tmp f` is the usual shell "atomic" save: rename(2) is
# atomic to other processes, but nothing is synced, so after power loss the rename may be on
# disk without the data. coreutils `sync FILE` fsyncs that file (`sync DIR` the directory), which
# makes the same recipe durable. `cp src f` truncates f and copies into it in place.
SUBPROCESS = {
    "sh-printf-mv": ("printf new > {d}/f.tmp && mv {d}/f.tmp {d}/f", Pass(5), renamed_without_fsync(5, "f")),
    "sh-printf-sync-mv-sync": (
        "printf new > {d}/f.tmp && sync {d}/f.tmp && mv {d}/f.tmp {d}/f && sync {d}",
        Pass(10),
        Pass(10),
    ),
    "cp": ("cp {src} {d}/f", in_place(3, "f")["process"], in_place(3, "f")["power-loss"]),
}


@pytest.mark.parametrize(
    ("script", "model", "verdict"),
    [
        pytest.param(script, model, v, id=f"{name}-syscalls-{model}-{v}")
        for name, (script, on_process, on_power) in SUBPROCESS.items()
        for model, v in (("process", on_process), ("power-loss", on_power))
    ],
)
def test_program(crash_points, tmp_path, script, model, verdict):
    out = tmp_path / "out"
    out.mkdir()
    (out / "f").write_text("old")
    src = tmp_path / "src.txt"
    src.write_text("new")
    cmd = ["sh", "-c", script.format(d=out, src=src)]

    def load() -> str:
        return (out / "f").read_text()

    run = lambda: crash_points.subprocess(cmd, load, model=model, root=out)  # noqa: E731
    check(crash_points, None, load, verdict, model=model, observer="syscalls", run=run)


def test_catalog_covers_every_observer_and_model():
    assert len(CATALOG) >= 12
    for e in CATALOG:
        assert set(e.expect) == {(o, m) for o in ("syscalls", "python") for m in ("process", "power-loss")}, (
            e.name
        )
    assert sys.platform.startswith("linux")  # the syscalls observer is strace

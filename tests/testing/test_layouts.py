"""layouts: formats recognised by content, with the regions their own structure names, from real writers."""

from __future__ import annotations

import json
import os
import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from persistkit.format import envelope
from persistkit.testing.layouts import extents, layout


def names(path) -> tuple[str, set[str]]:
    found = layout(Path(path).read_bytes())
    return found.format, {r.name for r in found.regions}


def test_sqlite_header_and_btree_pages(tmp_path):
    path = tmp_path / "ledger.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE trades (id INTEGER PRIMARY KEY, body TEXT)")
        conn.executemany("INSERT INTO trades VALUES (?, ?)", [(i, "x" * 40) for i in range(300)])
    conn.close()
    fmt, regions = names(path)
    assert fmt == "SQLite" and "SQLite header" in regions
    assert "b-tree page 1 header (leaf table)" in regions  # sqlite_schema
    assert any(r.endswith("(interior table)") for r in regions)  # 300 rows need more than one leaf
    assert any(r.endswith("cells") for r in regions) and any(r.endswith("cell pointers") for r in regions)


def test_npy_and_npz(tmp_path):
    np.save(tmp_path / "w.npy", np.arange(10.0))
    fmt, regions = names(tmp_path / "w.npy")
    assert fmt == ".npy"
    assert {
        "npy magic and version",
        "npy header length",
        "npy header (dtype, shape, order)",
        "npy array data",
    } == regions
    np.savez(tmp_path / "w.npz", a=np.arange(3), b=np.ones(2))
    fmt, regions = names(tmp_path / "w.npz")
    assert fmt == "zip (numpy .npz)"
    assert {
        "zip local header of a.npy",
        "a.npy: npy header (dtype, shape, order)",
        "zip central directory",
    } <= regions


def test_safetensors_header_and_tensors(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    st.save_file(
        {"w": np.arange(8, dtype=np.float32), "b": np.ones(2, dtype=np.float32)}, str(tmp_path / "m.st")
    )
    fmt, regions = names(tmp_path / "m.st")
    assert fmt == "safetensors"
    assert {
        "safetensors header length",
        "safetensors JSON header",
        "tensor w data",
        "tensor b data",
    } == regions


def test_hdf5_superblock_and_dataset_data(tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["weights"] = np.arange(100.0)
    fmt, regions = names(tmp_path / "m.h5")
    assert fmt == "HDF5" and {"HDF5 superblock", "HDF5 dataset weights data"} <= regions


def test_parquet_footer_and_column_chunks(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"px": [1.0, 2.0], "sym": ["a", "b"]}), tmp_path / "t.parquet")
    fmt, regions = names(tmp_path / "t.parquet")
    assert fmt == "parquet"
    assert {
        "parquet leading magic",
        "parquet footer (file metadata)",
        "parquet footer length and magic",
    } <= regions
    assert {"parquet column px (row group 0)", "parquet column sym (row group 0)"} <= regions


def test_lmdb_meta_and_allocated_pages_of_a_sparse_map(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    with (
        lmdb.open(str(tmp_path / "db"), map_size=4 << 20, writemap=True) as env,
        env.begin(write=True) as txn,
    ):
        for i in range(40):
            txn.put(f"k{i}".encode(), b"v" * 200)
    path = tmp_path / "db" / "data.mdb"
    fmt, regions = names(path)
    assert fmt == "LMDB" and {"LMDB meta page 0", "LMDB meta page 1"} <= regions
    assert any(r.startswith("LMDB leaf page") for r in regions) and any(
        r.startswith("LMDB branch") for r in regions
    )
    allocated = extents(path)
    assert sum(e - s for s, e in allocated) < 64 << 10 < os.path.getsize(path)  # a few pages of a 4 MiB map


def test_persistkit_envelope_and_json(tmp_path):
    sealed = envelope.seal(b"{}", kind="state", codec="json")
    found = layout(sealed)
    assert found.format == "persistkit envelope"
    assert [r.name for r in found.regions][-2:] == ["envelope payload", "envelope trailer"]
    doc = json.dumps({"qty": 10, "px": 187.5, "note": "x1"}).encode()
    found = layout(doc)
    digits = [r.start for r in found.regions if r.name == "JSON number digit"]
    assert found.format == "JSON" and digits and all(doc[i : i + 1].isdigit() for i in digits)
    assert doc.index(b"x1") + 1 not in digits  # a digit inside a string is not a number


def test_torch_checkpoint_is_a_zip_with_named_members(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.ones(3)}, tmp_path / "m.pt")
    fmt, regions = names(tmp_path / "m.pt")
    assert fmt == "zip (torch .pt)" and "zip member data of m/data.pkl" in regions


@pytest.mark.parametrize(
    "magic",
    [
        b"SQLite format 3\0",
        b"PK\x03\x04",
        b"\x93NUMPY\x01\x00",
        b"\x89HDF\r\n\x1a\n",
        b"PAR1",
        envelope.MAGIC,
        b"{",
    ],
)
def test_hostile_bytes_behind_a_known_magic_never_raise(magic):
    rng = random.Random(0)
    for size in (0, 1, 20, 200, 5000):
        data = magic + rng.randbytes(size)
        found = layout(data)  # a format with regions inside the data, or "unknown": never an exception
        assert all(0 <= r.start < r.end <= len(data) for r in found.regions)

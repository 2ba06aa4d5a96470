"""Archive benchmark: a mixed training tree against shutil.make_archive(..., "zip")."""

from __future__ import annotations

import os
import shutil
import zipfile

import numpy as np
import pytest
from pkbench import tag

from persistkit.archive import Archiver


@pytest.fixture(scope="module")
def tree(tmp_path_factory, request):
    """~200 MB (1/100 of it in the smoke run): text logs, float arrays, already-compressed zips."""
    full = bool(request.config.getoption("benchmark_enable")) or not request.config.getoption(
        "benchmark_disable"
    )
    scale = 1 if full else 0.01
    root = tmp_path_factory.mktemp("workspace")
    rng = np.random.default_rng(0)
    (root / "logs" / "trades").mkdir(parents=True)
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "config").mkdir()
    line = "2026-01-01T00:00:00Z step=%d loss=%.6f reward=%.3f lr=0.0003 entropy=0.69\n"
    for i in range(8):
        with open(root / "logs" / f"train_{i}.log", "w") as f:
            f.write("".join(line % (j, rng.random(), rng.random()) for j in range(int(110_000 * scale))))
    for i in range(8):
        np.save(
            root / "models" / "checkpoints" / f"ckpt_{i}.npy", rng.standard_normal(int(1_250_000 * scale))
        )
    for i in range(4):
        with zipfile.ZipFile(root / "models" / f"sb3_{i}.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("policy.pth", rng.standard_normal(int(1_500_000 * scale)).tobytes())
    (root / "config" / "config.json").write_text('{"steps_per_batch": 1000}')
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return root, size


@pytest.mark.benchmark(group="archive")
def test_archiver_create(benchmark, tree, tmp_path):
    root, source_bytes = tree
    arc = Archiver(root, keep=1, archive_dir=str(tmp_path / "archives"))  # outside the tree, like shutil's
    path = benchmark.pedantic(arc.create, rounds=3, iterations=1)
    tag(
        benchmark,
        comparison="archive of a ~200 MB mixed tree",
        role="persistkit",
        target="time<=0.5*shutil",
        bytes=os.path.getsize(path),
        source_bytes=source_bytes,
    )


@pytest.mark.benchmark(group="archive")
def test_shutil_make_archive(benchmark, tree, tmp_path):
    root, source_bytes = tree
    base = tmp_path / "shutil_archive"
    path = benchmark.pedantic(
        lambda: shutil.make_archive(str(base), "zip", root_dir=root, base_dir="."), rounds=3, iterations=1
    )
    tag(
        benchmark,
        comparison="archive of a ~200 MB mixed tree",
        role="shutil",
        bytes=os.path.getsize(path),
        source_bytes=source_bytes,
    )


def test_archive_size_against_shutil(benchmark, tree, tmp_path, full_size):
    root, _ = tree
    ours = os.path.getsize(Archiver(root, keep=1, archive_dir=str(tmp_path / "archives")).create())
    theirs = os.path.getsize(shutil.make_archive(str(tmp_path / "s"), "zip", root_dir=root, base_dir="."))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    tag(
        benchmark,
        comparison="archive of a ~200 MB mixed tree: size",
        role="persistkit",
        target="size<=1.1*shutil",
        bytes=ours,
        anchor_bytes=theirs,
    )
    print(f"\narchive size: persistkit {ours} B, shutil {theirs} B, ratio {ours / theirs:.2f}")
    if full_size:
        assert ours <= 1.1 * theirs

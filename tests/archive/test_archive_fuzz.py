"""Seeded mutation fuzz: a damaged archive is refused with a typed error or restored exactly; never
an untyped error, a hang, or a restore that differs from what verify said."""

from __future__ import annotations

import collections
import json
import os
import random
import re
import shutil
import time
import zipfile

import pytest
from archive_crafting import replace_manifest, tree_of

from persistkit.archive import Archiver, restore
from persistkit.errors import PersistkitError

CASES = int(os.environ.get("PERSISTKIT_ARCHIVE_FUZZ_CASES", "2000"))
EXTREMES = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    structure = [m.start() for m in re.finditer(rb"PK(\x01\x02|\x03\x04|\x05\x06)", data)]
    how = rng.random()
    if how < 0.35:  # a few bytes anywhere
        for _ in range(rng.randint(1, 3)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif how < 0.75:  # a header field: a random or extreme value near a signature
        at = min(rng.choice(structure) + rng.randrange(46), len(out) - 4)
        width = rng.choice((1, 2, 4))
        value = rng.choice(EXTREMES) if rng.random() < 0.5 else rng.randrange(1 << (8 * width))
        out[at : at + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    elif how < 0.85:  # truncated
        del out[rng.randrange(len(out)) :]
    elif how < 0.95:  # bytes inserted or removed
        at = rng.randrange(len(out))
        if rng.random() < 0.5:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            del out[at : at + rng.randint(1, 8)]
    else:  # two archives' worth of mode bits: flip a unix file-type nibble
        cd = [s for s in structure if data[s + 2 : s + 4] == b"\x01\x02"]
        at = rng.choice(cd) + 41
        out[at] ^= rng.choice((0x10, 0x20, 0x40, 0x80, 0xF0))
    return bytes(out)


@pytest.fixture
def archive(tmp_path):
    ws = tmp_path / "ws"
    (ws / "logs" / "trades").mkdir(parents=True)
    (ws / "config").mkdir()
    (ws / "logs" / "training.log").write_text(
        "".join(f"step {i} loss {1 / (i + 1):.4f}\n" for i in range(300))
    )
    (ws / "logs" / "trades" / "t.jsonl").write_text('{"id": 1}\n' * 20)
    (ws / "config" / "config.json").write_text('{"lr": 0.001}')
    (ws / "model.pth").write_bytes(bytes(range(256)) * 8)
    os.symlink("../config/config.json", ws / "logs" / "config_link")
    return Archiver(ws).create()


def test_mutated_archives_are_refused_typed_or_restored_identically(archive, tmp_path):
    rng = random.Random(int(os.environ.get("PERSISTKIT_ARCHIVE_FUZZ_SEED", "20261124")))
    original = tree_of(restore(archive, tmp_path / "original"))
    data = archive.read_bytes()
    arc = Archiver(archive.parent.parent)
    sample = tmp_path / "sample.zip"
    outcomes: collections.Counter[str] = collections.Counter()
    slowest = 0.0
    start = time.perf_counter()
    for case in range(CASES):
        sample.write_bytes(mutate(data, rng))
        into = tmp_path / "out" / str(case)
        began = time.perf_counter()
        try:
            report = arc.verify(sample)
        except PersistkitError as err:  # verify raises only for the disk, not for the bytes
            pytest.fail(f"case {case}: verify raised {type(err).__name__}: {err}")
        except Exception as err:
            pytest.fail(f"case {case}: verify raised untyped {type(err).__name__}: {err}")
        try:
            restore(sample, into)
        except PersistkitError as err:
            outcomes[type(err).__name__] += 1
            assert not report.ok, f"case {case}: verify said ok, restore refused: {err}"
            assert not into.exists(), f"case {case}: a refused restore left {into}"
        except Exception as err:
            pytest.fail(f"case {case}: restore raised untyped {type(err).__name__}: {err}")
        else:
            outcomes["restored"] += 1
            assert report.ok, f"case {case}: restore succeeded, verify said {report.problems}"
            assert tree_of(into) == original, f"case {case}: restored content differs"
            shutil.rmtree(into)
        slowest = max(slowest, time.perf_counter() - began)
        assert not [n for n in os.listdir(into.parent) if ".restore-" in n] if into.parent.exists() else True
    elapsed = time.perf_counter() - start
    print(
        f"\n{CASES} mutated archives in {elapsed:.1f} s (slowest {slowest * 1000:.0f} ms): {dict(outcomes)}"
    )
    assert slowest < 2.0
    assert outcomes["restored"] > 0 and sum(outcomes.values()) == CASES


def test_mutate_changes_the_bytes():
    rng = random.Random(1)
    data = bytes(200) + b"PK\x01\x02" + bytes(60) + b"PK\x05\x06" + bytes(30)
    assert sum(mutate(data, rng) != data for _ in range(50)) > 40


def mutate_manifest(doc: object, rng: random.Random) -> object:
    """One random edit somewhere in a parsed manifest: a value replaced, removed or retyped."""
    replacements = (
        None,
        0,
        -1,
        2**64,
        "",
        "../x",
        "/etc/passwd",
        [],
        {},
        True,
        1.5,
        "a" * 300,
        "dir",
        "symlink",
    )

    def walk(node: object, depth: int) -> object:
        if isinstance(node, dict) and node and (depth < 3 or rng.random() < 0.7):
            key = rng.choice(sorted(node))
            if rng.random() < 0.15:
                return {k: v for k, v in node.items() if k != key}
            return {**node, key: walk(node[key], depth + 1)}
        if isinstance(node, list) and node and rng.random() < 0.9:
            i = rng.randrange(len(node))
            if rng.random() < 0.15:
                return node[:i] + node[i + 1 :]
            if rng.random() < 0.1:
                return [*node, node[i]]
            return [*node[:i], walk(node[i], depth + 1), *node[i + 1 :]]
        return rng.choice(replacements)

    return walk(doc, 0)


def test_edited_manifests_are_refused_typed_or_restored_identically(archive, tmp_path):
    rng = random.Random(11)
    original = tree_of(restore(archive, tmp_path / "original"))
    with zipfile.ZipFile(archive) as zf:
        doc = json.loads(zf.read("MANIFEST.json"))
    arc = Archiver(archive.parent.parent)
    outcomes: collections.Counter[str] = collections.Counter()
    for case in range(300):
        sample = replace_manifest(archive, tmp_path / "edited.zip", json.dumps(mutate_manifest(doc, rng)))
        into = tmp_path / "out" / str(case)
        report = arc.verify(sample)
        try:
            restore(sample, into)
        except PersistkitError as err:
            outcomes[type(err).__name__] += 1
            assert not report.ok, f"case {case}: verify said ok, restore refused: {err}"
        else:
            outcomes["restored"] += 1
            assert report.ok, f"case {case}: restored though verify said {report.problems}"
            assert tree_of(into) == original, f"case {case}: restored content differs"
    print(f"\n300 edited manifests: {dict(outcomes)}")
    assert outcomes["restored"] < 300

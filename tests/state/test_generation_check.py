"""Loading and ``state inspect --verify`` judge a generation by one checker (issues 12 and 15).

Each tampering below is found by both, with the same reason: the load falls back
(and reports it), the inspection lists it as a problem.
"""

from __future__ import annotations

import shutil

import pytest
import xxhash
from conftest import open_store

from persistkit.format import envelope, tree
from persistkit.state import generations as gens
from persistkit.state.audit import inspect_store
from persistkit.state.store import StateRecoveredWarning


def build(store_dir):
    store, parts, _ = open_store(store_dir)
    for value in (1, 2, 3):
        parts["counter"].value = value
        store.save()
    newest = store.generation
    store.close()
    return newest


def reseal_manifest(gdir, change):
    path = gdir / gens.GENERATION_MANIFEST
    opened = envelope.open_envelope(path.read_bytes())
    manifest = tree.decode(opened.payload)
    change(manifest)
    sealed = envelope.seal(
        tree.encode(manifest, root="manifest"),
        kind="manifest",
        codec="tree",
        schema=1,
        meta=opened.header.meta,
    )
    path.write_bytes(sealed)
    return sealed


def recommit_current(store_dir, sealed_manifest):
    """Forge CURRENT to name the forged manifest (a plain store has no MAC to stop it)."""
    path = store_dir / gens.CURRENT
    opened = envelope.open_envelope(path.read_bytes())
    current = tree.decode(opened.payload)
    current["manifest"] = xxhash.xxh3_128_hexdigest(sealed_manifest)
    path.write_bytes(
        envelope.seal(
            tree.encode(current, root="CURRENT"),
            kind="current",
            codec="tree",
            schema=1,
            meta=opened.header.meta,
        )
    )


def replaced_manifest(store_dir, n):
    reseal_manifest(store_dir / gens.gen_name(n), lambda m: m.update(created="2020-01-01T00:00:00+00:00"))
    return "is not the one CURRENT committed (replaced)"


def damaged_component(store_dir, n):
    path = store_dir / gens.gen_name(n) / "counter.pk"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    return "does not match the generation manifest (replaced or damaged)"


def moved_manifest(store_dir, n):
    shutil.copy(
        store_dir / gens.gen_name(n - 1) / gens.GENERATION_MANIFEST,
        store_dir / gens.gen_name(n) / gens.GENERATION_MANIFEST,
    )
    return f"names generation {n - 1}, not {n}: a rolled-back or moved generation"


def spliced_component(store_dir, n):
    old = (store_dir / gens.gen_name(n - 1) / "counter.pk").read_bytes()
    (store_dir / gens.gen_name(n) / "counter.pk").write_bytes(old)

    def point_at_old(manifest):
        manifest["components"]["counter"]["digest"] = xxhash.xxh3_128_hexdigest(old)
        manifest["components"]["counter"]["bytes"] = len(old)

    recommit_current(store_dir, reseal_manifest(store_dir / gens.gen_name(n), point_at_old))
    return f"not 'counter' of {n}: a spliced file"


@pytest.mark.parametrize("tamper", [replaced_manifest, damaged_component, moved_manifest, spliced_component])
def test_load_and_inspect_find_the_same_problem(store_dir, tamper):
    newest = build(store_dir)
    reason = tamper(store_dir, newest)

    problems = inspect_store(store_dir, verify=True).problems
    assert any(reason in p and gens.gen_name(newest) in p for p in problems), problems

    with pytest.warns(StateRecoveredWarning, match="fell back to"):
        _, parts, report = open_store(store_dir, readonly=True)
    assert report.generation == newest - 1 and parts["counter"].value == 2
    assert len(report.failures) == 1 and reason in report.failures[0], report.failures

"""Fuzz finding T2: forged plain stores (re-sealed with valid checksums) end in typed errors.

A plain store has no MAC, so anyone with write access can rewrite a MANIFEST or a
component and fix every digest. Whatever they write, loading must not crash with a
KeyError/TypeError: the one generation checker rejects a manifest that breaks its
schema (naming the file and field), and the store rejects a ``BoundedLog`` state
that is not ``{"items": [...], "seq": int}``. Either way the load falls back to the
older, intact generation and reports it.
"""

from __future__ import annotations

import pytest
import xxhash
from conftest import open_store
from test_generation_check import build, recommit_current, reseal_manifest

from persistkit.errors import FormatError, IntegrityError
from persistkit.format import envelope, tree
from persistkit.state import BoundedLog
from persistkit.state import generations as gens
from persistkit.state.audit import inspect_store
from persistkit.state.store import StateRecoveredWarning


def _set(*path, value=None, delete=False):
    def change(manifest):
        target = manifest
        for key in path[:-1]:
            target = target[key]
        if delete:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return change


def _rename_entry(manifest):
    manifest["components"]["../counter"] = manifest["components"].pop("counter")


MANIFEST_FORGERIES = {
    "no components": (_set("components", delete=True), "components"),
    "components a string": (_set("components", value="counter.pk"), "components"),
    "entry an int": (_set("components", "counter", value=7), "components['counter']"),
    "entry without file": (_set("components", "counter", "file", delete=True), "components['counter'].file"),
    "file outside the generation": (
        _set("components", "counter", "file", value="../gen-000001/counter.pk"),
        "components['counter'].file",
    ),
    "entry without digest": (
        _set("components", "counter", "digest", delete=True),
        "components['counter'].digest",
    ),
    "version a string": (
        _set("components", "counter", "version", value="1"),
        "components['counter'].version",
    ),
    "name with a path": (_rename_entry, "components['../counter']"),
    "journals a bool": (_set("journals", value=True), "journals"),
    "journal entry a list": (_set("journals", "log", value=[]), "journals['log']"),
    "first_seq a string": (_set("journals", "log", "first_seq", value="0"), "journals['log'].first_seq"),
    "store id an int": (_set("store", value=5), "store"),
}


@pytest.mark.parametrize("forgery", MANIFEST_FORGERIES, ids=list(MANIFEST_FORGERIES))
def test_a_forged_manifest_is_a_typed_error_naming_file_and_field(store_dir, forgery):
    change, field = MANIFEST_FORGERIES[forgery]
    newest = build(store_dir)
    gdir = store_dir / gens.gen_name(newest)
    recommit_current(store_dir, reseal_manifest(gdir, change))
    mpath = str(gdir / gens.GENERATION_MANIFEST)

    with pytest.raises(IntegrityError) as caught:
        gens.read_generation(str(store_dir), newest, key=None, store_id=None)
    assert caught.value.path == mpath and caught.value.field == field
    assert mpath in str(caught.value) and field in str(caught.value)

    problems = inspect_store(store_dir, verify=True).problems
    assert any(gens.gen_name(newest) in p and field in p for p in problems), problems

    for readonly in (True, False):
        with pytest.warns(StateRecoveredWarning, match="fell back to"):
            store, parts, report = open_store(store_dir, readonly=readonly)
        assert report.generation == newest - 1 and parts["counter"].value == 2
        assert any(mpath in f and field in f for f in report.failures), report.failures
        store.close()
        if not readonly:
            assert not gdir.exists()  # quarantined, never deleted
            assert list(store_dir.glob(f"{gens.gen_name(newest)}.corrupt-*"))


def forge_component(store_dir, n, name, state):
    """Re-seal ``name``'s component file of generation ``n`` with ``state`` and fix every digest."""
    path = store_dir / gens.gen_name(n) / gens.component_file(name)
    opened = envelope.open_envelope(path.read_bytes())
    sealed = envelope.seal(
        tree.encode(state, root=name),
        kind="component",
        codec="tree",
        schema=opened.header.schema,
        meta=opened.header.meta,
    )
    path.write_bytes(sealed)

    def point_at_forgery(manifest):
        manifest["components"][name]["digest"] = xxhash.xxh3_128_hexdigest(sealed)
        manifest["components"][name]["bytes"] = len(sealed)

    recommit_current(store_dir, reseal_manifest(store_dir / gens.gen_name(n), point_at_forgery))
    return str(path)


LOG_FORGERIES = {
    "no items": ({"maxlen": 5, "seq": 0}, "'items'"),
    "items an int": ({"maxlen": 5, "items": 5, "seq": 0}, "'items'"),
    "items a string": ({"maxlen": 5, "items": "abc", "seq": 0}, "'items'"),
    "state a list": ([1, 2, 3], "the state"),
    "seq a string": ({"maxlen": 5, "items": ["a"], "seq": "3"}, "'seq'"),
    "seq negative": ({"maxlen": 5, "items": ["a"], "seq": -1}, "'seq'"),
}


@pytest.mark.parametrize("forgery", LOG_FORGERIES, ids=list(LOG_FORGERIES))
def test_a_forged_bounded_log_state_is_a_typed_error_naming_file_and_field(store_dir, forgery):
    state, where = LOG_FORGERIES[forgery]
    newest = build(store_dir)
    path = forge_component(store_dir, newest, "log", state)
    with pytest.warns(StateRecoveredWarning, match="fell back to"):
        store, parts, report = open_store(store_dir, readonly=True)
    assert report.generation == newest - 1 and parts["counter"].value == 2
    assert any(path in f and "BoundedLog 'log'" in f and where in f for f in report.failures), report.failures
    store.close()


def test_bounded_log_load_state_dict_refuses_what_state_dict_never_returns():
    log = BoundedLog(3)
    for bad in ({}, {"items": 5}, {"items": None}, "items", None):
        with pytest.raises(FormatError) as caught:
            log.load_state_dict(bad)  # type: ignore[arg-type]
        assert caught.value.field == "items" and "'items' list" in str(caught.value)
    log.load_state_dict({"items": [1, 2, 3, 4]})
    assert list(log) == [2, 3, 4]

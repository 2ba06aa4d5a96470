"""A dict, a list or a numpy array registered as a component is stored, and loads back in place."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from persistkit.errors import MigrationError
from persistkit.state import StateStore


def _store(directory):
    return StateStore(directory, autosave_every=0)


def test_an_array_changed_in_place_is_saved_and_loads_into_the_registered_array(tmp_path):
    weights = np.zeros(3)
    with _store(tmp_path) as store:
        assert store.register("arr", weights) is weights
        store.load()
        store.save()
        weights[1] = 2.5  # mutated in place, as arrays are
        checkpoint = store.save()
        assert not checkpoint.skipped
        weights[2] = 9.0  # after the save: must not leak into the checkpoint
    again = np.zeros(3)
    with _store(tmp_path) as store:
        store.register("arr", again)
        report = store.load()
        assert report["arr"].status == "loaded"
    assert again.tolist() == [0.0, 2.5, 9.0]  # close() saved the last change too


def test_an_array_snapshot_is_taken_at_save_time(tmp_path):
    weights = np.arange(4, dtype=np.int64)
    store = _store(tmp_path)
    store.register("arr", weights)
    store.load()
    store.save()
    weights[0] = 100
    store._abandon()  # crash: no save at close
    again = np.zeros(4, dtype=np.int64)
    with _store(tmp_path) as reader:
        reader.register("arr", again)
        reader.load()
    assert again.tolist() == [0, 1, 2, 3]


def test_an_array_of_another_shape_or_dtype_is_a_migration_error_naming_the_component(tmp_path):
    with _store(tmp_path) as store:
        store.register("arr", np.ones(3))
        store.load()
        store.save()
    store = _store(tmp_path)
    store.register("arr", np.zeros(4))
    with pytest.raises(MigrationError, match=r"'arr'.*float64\[3\].*float64\[4\].*Register an array") as info:
        store.load()
    assert info.value.member == "arr"
    store._abandon()


def test_a_dict_and_a_list_are_stored_and_loaded_in_place(tmp_path):
    settings = {"risk": 0.1, "since": dt.datetime(2026, 1, 2, tzinfo=dt.UTC)}
    fills: list[object] = []
    with _store(tmp_path) as store:
        store.register("settings", settings)
        store.register("fills", fills)
        store.load()
        store.save()
        settings["risk"] = 0.2
        fills.append({"px": 1.5})
        assert not store.save().skipped
    settings2 = {"risk": 0.0, "stale": True}
    fills2: list[object] = ["stale"]
    with _store(tmp_path) as store:
        store.register("settings", settings2)
        store.register("fills", fills2)
        store.load()
    assert settings2 == {"risk": 0.2, "since": dt.datetime(2026, 1, 2, tzinfo=dt.UTC)}
    assert fills2 == [{"px": 1.5}]


def test_other_objects_without_a_state_api_are_refused_with_what_to_register(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(TypeError, match=r"a dict, a list or a numpy array"):
        store.register("s", {1, 2})
    store.close()


def test_a_dict_subclass_with_its_own_setstate_keeps_using_it(tmp_path):
    class Book(dict):
        def __getstate__(self):
            return {"items": dict(self)}

        def __setstate__(self, state):
            self.clear()
            self.update(state["items"])
            self.loaded_by_setstate = True

    with _store(tmp_path) as store:
        store.register("book", Book(a=1))
        store.load()
        store.save()
    book = Book()
    with _store(tmp_path) as store:
        store.register("book", book)
        store.load()
    assert book == {"a": 1} and book.loaded_by_setstate

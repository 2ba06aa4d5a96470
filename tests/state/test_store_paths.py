"""A state store pointed at something that is not a directory says so, naming the path."""

from __future__ import annotations

import pytest

from persistkit.errors import FormatError
from persistkit.state import BoundedLog, StateStore


@pytest.mark.parametrize("readonly", [True, False])
def test_a_store_pointed_at_a_regular_file_is_a_typed_error_naming_it(tmp_path, readonly):
    path = tmp_path / "bot-state.pk"
    path.write_bytes(b"not a directory")
    with pytest.raises(FormatError, match="not a directory") as caught:
        store = StateStore(path, readonly=readonly, autosave_every=0)
        store.register("log", BoundedLog(3))
        store.load()
    assert caught.value.path == str(path) and str(path) in str(caught.value)
    assert path.read_bytes() == b"not a directory"


def test_a_read_only_store_whose_directory_became_a_file_is_an_error(tmp_path):
    path = tmp_path / "store"
    store = StateStore(path, readonly=True, autosave_every=0)  # nothing there yet: allowed
    path.write_bytes(b"")
    with pytest.raises(FormatError, match="not a directory"):
        store.load()


def test_a_read_only_store_that_does_not_exist_yet_starts_from_defaults(tmp_path):
    store = StateStore(tmp_path / "missing", readonly=True, autosave_every=0)
    log = store.register("log", BoundedLog(3))
    report = store.load()
    assert report.generation is None and report["log"].status == "defaults" and list(log) == []
    assert not (tmp_path / "missing").exists()

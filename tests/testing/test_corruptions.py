"""corruptions: damaged copies of every kind; assert_detected fails only on silent wrong loads."""

from __future__ import annotations

import json
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

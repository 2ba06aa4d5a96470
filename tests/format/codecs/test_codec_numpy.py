"""numpy codec: npy headers in the member meta, array bytes as the payload (zero-copy on save)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from hypothesis import given, settings

from persistkit.errors import FormatError, UnsupportedTypeError
from persistkit.format.codecs import numpy as npc
from persistkit.testing.compare import assert_same
from persistkit.testing.strategies import arrays


@settings(max_examples=60, deadline=None)
@given(arrays(max_dims=3, max_side=5))
def test_arrays_round_trip_bitwise(array):
    payload, meta = npc.encode(array)
    back = npc.decode(bytes(payload), meta=meta)
    assert_same(array, back)
    assert back.tobytes() == array.tobytes()


def test_single_array_payload_is_the_array_buffer_itself():
    array = np.arange(1000, dtype=np.float32)
    payload, _ = npc.encode(array)
    assert isinstance(payload, memoryview)
    assert np.shares_memory(np.frombuffer(payload, dtype=np.float32), array)


def test_non_contiguous_and_fortran_arrays_keep_their_order():
    base = np.arange(60, dtype=np.int16).reshape(6, 10)
    for array in (base[::2, ::3], np.asfortranarray(base), base.T):
        back = npc.decode(bytes(npc.encode(array)[0]), meta=npc.encode(array)[1])
        assert_same(np.array(array, order="K"), back)


def test_dict_of_arrays_round_trips_aligned():
    arrays_ = {
        "q": np.random.default_rng(0).random((3, 4)),
        "n": np.arange(5, dtype=np.uint8),
        "e": np.zeros(0),
    }
    payload, meta = npc.encode(arrays_)
    index = json.loads(meta["npy"])
    assert index["kind"] == "dict" and all(entry[2] % npc.ALIGN == 0 for entry in index["arrays"])
    back = npc.decode(bytearray(payload), meta=meta)
    assert_same(arrays_, back)
    assert all(a.flags.writeable for a in back.values())


def test_readonly_payloads_are_copied_writable_ones_are_not():
    array = np.arange(10.0)
    payload, meta = npc.encode(array)
    from_bytes = npc.decode(bytes(payload), meta=meta)
    assert from_bytes.flags.writeable  # bytes are immutable, so this is a copy
    assert from_bytes.base is None or from_bytes.base.flags.owndata
    buffer = bytearray(payload)
    shared = npc.decode(buffer, meta=meta)
    assert np.shares_memory(shared, np.frombuffer(buffer))


def test_to_npy_gives_a_standard_npy_file():
    array = np.arange(6, dtype="<f8").reshape(2, 3)
    payload, meta = npc.encode(array)
    assert_same(array, np.load(io.BytesIO(npc.to_npy(payload, meta)), allow_pickle=False))
    payload, meta = npc.encode({"a": array, "b": array[0]})
    assert_same(array[0], np.load(io.BytesIO(npc.to_npy(payload, meta, "b")), allow_pickle=False))


def test_object_arrays_are_refused_both_ways():
    with pytest.raises(UnsupportedTypeError, match="would need pickle"):
        npc.encode(np.array([object()]))
    meta = {
        "npy": json.dumps(
            {
                "kind": "array",
                "arrays": [[None, "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", 0, 8]],
            }
        )
    }
    with pytest.raises(FormatError, match="object dtype refused"):
        npc.decode(bytes(8), meta=meta)


@pytest.mark.parametrize(
    ("index", "words"),
    [
        (None, "no npy index"),
        ("not json", "not JSON"),
        (json.dumps({"kind": "array", "arrays": [[None, "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }", 0, 32]]}), "outside"),
        (json.dumps({"kind": "array", "arrays": [[None, "__import__('os').system('true')", 0, 8]]}), "does not parse"),
        (json.dumps({"kind": "array", "arrays": [[None, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 0, 8]]}), "needs 16 bytes"),
        (json.dumps({"kind": "dict", "arrays": [["a", "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", 0, 8]] * 2}), "twice"),
        (json.dumps({"kind": "tensor", "arrays": []}), "unknown kind"),
    ],
)  # fmt: skip
def test_malformed_index_is_a_format_error(index, words):
    meta = {} if index is None else {"npy": index}
    with pytest.raises(FormatError, match=words):
        npc.decode(bytes(8), meta=meta)

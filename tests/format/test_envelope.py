from __future__ import annotations

import os
import struct
import time

import msgpack
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from persistkit.errors import (
    FormatError,
    IntegrityError,
    PersistkitError,
    UnsupportedTypeError,
    WrongKeyError,
)
from persistkit.format.crypto import KdfParams, Key
from persistkit.format.envelope import MAGIC, PREFIX, open_envelope, read_header, seal

FAST = KdfParams(n=2**15)
KEY = Key.generate()
PAYLOAD = bytes(range(256)) * 16  # 4 KiB

VARIANTS = {
    "plain-zstd": {"compression": "zstd"},
    "plain-none": {"compression": "none"},
    "key-zstd": {"compression": "zstd", "key": KEY},
    "key-none": {"compression": "none", "key": KEY},
    "password": {"compression": "zstd", "password": "pw", "kdf": FAST},
}


def opener(kw):
    return {k: kw[k] for k in ("key", "password") if k in kw}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_roundtrip(name):
    kw = VARIANTS[name]
    sealed = seal(PAYLOAD, kind="state", codec="tree", schema=3, meta={"component": "risk"}, **kw)
    opened = open_envelope(sealed, **opener(kw))
    assert bytes(opened.payload) == PAYLOAD
    h = opened.header
    assert (h.kind, h.codec, h.schema, h.meta) == ("state", "tree", 3, {"component": "risk"})
    assert h.encrypted == ("key" in kw or "password" in kw)
    assert read_header(sealed).codec == "tree"  # no key needed


@settings(max_examples=100, deadline=None)
@given(
    payload=st.binary(max_size=5000),
    kind=st.text(max_size=10),
    codec=st.text(max_size=10),
    meta=st.dictionaries(
        st.text(max_size=5),
        st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5) | st.floats(allow_nan=False) | st.booleans(),
    ),
    variant=st.sampled_from(sorted(VARIANTS)),
)
def test_property_roundtrip(payload, kind, codec, meta, variant):
    kw = VARIANTS[variant]
    sealed = seal(payload, kind=kind, codec=codec, meta=meta, **kw)
    opened = open_envelope(sealed, **opener(kw))
    assert bytes(opened.payload) == payload
    assert opened.header.meta == meta and opened.header.kind == kind


def every_corruption(sealed):
    for cut in range(len(sealed)):
        yield f"truncated to {cut}", sealed[:cut]
    for bit in range(len(sealed) * 8):
        flipped = bytearray(sealed)
        flipped[bit // 8] ^= 1 << (bit % 8)
        yield f"bit {bit} flipped", bytes(flipped)


@pytest.mark.parametrize("name", ["plain-none", "plain-zstd", "key-none", "key-zstd"])
def test_exhaustive_corruption_of_a_4k_envelope(name):
    kw = VARIANTS[name]
    sealed = seal(PAYLOAD, kind="state", codec="tree", **kw)
    start = time.perf_counter()
    cases = 0
    for label, damaged in every_corruption(sealed):
        with pytest.raises(PersistkitError) as info:
            open_envelope(damaged, **opener(kw))
        assert type(info.value) in (IntegrityError, FormatError, WrongKeyError), label
        cases += 1
    expected = len(sealed) + 8 * len(sealed)
    assert cases == expected
    print(
        f"\n{name}: {cases} corruptions ({len(sealed)} truncations, {8 * len(sealed)} bit flips) "
        f"all rejected in {time.perf_counter() - start:.2f} s"
    )


def test_password_envelope_truncations_and_sampled_flips():
    kw = VARIANTS["password"]
    sealed = seal(PAYLOAD, kind="state", codec="tree", **kw)
    for label, damaged in list(every_corruption(sealed))[::7]:
        with pytest.raises((IntegrityError, FormatError, WrongKeyError)):
            open_envelope(damaged, password="pw")


def test_junk_appended_is_detected():
    sealed = seal(PAYLOAD, kind="k", codec="c")
    with pytest.raises(IntegrityError, match="extra bytes appended"):
        open_envelope(sealed + b"\0")


def forge(sealed, edit):
    """Re-encode the header with ``edit`` applied and fix the checksum, as a forger would."""
    _, version, hlen = PREFIX.unpack_from(sealed)
    header = msgpack.unpackb(sealed[PREFIX.size : PREFIX.size + hlen])
    edit(header)
    new_header = msgpack.packb(header, use_bin_type=True)
    body = sealed[PREFIX.size + hlen : -16]
    out = PREFIX.pack(MAGIC, version, len(new_header)) + new_header + body
    return out + xxhash.xxh3_128(out).digest()


def test_forged_header_with_fixed_checksum_fails_authentication():
    sealed = seal(PAYLOAD, kind="state", codec="tree", key=KEY)
    forged = forge(sealed, lambda h: h.update(kind="evil"))
    with pytest.raises(IntegrityError, match="authentication failed"):
        open_envelope(forged, key=KEY)


def test_swapped_headers_between_envelopes_are_detected():
    a = seal(PAYLOAD, kind="a", codec="c", key=KEY)
    b = seal(PAYLOAD[::-1], kind="b", codec="c", key=KEY)
    ha = PREFIX.size + PREFIX.unpack_from(a)[2]
    hb = PREFIX.size + PREFIX.unpack_from(b)[2]
    spliced = a[:ha] + b[hb:-16]
    spliced += xxhash.xxh3_128(spliced).digest()
    with pytest.raises((IntegrityError, WrongKeyError)):
        open_envelope(spliced, key=KEY)


def test_kdf_downgrade_in_header_is_refused():
    sealed = seal(PAYLOAD, kind="s", codec="c", password="pw", kdf=FAST)
    downgraded = forge(sealed, lambda h: h["enc"]["kdf"].update(n=2**10))
    with pytest.raises(IntegrityError, match="downgrade refused"):
        open_envelope(downgraded, password="pw")


def test_newer_version_asks_for_upgrade():
    sealed = bytearray(seal(PAYLOAD, kind="s", codec="c"))
    struct.pack_into("<H", sealed, 8, 2)
    with pytest.raises(FormatError, match="upgrade persistkit"):
        open_envelope(bytes(sealed))


@pytest.mark.parametrize(
    "data",
    [b"", b"hello world, not ours", b"PK\x03\x04" + b"\0" * 40, os.urandom(64)],
    ids=["empty", "text", "zip", "random"],
)
def test_foreign_files_are_format_errors(data):
    with pytest.raises(FormatError, match="not a persistkit file"):
        open_envelope(data, source="notes.txt")


def test_wrong_key_and_wrong_password():
    with pytest.raises(WrongKeyError, match="does not open"):
        open_envelope(seal(PAYLOAD, kind="s", codec="c", key=KEY), key=Key.generate())
    sealed = seal(PAYLOAD, kind="s", codec="c", password="right", kdf=FAST)
    with pytest.raises(WrongKeyError):
        open_envelope(sealed, password="wrong")
    with pytest.raises(WrongKeyError, match="pass password="):
        open_envelope(sealed)
    with pytest.raises(WrongKeyError, match="key file, not a password"):
        open_envelope(seal(PAYLOAD, kind="s", codec="c", key=KEY), password="right")


def test_error_messages_name_the_source():
    with pytest.raises(IntegrityError) as info:
        open_envelope(seal(PAYLOAD, kind="s", codec="c")[:-3], source="store/gen-7/risk.pk")
    assert "store/gen-7/risk.pk" in str(info.value) and "backup" in str(info.value)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="compression"):
        seal(b"x", kind="k", codec="c", compression="lz4")
    with pytest.raises(ValueError, match="not both"):
        seal(b"x", kind="k", codec="c", key=KEY, password="p")


def test_meta_that_cannot_be_stored_is_refused_clearly():
    with pytest.raises(UnsupportedTypeError, match="meta"):
        seal(b"x", kind="k", codec="c", meta={"n": 2**70})


def test_zstd_bomb_claim_is_capped():
    sealed = seal(b"\0" * 1_000_000, kind="k", codec="c")
    with pytest.raises(FormatError, match="limit"):
        open_envelope(sealed, max_plain_len=1000)

from __future__ import annotations

import collections
import datetime as dt
import os
import random
import struct
import time

import msgpack
import numpy as np
import pytest
import xxhash
import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from hypothesis import given, settings
from hypothesis import strategies as st

from persistkit.errors import (
    BudgetExceededError,
    FormatError,
    IntegrityError,
    PersistkitError,
    UnsupportedTypeError,
    WrongKeyError,
)
from persistkit.format import crypto
from persistkit.format.crypto import KdfParams, Key
from persistkit.format.envelope import (
    HEADER_SPAN_MAX,
    MAGIC,
    open_envelope,
    read_header,
    seal,
    seal_parts,
)

FAST = KdfParams.floor()
KEY = Key.generate()
PASSWORD = "correct horse battery staple"
PAYLOAD = random.Random(0).randbytes(3601) + b"persistkit " * 45  # 4 KiB; zstd still finds something

VARIANTS = {
    "plain-none": {"compression": "none"},
    "plain-zstd": {"compression": "zstd"},
    "key-none": {"compression": "none", "key": KEY, "segment": 1024},
    "key-zstd": {"compression": "zstd", "key": KEY},
    "password-none": {"compression": "none", "password": PASSWORD, "kdf": FAST, "segment": 1024},
    "password-zstd": {"compression": "zstd", "password": PASSWORD, "kdf": FAST},
}


def opener(kw):
    return {k: kw[k] for k in ("key", "password") if k in kw}


# -- layout helpers (from the documented layout, independent of envelope.py) ----------


def split(sealed: bytes) -> tuple[bytes, dict, bytes, bytes]:
    """(prefix+header, header map, payload, trailer) per the module docstring."""
    hlen = struct.unpack_from("<I", sealed, 10)[0]
    head = sealed[: 14 + hlen]
    assert xxhash.xxh3_64_digest(head) == sealed[14 + hlen : 22 + hlen]
    return head, msgpack.unpackb(sealed[14:14 + hlen]), sealed[22 + hlen : -16], sealed[-16:]  # fmt: skip


def assemble(header: dict | bytes, payload: bytes, *, version: int = 1) -> bytes:
    raw = header if isinstance(header, bytes) else msgpack.packb(header, use_bin_type=True)
    head = MAGIC + struct.pack("<HI", version, len(raw)) + raw
    head += xxhash.xxh3_64_digest(head)
    return head + payload + xxhash.xxh3_128_digest(head + payload)


def with_checksums_fixed(data: bytes) -> bytes:
    """Recompute header check and trailer after an edit, as a forger would."""
    hlen = struct.unpack_from("<I", data, 10)[0]
    out = bytearray(data)
    out[14 + hlen : 22 + hlen] = xxhash.xxh3_64_digest(bytes(out[: 14 + hlen]))
    out[-16:] = xxhash.xxh3_128_digest(bytes(out[:-16]))
    return bytes(out)


def reheader(sealed: bytes, edit) -> bytes:
    """Re-encode the header with ``edit`` applied and fix both checksums (payload untouched)."""
    _, header, payload, _ = split(sealed)
    edit(header)
    return assemble(header, payload)


# -- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_roundtrip(name):
    kw = VARIANTS[name]
    sealed = seal(PAYLOAD, kind="state", codec="tree", schema=3, meta={"component": "risk", "n": 7}, **kw)
    opened = open_envelope(sealed, **opener(kw), source="store/risk.pk")
    assert opened.payload == PAYLOAD and type(opened.payload) is bytes
    assert bytes(opened.view) == PAYLOAD
    h = opened.header
    assert (h.kind, h.codec, h.schema, dict(h.meta)) == ("state", "tree", 3, {"component": "risk", "n": 7})
    assert h.encrypted == ("key" in kw or "password" in kw)
    assert h.plain_len == len(PAYLOAD) and h.total_len == len(sealed)
    assert h.created_at.tzinfo is not None
    assert read_header(sealed) == h  # no key needed


def test_roundtrip_large_payload_across_default_segments():
    payload = np.random.default_rng(1).standard_normal(5 * 2**20).astype(np.float32)  # 20 MiB
    for kw in ({"key": KEY, "compression": "none"}, {"key": KEY}, {"compression": "none"}):
        sealed = seal(payload, kind="member", codec="numpy", **kw)
        opened = open_envelope(sealed, **opener(kw))
        assert np.array_equal(np.frombuffer(opened.view, dtype=np.float32), payload)
    h = read_header(seal(payload, kind="m", codec="c", key=KEY, compression="none"))
    assert h.encryption.segment == crypto.DEFAULT_SEGMENT
    assert h.payload_len == payload.nbytes + 3 * 16  # 20 MiB in 8 MiB segments


def test_plain_uncompressed_open_is_zero_copy():
    sealed = seal(PAYLOAD, kind="k", codec="c", compression="none")
    opened = open_envelope(sealed)
    assert opened.view.obj is sealed


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
def test_accepts_any_byte_buffer(wrap):
    sealed = seal(wrap(PAYLOAD), kind="k", codec="c", key=KEY)
    assert open_envelope(wrap(sealed), key=KEY).payload == PAYLOAD


def test_empty_payload():
    for kw in VARIANTS.values():
        assert open_envelope(seal(b"", kind="k", codec="c", **kw), **opener(kw)).payload == b""


def test_plain_envelopes_are_reproducible_with_a_pinned_time():
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    a = seal(PAYLOAD, kind="k", codec="c", meta={"x": 1}, created=when)
    assert a == seal(PAYLOAD, kind="k", codec="c", meta={"x": 1}, created=when)
    assert read_header(a).created == "2026-01-02T03:04:05.000000+00:00"


def test_seal_parts_join_to_seal():
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    parts = seal_parts(PAYLOAD, kind="k", codec="c", compression="none", created=when)
    assert b"".join(parts) == seal(PAYLOAD, kind="k", codec="c", compression="none", created=when)


metas = st.dictionaries(
    st.text(max_size=8),
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(
    payload=st.binary(max_size=4096),
    kind=st.text(max_size=12),
    codec=st.text(max_size=12),
    schema=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    meta=metas,
    variant=st.sampled_from(sorted(VARIANTS)),
)
def test_property_roundtrip(payload, kind, codec, schema, meta, variant):
    kw = VARIANTS[variant]
    sealed = seal(payload, kind=kind, codec=codec, schema=schema, meta=meta, **kw)
    opened = open_envelope(sealed, **opener(kw))
    assert opened.payload == payload
    h = opened.header
    assert (h.kind, h.codec, h.schema, dict(h.meta)) == (kind, codec, schema, meta)
    assert read_header(sealed[:HEADER_SPAN_MAX]) == h


def test_read_header_needs_only_the_beginning_of_a_file():
    sealed = seal(os.urandom(100_000), kind="member", codec="numpy", key=KEY)
    h = read_header(sealed)
    assert read_header(sealed[: 22 + h.header_len]) == h
    with pytest.raises(IntegrityError, match="cut off inside"):
        read_header(sealed[: 21 + h.header_len])


def test_documented_layout_offsets():
    sealed = seal(PAYLOAD, kind="state", codec="tree", compression="none")
    assert sealed[:8] == b"\x89PKENV\r\n"
    assert struct.unpack_from("<H", sealed, 8)[0] == 1
    _, header, payload, trailer = split(sealed)
    assert set(header) == {
        "kind", "codec", "schema", "created", "compression", "plain_len", "stored_len", "payload_len",
        "encryption", "meta",
    }  # fmt: skip
    assert payload == PAYLOAD and header["payload_len"] == len(payload) and header["encryption"] is None
    assert trailer == xxhash.xxh3_128_digest(sealed[:-16])


# -- exhaustive corruption -------------------------------------------------------------


def every_corruption(sealed: bytes):
    for cut in range(len(sealed)):
        yield f"truncated to {cut}", sealed[:cut]
    flipped = bytearray(sealed)
    for bit in range(len(sealed) * 8):
        flipped[bit // 8] ^= 1 << (bit % 8)
        yield f"bit {bit} flipped", bytes(flipped)
        flipped[bit // 8] ^= 1 << (bit % 8)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_truncation_and_bit_flip_is_an_integrity_error(name, record_property):
    """Accidental damage anywhere is IntegrityError: never FormatError, never WrongKeyError, never data."""
    kw = VARIANTS[name]
    sealed = seal(PAYLOAD, kind="state", codec="tree", meta={"component": "risk"}, **kw)
    open_envelope(sealed, **opener(kw))  # warm the KDF cache: the loop measures checking, not scrypt
    start = time.perf_counter()
    outcomes: collections.Counter[str] = collections.Counter()
    for label, damaged in every_corruption(sealed):
        try:
            open_envelope(damaged, **opener(kw))
        except IntegrityError:
            outcomes["IntegrityError"] += 1
        except Exception as err:
            raise AssertionError(f"{name}, {label}: {type(err).__name__}: {err}") from err
        else:
            raise AssertionError(f"{name}, {label}: damaged envelope opened")
    elapsed = time.perf_counter() - start
    cases = sum(outcomes.values())
    assert cases == 9 * len(sealed) and outcomes["IntegrityError"] == cases
    assert len(sealed) >= 3900  # a ~4 KiB envelope, compressed or not
    record_property("corruption_cases", cases)
    print(
        f"\n{name}: {len(sealed)}-byte envelope, {cases} corruptions ({len(sealed)} truncations, "
        f"{8 * len(sealed)} bit flips), all IntegrityError, {elapsed:.2f} s"
    )


@pytest.mark.parametrize("name", ["key-none", "key-zstd"])
def test_every_forged_bit_flip_is_rejected_by_authentication(name, record_property):
    """A forger who recomputes both checksums: every bit of prefix, header and payload is still covered.

    Header flips may give FormatError (unknown names), NewerFormatError (unknown fields, a
    higher version: only with both checksums forged), WrongKeyError
    (salts, key check) or IntegrityError (everything else, via the GCM tags);
    payload flips are IntegrityError. Nothing opens.
    """
    kw = VARIANTS[name]
    sealed = seal(PAYLOAD, kind="state", codec="tree", meta={"component": "risk"}, **kw)
    hlen = struct.unpack_from("<I", sealed, 10)[0]
    covered = [*range(14 + hlen), *range(22 + hlen, len(sealed) - 16)]
    start = time.perf_counter()
    outcomes: collections.Counter[str] = collections.Counter()
    payload_outcomes: collections.Counter[str] = collections.Counter()
    for pos in covered:
        for bit in range(8):
            damaged = bytearray(sealed)
            damaged[pos] ^= 1 << bit
            try:
                open_envelope(with_checksums_fixed(bytes(damaged)), **opener(kw))
            except PersistkitError as err:
                outcomes[type(err).__name__] += 1
                if pos >= 22 + hlen:
                    payload_outcomes[type(err).__name__] += 1
            except Exception as err:
                raise AssertionError(f"byte {pos} bit {bit}: untyped {type(err).__name__}: {err}") from err
            else:
                raise AssertionError(f"byte {pos} bit {bit}: forged envelope opened")
    elapsed = time.perf_counter() - start
    assert sum(outcomes.values()) == 8 * len(covered)
    assert set(payload_outcomes) == {"IntegrityError"}
    # a forger who also fixes the header check can make a header read as a newer writer's
    assert set(outcomes) <= {"IntegrityError", "FormatError", "NewerFormatError", "WrongKeyError"}
    record_property("forged_cases", sum(outcomes.values()))
    print(
        f"\n{name} forged: {sum(outcomes.values())} flips with fixed checksums, {dict(outcomes)}, {elapsed:.2f} s"
    )


# -- tampering and splicing ------------------------------------------------------------


def test_header_tamper_is_an_integrity_error():
    plain = bytearray(seal(PAYLOAD, kind="state", codec="tree"))
    plain[20] ^= 0x20  # inside the header, checksums not fixed
    with pytest.raises(IntegrityError, match="header checksum mismatch"):
        open_envelope(bytes(plain))
    sealed = seal(PAYLOAD, kind="state", codec="tree", key=KEY)
    forged = reheader(sealed, lambda h: h.update(kind="evil"))
    assert read_header(forged).kind == "evil"  # the checksums are right, only the key can tell
    with pytest.raises(IntegrityError, match="authentication failed"):
        open_envelope(forged, key=KEY)
    meta_forged = reheader(sealed, lambda h: h.update(meta={"admin": True}))
    with pytest.raises(IntegrityError, match="authentication failed"):
        open_envelope(meta_forged, key=KEY)


def test_swapped_headers_between_envelopes_are_detected():
    a = seal(PAYLOAD, kind="a", codec="c", key=KEY, compression="none")
    b = seal(PAYLOAD[::-1], kind="b", codec="c", key=KEY, compression="none")
    head_a, _, _, _ = split(a)
    _, _, body_b, _ = split(b)
    spliced = assemble(head_a[14:], body_b)  # a's header, b's payload, checksums fixed
    with pytest.raises(IntegrityError, match="authentication failed"):
        open_envelope(spliced, key=KEY)
    pa, pb = (seal(p, kind="k", codec="c", compression="none") for p in (PAYLOAD, PAYLOAD[::-1]))
    raw_splice = split(pa)[0] + pa[len(split(pa)[0]) : len(split(pa)[0]) + 8] + split(pb)[2] + split(pa)[3]
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        open_envelope(raw_splice)


def test_reordered_segments_are_detected():
    sealed = seal(PAYLOAD, kind="k", codec="c", key=KEY, compression="none", segment=1024)
    head, _, body, _ = split(sealed)
    segs = [body[i : i + 1040] for i in range(0, len(body), 1040)]
    assert len(segs) == 4
    swapped = assemble(head[14:], segs[1] + segs[0] + segs[2] + segs[3])
    with pytest.raises(IntegrityError, match="segment 0 of 4"):
        open_envelope(swapped, key=KEY)


def test_truncation_at_a_segment_boundary_with_a_matching_header_is_detected():
    sealed = seal(PAYLOAD, kind="k", codec="c", key=KEY, compression="none", segment=1024)
    _, header, body, _ = split(sealed)
    header.update(plain_len=3072, stored_len=3072, payload_len=3 * 1040)
    with pytest.raises(IntegrityError, match="authentication failed"):
        open_envelope(assemble(header, body[: 3 * 1040]), key=KEY)


def test_junk_appended_is_detected():
    with pytest.raises(IntegrityError, match="extra bytes appended"):
        open_envelope(seal(PAYLOAD, kind="k", codec="c") + b"\0")


# -- versions and foreign files --------------------------------------------------------


def test_newer_intact_version_asks_for_upgrade():
    sealed = bytearray(seal(PAYLOAD, kind="s", codec="c"))
    struct.pack_into("<H", sealed, 8, 2)
    with pytest.raises(FormatError, match=r"newer persistkit \(format 2.*upgrade persistkit") as info:
        open_envelope(with_checksums_fixed(bytes(sealed)), source="models/a.pkb")
    assert "models/a.pkb" in str(info.value)
    with pytest.raises(IntegrityError):  # the same version bytes from a bit flip: damage, not "upgrade"
        open_envelope(bytes(sealed))


def test_unknown_header_field_or_compression_asks_for_upgrade():
    sealed = seal(PAYLOAD, kind="s", codec="c")
    with pytest.raises(FormatError, match="upgrade persistkit"):
        open_envelope(reheader(sealed, lambda h: h.update(filter="delta")))
    with pytest.raises(FormatError, match="upgrade persistkit"):
        open_envelope(reheader(sealed, lambda h: h.update(compression="lz4")))


@pytest.mark.parametrize(
    "data",
    [
        b"hello world, not ours",
        b"PK\x03\x04" + b"\0" * 40,
        b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
        random.Random(1).randbytes(64),
        b"{}",
    ],
    ids=["text", "zip", "png", "random", "json"],
)
def test_foreign_files_are_format_errors(data):
    with pytest.raises(FormatError, match="not a persistkit file") as info:
        open_envelope(data, source="notes.txt")
    assert "notes.txt" in str(info.value)


def test_empty_and_cut_magic_are_truncation():
    with pytest.raises(IntegrityError, match="empty"):
        open_envelope(b"", source="CURRENT")
    with pytest.raises(IntegrityError, match="cut off inside the magic"):
        open_envelope(MAGIC[:5])


def test_text_mode_mangling_is_detected():
    sealed = seal(PAYLOAD, kind="s", codec="c")
    with pytest.raises(PersistkitError):
        open_envelope(sealed.replace(b"\r\n", b"\n"))
    with pytest.raises(PersistkitError):
        open_envelope(sealed.replace(b"\n", b"\r\n"))


# -- keys ------------------------------------------------------------------------------


def test_wrong_key_is_wrong_key_not_integrity():
    sealed = seal(PAYLOAD, kind="s", codec="c", key=KEY)
    with pytest.raises(WrongKeyError, match=r"does not open models/a\.pkb") as info:
        open_envelope(sealed, key=Key.generate(), source="models/a.pkb")
    assert not isinstance(info.value, IntegrityError)
    sealed_pw = seal(PAYLOAD, kind="s", codec="c", password="right", kdf=FAST)
    with pytest.raises(WrongKeyError, match="the password does not open") as info:
        open_envelope(sealed_pw, password="wrong")
    assert not isinstance(info.value, IntegrityError)


def test_missing_key_says_what_to_pass():
    with pytest.raises(WrongKeyError, match="pass password="):
        open_envelope(seal(PAYLOAD, kind="s", codec="c", password="pw", kdf=FAST))
    with pytest.raises(WrongKeyError, match="pass key_file="):
        open_envelope(seal(PAYLOAD, kind="s", codec="c", key=KEY))
    with pytest.raises(WrongKeyError, match="key file, not a password"):
        open_envelope(seal(PAYLOAD, kind="s", codec="c", key=KEY), password="pw")


def test_password_file_opens_with_its_derived_key_and_names_password_otherwise():
    sealed = seal(PAYLOAD, kind="s", codec="c", password="pw", kdf=FAST)
    enc = read_header(sealed).encryption
    derived = Key.from_password("pw", salt=enc.kdf_salt, params=enc.kdf)
    assert open_envelope(sealed, key=derived).payload == PAYLOAD
    with pytest.raises(WrongKeyError, match="sealed with a password; pass password="):
        open_envelope(sealed, key=KEY)


def test_key_derived_from_a_password_seals_files_that_open_with_the_password():
    derived = Key.from_password("shared", salt=crypto.new_salt(), params=FAST)
    sealed = seal(PAYLOAD, kind="s", codec="c", key=derived)
    assert read_header(sealed).encryption.key_source == "password"
    assert open_envelope(sealed, password="shared").payload == PAYLOAD


def test_many_password_members_share_one_derivation():
    members = [
        seal(os.urandom(64), kind="member", codec="c", password="bundle-pw", kdf=FAST) for _ in range(10)
    ]
    encs = [read_header(m).encryption for m in members]
    assert len({e.kdf_salt for e in encs}) == 1  # one scrypt run seals them all...
    assert len({e.salt for e in encs}) == 10  # ...while every member has its own data key
    cached = Key.from_password("bundle-pw", salt=encs[0].kdf_salt, params=FAST)
    assert all(Key.from_password("bundle-pw", salt=e.kdf_salt, params=e.kdf) is cached for e in encs)
    for m in members:
        open_envelope(m, password="bundle-pw")  # ...and opens them all


def test_plain_file_where_an_encrypted_one_is_expected_is_refused():
    plain = seal(PAYLOAD, kind="s", codec="c")
    with pytest.raises(IntegrityError, match="not encrypted"):
        open_envelope(plain, key=KEY)
    with pytest.raises(IntegrityError, match="not encrypted"):
        open_envelope(plain, password="pw")
    assert open_envelope(plain, key=KEY, allow_unencrypted=True).payload == PAYLOAD


# -- KDF downgrade and denial of service -----------------------------------------------


def craft_password_envelope(payload: bytes, password: str, n: int) -> bytes:
    """Build an encrypted envelope by hand from the documented format, with any scrypt n."""
    kdf_salt, salt = os.urandom(32), os.urandom(32)
    master = Scrypt(salt=kdf_salt, length=32, n=n, r=8, p=1).derive(password.encode())

    def hkdf(info, length):
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(master)

    header = {
        "kind": "s", "codec": "c", "schema": 1, "created": "2026-01-01T00:00:00+00:00",
        "compression": "none", "plain_len": len(payload), "stored_len": len(payload),
        "payload_len": len(payload) + 16, "meta": {},
        "encryption": {
            "alg": "AES-256-GCM-STREAM", "key": "password",
            "kdf": {"name": "scrypt", "n": n, "r": 8, "p": 1, "salt": kdf_salt},
            "salt": salt, "check": hkdf(b"persistkit key-check v1", 16), "segment": 1024,
        },
    }  # fmt: skip
    raw = msgpack.packb(header, use_bin_type=True)
    head = MAGIC + struct.pack("<HI", 1, len(raw)) + raw
    head += xxhash.xxh3_64_digest(head)
    body = AESGCM(hkdf(b"persistkit data key v1", 32)).encrypt(bytes(8) + b"\0\0\0\1", payload, head)
    return head + body + xxhash.xxh3_128_digest(head + body)


def test_hand_built_envelope_at_the_floor_opens():
    crafted = craft_password_envelope(b"hello", "pw", 2**15)
    assert open_envelope(crafted, password="pw").payload == b"hello"


def test_kdf_below_the_floor_is_refused_even_with_valid_tags():
    crafted = craft_password_envelope(b"hello", "pw", 2**10)  # authentic, just weak
    with pytest.raises(IntegrityError, match="KDF parameters below the floor: downgrade refused"):
        open_envelope(crafted, password="pw", source="weak.pk")
    with pytest.raises(IntegrityError, match="downgrade refused"):
        open_envelope(crafted, key=KEY)


def test_kdf_downgrade_edited_into_a_header_is_refused():
    sealed = seal(PAYLOAD, kind="s", codec="c", password="pw", kdf=FAST)
    downgraded = reheader(sealed, lambda h: h["encryption"]["kdf"].update(n=2**10))
    with pytest.raises(IntegrityError, match="downgrade refused"):
        open_envelope(downgraded, password="pw")


def test_absurd_kdf_is_refused_before_any_work():
    sealed = seal(PAYLOAD, kind="s", codec="c", password="pw", kdf=FAST)
    greedy = reheader(sealed, lambda h: h["encryption"]["kdf"].update(n=2**24))
    start = time.perf_counter()
    with pytest.raises(FormatError, match="cannot exhaust memory"):
        open_envelope(greedy, password="pw")
    assert time.perf_counter() - start < 1


def test_zstd_bomb_claims_are_capped_before_decompressing():
    sealed = seal(b"\0" * 1_000_000, kind="k", codec="c")
    with pytest.raises(BudgetExceededError, match="max_plain_len"):
        open_envelope(sealed, max_plain_len=1000)
    # A frame that declares more than the header admits: refused before allocating.
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(b"\0" * 10**8)
    header = {
        "kind": "k", "codec": "c", "schema": 1, "created": "x", "compression": "zstd", "plain_len": 10,
        "stored_len": len(frame), "payload_len": len(frame), "encryption": None, "meta": {},
    }  # fmt: skip
    with pytest.raises(IntegrityError, match="declares 100000000 bytes"):
        open_envelope(assemble(header, frame))
    # A frame without its content size.
    sizeless = zstandard.ZstdCompressor(write_content_size=False).compress(b"abc")
    header.update(plain_len=3, stored_len=len(sizeless), payload_len=len(sizeless))
    with pytest.raises(IntegrityError, match="zstd frame"):
        open_envelope(assemble(header, sizeless))


def test_oversized_header_length_is_refused_before_reading():
    sealed = bytearray(seal(PAYLOAD, kind="k", codec="c"))
    struct.pack_into("<I", sealed, 10, 2**31)
    with pytest.raises(IntegrityError, match="exceeds the 65536-byte cap"):
        open_envelope(bytes(sealed))


# -- messages and arguments ------------------------------------------------------------


def test_error_messages_name_the_source_and_what_to_do():
    with pytest.raises(IntegrityError) as info:
        open_envelope(seal(PAYLOAD, kind="s", codec="c")[:-3], source="store/gen-7/risk.pk")
    assert "store/gen-7/risk.pk" in str(info.value) and "backup" in str(info.value)
    assert info.value.path == "store/gen-7/risk.pk"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="compression"):
        seal(b"x", kind="k", codec="c", compression="lz4")
    with pytest.raises(ValueError, match="not both"):
        seal(b"x", kind="k", codec="c", key=KEY, password="p")
    with pytest.raises(ValueError, match="only applies"):
        seal(b"x", kind="k", codec="c", key=KEY, kdf=FAST)
    with pytest.raises(ValueError, match="segment"):
        seal(b"x", kind="k", codec="c", key=KEY, segment=100)
    with pytest.raises(ValueError, match="level"):
        seal(b"x", kind="k", codec="c", level=99)
    with pytest.raises(IntegrityError, match="downgrade refused"):
        seal(b"x", kind="k", codec="c", password="p", kdf=KdfParams(n=2**10))


def test_meta_that_cannot_be_stored_is_refused_clearly():
    with pytest.raises(UnsupportedTypeError, match=r"meta\['n'\]") as info:
        seal(b"x", kind="k", codec="c", meta={"n": 2**70})
    assert info.value.field == "meta['n']"
    with pytest.raises(UnsupportedTypeError, match="list"):
        seal(b"x", kind="k", codec="c", meta={"xs": [1, 2]})
    with pytest.raises(UnsupportedTypeError, match="bytes"):
        seal(b"x", kind="k", codec="c", meta={"digest": b"\x00"})
    with pytest.raises(BudgetExceededError, match="65536-byte limit"):
        seal(b"x", kind="k", codec="c", meta={"blob": "x" * 70_000})


# -- streaming seal -------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1024, 3 * 1024 + 5], ids=["empty", "one", "segment", "segments+tail"])
@pytest.mark.parametrize("variant", ["plain-none", "key-none"])
def test_seal_stream_round_trips_with_one_reused_buffer(size, variant):
    from persistkit.format.envelope import seal_stream

    kw = dict(VARIANTS[variant])
    kw.pop("segment", None)
    payload = os.urandom(size)
    stream = seal_stream(payload, kind="k", codec="c", segment=1024, **kw)
    seen_buffers = set()
    out = bytearray()
    for piece in stream.pieces:
        out += piece  # written before the next piece is taken, as a zip writer does
        if isinstance(piece, memoryview):
            seen_buffers.add(id(piece.obj))
    assert len(out) == stream.size
    assert bytes(open_envelope(bytes(out), **opener(kw)).payload) == payload
    if "key" in kw and size > 1024:
        assert len(seen_buffers) == 1  # every encrypted segment went through the same buffer


def test_seal_stream_output_is_detected_when_damaged():
    from persistkit.format.envelope import seal_stream

    stream = seal_stream(PAYLOAD, kind="k", codec="c", key=KEY, compression="none", segment=1024)
    sealed = bytearray(b"".join(bytes(p) for p in stream.pieces))
    sealed[len(sealed) // 2] ^= 1
    with pytest.raises(IntegrityError):
        open_envelope(bytes(sealed), key=KEY)

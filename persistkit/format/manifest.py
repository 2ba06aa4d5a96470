"""The bundle manifest: what a ``.models`` file holds, and the proof that it is what was written.

Bytes in, bytes out. A bundle is a stored ZIP whose entries are, in order::

    members/<name>.pke    one envelope per model (``persistkit.format.envelope``)
    metadata.pke          the metadata, an envelope of its own (a tree value inside; JSON in older bundles)
    manifest.json         this manifest, plain JSON: readable with ``unzip -p`` and without a key
    manifest.auth         {"digest": "xxh3-128:<hex>", "mac": "hmac-sha256:<hex>" | null}

``manifest.json`` (format version 1)::

    {"format": "persistkit.bundle", "version": 1,
     "bundle_id": "<32 hex>",                 random per save; every envelope carries it
     "created": "<ISO-8601 UTC>",
     "environment": {"persistkit": ..., "python": ..., "numpy": ..., "scikit-learn": ...,
                     "stable-baselines3": ..., "torch": ..., ...},   null where not installed
     "encryption": null | {"alg": "AES-256-GCM-STREAM", "key": "key" | "password",
                           "kdf": null | {"name": "scrypt", "n", "r", "p", "salt": <b64>},
                           "salt": <b64>, "check": <b64>},
     "digest": "xxh3-128",
     "members": [{"name", "role": "model" | "metadata", "file", "codec", "compression",
                  "plain_len", "envelope_len",
                  "digest": <hex xxh3-128 of the plaintext>,
                  "envelope_digest": <hex: the envelope's own trailer>,
                  "info": {... shown by inspect, never used to decode}}]}

Authentication. ``check`` is ``crypto.key_check(master, salt)``: a wrong key
or password is told apart from tampering before anything else is trusted.
``mac`` is HMAC-SHA256 over the exact ``manifest.json`` bytes under a key
derived from the master key (HKDF-SHA256, RFC 5869, info "persistkit bundle
manifest v1", salt = the manifest's ``salt``). Every member's
``envelope_digest`` is in the MAC'd manifest, and every envelope's
authenticated header names the bundle id, the member and its position. So
editing the manifest, or removing, swapping, duplicating or reordering a
member, even with one copied from another bundle sealed with the same key,
fails a check that names the member.

Unencrypted bundles (``encryption: null``, ``mac: null``) get detection only:
the digests catch damage, not a forger, which is why loading them requires
``trusted=`` for members that construct objects.

xxh3-128 is the digest because the bundle's speed targets are ratios against
safetensors; it detects accidental damage, and authenticity comes from the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import xxhash

from persistkit.errors import FormatError, IntegrityError

__all__ = [
    "BUNDLE_AUTH",
    "BUNDLE_MANIFEST",
    "FORMAT",
    "METADATA_FILE",
    "VERSION",
    "KeyInfo",
    "Manifest",
    "MemberEntry",
    "auth_record",
    "check_auth",
    "decode",
    "digest",
    "encode",
    "member_file",
    "new_key_info",
    "open_key",
]

FORMAT = "persistkit.bundle"
VERSION = 1
# A bundle's own file names (not a training archive's MANIFEST.json, nor a state generation's MANIFEST).
BUNDLE_MANIFEST = "manifest.json"
BUNDLE_AUTH = "manifest.auth"
METADATA_FILE = "metadata.pke"
DIGEST = "xxh3-128"
MAX_MANIFEST = 16 * 1024 * 1024
_MAC_INFO = b"persistkit bundle manifest v1"
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def digest(data: bytes | bytearray | memoryview) -> str:
    """The member digest: xxh3-128 as 32 hex digits."""
    return xxhash.xxh3_128_hexdigest(data)


def member_file(name: str) -> str:
    return f"members/{name}.pke"


@dataclass(frozen=True)
class MemberEntry:
    name: str
    role: str  # "model" or "metadata"
    file: str
    codec: str
    compression: str
    plain_len: int
    envelope_len: int
    digest: str
    envelope_digest: str
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "file": self.file,
            "codec": self.codec,
            "compression": self.compression,
            "plain_len": self.plain_len,
            "envelope_len": self.envelope_len,
            "digest": self.digest,
            "envelope_digest": self.envelope_digest,
            "info": dict(self.info),
        }


@dataclass(frozen=True)
class KeyInfo:
    """How the bundle key was made, and the value that checks it. No secrets."""

    key_source: str  # "key" or "password"
    salt: bytes
    check: bytes
    kdf: Any = None  # crypto.KdfParams when key_source == "password"
    kdf_salt: bytes | None = None
    alg: str = "AES-256-GCM-STREAM"

    def to_json(self) -> dict[str, Any]:
        kdf = None
        if self.kdf is not None:
            kdf = {
                "name": "scrypt",
                "n": self.kdf.n,
                "r": self.kdf.r,
                "p": self.kdf.p,
                "salt": _b64(self.kdf_salt or b""),
            }
        return {
            "alg": self.alg,
            "key": self.key_source,
            "kdf": kdf,
            "salt": _b64(self.salt),
            "check": _b64(self.check),
        }


@dataclass(frozen=True)
class Manifest:
    """A parsed bundle manifest (see the module docstring); ``path`` is where it was read from."""

    bundle_id: str
    created: str
    environment: Mapping[str, str | None]
    encryption: KeyInfo | None
    members: tuple[MemberEntry, ...]
    version: int = VERSION
    digest: str = DIGEST
    path: str | None = None

    @property
    def encrypted(self) -> bool:
        return self.encryption is not None

    @property
    def models(self) -> tuple[MemberEntry, ...]:
        return tuple(m for m in self.members if m.role == "model")

    def member(self, name: str) -> MemberEntry:
        for m in self.members:
            if m.role == "model" and m.name == name:
                return m
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": self.version,
            "bundle_id": self.bundle_id,
            "created": self.created,
            "environment": dict(self.environment),
            "encryption": None if self.encryption is None else self.encryption.to_json(),
            "digest": self.digest,
            "members": [m.to_json() for m in self.members],
        }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode(manifest: Manifest) -> bytes:
    """The exact ``manifest.json`` bytes (the MAC covers these bytes, not a re-serialisation)."""
    # Compact: with indent=, json.dumps falls back to its pure-Python encoder (~0.1 ms a save);
    # ``persistkit inspect`` prints the manifest readably.
    text = json.dumps(manifest.to_json(), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8") + b"\n"


# -- parsing -----------------------------------------------------------------------


def _damaged(source: str, what: str, member: str | None = "manifest") -> IntegrityError:
    return IntegrityError(
        f"{source}: the bundle manifest is damaged or was edited ({what}). Restore the bundle from a backup.",
        path=source,
        member=member,
    )


def decode(data: bytes, *, source: str) -> Manifest:
    """Parse and validate ``manifest.json``. IntegrityError for damage, FormatError for newer formats."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise _damaged(source, "not valid JSON") from err
    if not isinstance(doc, dict):
        raise _damaged(source, "not a JSON object")
    if doc.get("format") != FORMAT:
        raise FormatError(
            f"{source}: not a persistkit bundle (manifest format {doc.get('format')!r}).", path=source
        )
    version = doc.get("version")
    if type(version) is not int:
        raise _damaged(source, "version")
    if version > VERSION:
        raise FormatError(
            f"{source} was written by a newer persistkit (bundle format {version}; this one reads format "
            f"{VERSION}); upgrade persistkit to read it.",
            path=source,
        )
    if version != VERSION:
        raise _damaged(source, f"unknown bundle format {version}")
    expected = {"format", "version", "bundle_id", "created", "environment", "encryption", "digest", "members"}
    if set(doc) != expected:
        raise _damaged(source, f"fields {sorted(set(doc) ^ expected)}")
    if type(doc["bundle_id"]) is not str or not _HEX32.match(doc["bundle_id"]):
        raise _damaged(source, "bundle_id")
    if type(doc["created"]) is not str or doc["digest"] != DIGEST:
        raise _damaged(source, "created/digest")
    env = doc["environment"]
    if not isinstance(env, dict) or not all(
        type(k) is str and (v is None or type(v) is str) for k, v in env.items()
    ):
        raise _damaged(source, "environment")
    members = doc["members"]
    if not isinstance(members, list):
        raise _damaged(source, "members")
    entries = tuple(_member(m, source) for m in members)
    names = [(m.role, m.name) for m in entries]
    files = [m.file for m in entries]
    if len(set(names)) != len(names) or len(set(files)) != len(files):
        raise _damaged(source, "a member is listed twice")
    if [m.role for m in entries].count("metadata") > 1:
        raise _damaged(source, "two metadata members")
    return Manifest(
        bundle_id=doc["bundle_id"],
        created=doc["created"],
        environment=env,
        encryption=_key_info(doc["encryption"], source),
        members=entries,
        path=source,
    )


def _member(raw: object, source: str) -> MemberEntry:
    keys = {"name", "role", "file", "codec", "compression", "plain_len", "envelope_len", "digest",
            "envelope_digest", "info"}  # fmt: skip
    if not isinstance(raw, dict) or set(raw) != keys:
        raise _damaged(source, "a member entry has unexpected fields")
    name = raw["name"]
    if type(name) is not str:
        raise _damaged(source, "member name")
    bad = (
        raw["role"] not in ("model", "metadata")
        or type(raw["codec"]) is not str
        or type(raw["compression"]) is not str
        or not all(type(raw[k]) is int and raw[k] >= 0 for k in ("plain_len", "envelope_len"))
        or not all(type(raw[k]) is str and _HEX32.match(raw[k]) for k in ("digest", "envelope_digest"))
        or not isinstance(raw["info"], dict)
        or raw["file"] != (METADATA_FILE if raw["role"] == "metadata" else member_file(name))
    )
    if bad:
        raise _damaged(source, f"entry of member {name!r}", member=name)
    return MemberEntry(**raw)


def _key_info(raw: object, source: str) -> KeyInfo | None:
    if raw is None:
        return None
    from persistkit.format.crypto import ALGORITHM, KdfParams

    if not isinstance(raw, dict) or set(raw) != {"alg", "key", "kdf", "salt", "check"}:
        raise _damaged(source, "encryption")
    if raw["alg"] != ALGORITHM:
        raise FormatError(
            f"{source}: encrypted with {raw['alg']!r}, which this persistkit does not know; upgrade persistkit.",
            path=source,
        )
    try:
        salt = base64.b64decode(raw["salt"], validate=True)
        check = base64.b64decode(raw["check"], validate=True)
        kdf = raw["kdf"]
        params = kdf_salt = None
        if raw["key"] == "password":
            if (
                not isinstance(kdf, dict)
                or kdf.get("name") != "scrypt"
                or set(kdf) != {"name", "n", "r", "p", "salt"}
            ):
                raise _damaged(source, "kdf")
            if not all(type(kdf[k]) is int for k in ("n", "r", "p")):
                raise _damaged(source, "kdf parameters")
            params = KdfParams(kdf["n"], kdf["r"], kdf["p"])
            kdf_salt = base64.b64decode(kdf["salt"], validate=True)
        elif raw["key"] != "key" or kdf is not None:
            raise _damaged(source, "key source")
    except (binascii.Error, TypeError, ValueError) as err:
        if isinstance(err, IntegrityError):
            raise
        raise _damaged(source, "encryption fields") from err
    if len(salt) != 32 or len(check) != 16 or (kdf_salt is not None and not 16 <= len(kdf_salt) <= 64):
        raise _damaged(source, "encryption field sizes")
    return KeyInfo(raw["key"], salt, check, params, kdf_salt)


# -- keys and authentication --------------------------------------------------------


def new_key_info(master: Any) -> KeyInfo:
    """Fresh manifest key parameters for ``master`` (a ``crypto.Key``)."""
    from persistkit.format.crypto import key_check, new_salt

    salt = new_salt()
    if master.origin is not None:
        params, kdf_salt = master.origin
        return KeyInfo("password", salt, key_check(master, salt), params, kdf_salt)
    return KeyInfo("key", salt, key_check(master, salt))


def open_key(info: KeyInfo, *, key: Any = None, password: str | None = None, source: str) -> Any:
    """The master key for this bundle, after checking it (WrongKeyError names what to pass)."""
    from persistkit.format.crypto import check_master

    return check_master(
        info.key_source,
        info.salt,
        info.check,
        info.kdf,
        info.kdf_salt,
        key=key,
        password=password,
        source=source,
    )


def _mac_key(master: Any, salt: bytes) -> bytes:
    # HKDF-SHA256 (RFC 5869) with a one-block expand, in hashlib/hmac so only crypto.py imports cryptography.
    prk = hmac.new(salt, master.material(), hashlib.sha256).digest()
    return hmac.new(prk, _MAC_INFO + b"\x01", hashlib.sha256).digest()


def auth_record(manifest_bytes: bytes, *, master: Any = None, info: KeyInfo | None = None) -> bytes:
    """The ``manifest.auth`` bytes for ``manifest_bytes``."""
    mac = None
    if master is not None:
        assert info is not None
        mac = (
            "hmac-sha256:" + hmac.new(_mac_key(master, info.salt), manifest_bytes, hashlib.sha256).hexdigest()
        )
    record = {"digest": f"{DIGEST}:{digest(manifest_bytes)}", "mac": mac}
    return json.dumps(record).encode("ascii") + b"\n"


def check_digest(manifest_bytes: bytes, auth_bytes: bytes, *, source: str) -> str | None:
    """Check the unkeyed digest (damage); return the MAC text, if any, for ``check_auth``."""
    try:
        record = json.loads(auth_bytes.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as err:
        raise _damaged(source, f"{BUNDLE_AUTH} does not parse") from err
    if not isinstance(record, dict) or set(record) != {"digest", "mac"}:
        raise _damaged(source, f"{BUNDLE_AUTH} has unexpected fields")
    if record["digest"] != f"{DIGEST}:{digest(manifest_bytes)}":
        raise _damaged(source, "digest mismatch")
    mac = record["mac"]
    if mac is not None and (
        type(mac) is not str or not mac.startswith("hmac-sha256:") or not _HEX64.match(mac[12:])
    ):
        raise _damaged(source, "malformed MAC")
    return mac


def check_auth(manifest_bytes: bytes, mac: str | None, *, master: Any, info: KeyInfo, source: str) -> None:
    """Verify the manifest MAC under ``master``; IntegrityError when the manifest was altered."""
    if mac is None:
        raise _damaged(source, "an encrypted bundle without a manifest MAC")
    expected = hmac.new(_mac_key(master, info.salt), manifest_bytes, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, mac[len("hmac-sha256:") :]):
        raise IntegrityError(
            f"{source}: manifest authentication failed: the manifest was altered after it was written (the key "
            "is right). Restore the bundle from a backup.",
            path=source,
            member="manifest",
        )

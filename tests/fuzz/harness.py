"""Seeded, time-bounded mutation fuzzing of bundles, state stores and archives.

Each case copies a small pristine sample into a fresh temp directory, applies
one to three seeded mutations, runs the public API on it and classifies the
outcome:

* ``ok``        success, and the data is identical to the original;
* ``detected``  a typed ``persistkit.errors.PersistkitError`` (archives: also
                ``Archiver.verify`` reporting problems);
* ``fallback``  (state stores) an older acknowledged state, with the fallback
                reported (``StateRecoveredWarning``, ``LoadReport.failures`` or
                a dropped torn journal record);
* ``rollback``  (state stores) an older acknowledged state after ``CURRENT``
                was deleted or replaced by an older copy of itself: without its
                anchor a consistent older store cannot be told apart, so this is
                counted but is not a finding.
* ``journal_cut`` (state stores) the journal in force was cut exactly at a
                record boundary (or to 0 bytes) and the load gave the state after
                exactly the appends it kept: indistinguishable from a journal that
                took fewer appends (a documented limitation, see
                ``persistkit.state.journal``), so counted but not a finding.

Anything else is a finding: an untyped exception, a hang (each case runs in a
worker subprocess with a per-case timeout), silently different data, an older
state without a report, or (archives) a restore that writes outside its target,
leaves its temp directory behind or leaves a partial target.

Run::

    PYTHONPATH=. python3 tests/fuzz/harness.py --kind bundle --seconds 60 --seed 1
    PYTHONPATH=. python3 tests/fuzz/harness.py --kind state --cases 300 --seed 1
    PYTHONPATH=. python3 tests/fuzz/harness.py --kind archive --replay 1000042   # one case, in-process

A case seed is ``seed * 1_000_000 + index``; ``--replay`` reruns exactly that
mutation (against freshly built samples: their random ids and keys differ from
run to run, so a mutation that hits such bytes can behave differently).
The exit status is 1 when there is any finding.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import queue
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

KINDS = ("bundle", "state", "archive")
CASE_STRIDE = 1_000_000
MEMORY_LIMIT = 3 << 30  # a mutated length field must fail as a typed error, not eat the machine

# --------------------------------------------------------------------------------------------
# results


@dataclasses.dataclass
class Outcome:
    seed: int
    kind: str
    outcome: str  # ok | detected | fallback | rollback | finding
    detail: str = ""  # exception type for detected; what went wrong for findings
    mutation: str = ""
    traceback: str = ""

    @property
    def is_finding(self) -> bool:
        return self.outcome == "finding"


class Finding(Exception):
    """Raised inside a case when an oracle is violated."""


def _typed(err: BaseException) -> bool:
    from persistkit.errors import PersistkitError

    return isinstance(err, PersistkitError)


def _tb(err: BaseException, limit: int = 20) -> str:
    return "".join(traceback.format_exception(type(err), err, err.__traceback__, limit=-limit))


# --------------------------------------------------------------------------------------------
# byte-level mutations (shared by every kind)

INTERESTING_U32 = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def mutate_bytes(data: bytes, rng: random.Random, other: bytes | None = None) -> tuple[bytes, str]:
    """One random byte-level mutation of ``data``; ``other`` is a donor for splices."""
    buf = bytearray(data)
    n = len(buf)
    ops = ["flip", "flip", "set", "truncate", "append", "delete", "duplicate", "u32", "zero"]
    if other:
        ops += ["splice", "splice"]
    op = rng.choice(ops) if n else "append"
    if op == "flip":
        bits = rng.randint(1, 4)
        where = [rng.randrange(n * 8) for _ in range(bits)]
        for bit in where:
            buf[bit // 8] ^= 1 << (bit % 8)
        return bytes(buf), f"flip bits {where}"
    if op == "set":
        pos = rng.randrange(n)
        buf[pos] = rng.randrange(256)
        return bytes(buf), f"set byte {pos}={buf[pos]}"
    if op == "truncate":
        cut = rng.choice([0, rng.randrange(n), n - 1, max(0, n - rng.randint(1, 32))])
        return bytes(buf[:cut]), f"truncate to {cut}/{n}"
    if op == "append":
        extra = rng.randbytes(rng.choice([1, 7, 64, 1000]))
        return bytes(buf) + extra, f"append {len(extra)} bytes"
    if op == "delete":
        start = rng.randrange(n)
        length = rng.randint(1, min(64, n - start))
        del buf[start : start + length]
        return bytes(buf), f"delete {length} at {start}"
    if op == "duplicate":
        start = rng.randrange(n)
        length = rng.randint(1, min(128, n - start))
        buf[start:start] = buf[start : start + length]
        return bytes(buf), f"duplicate {length} at {start}"
    if op == "u32":
        pos = rng.randrange(max(1, n - 3))
        value = rng.choice([*INTERESTING_U32, n, n + 1, max(0, n - 1)])
        buf[pos : pos + 4] = value.to_bytes(4, "little")
        return bytes(buf), f"u32 {value:#x} at {pos}"
    if op == "zero":
        start = rng.randrange(n)
        length = rng.randint(1, min(256, n - start))
        buf[start : start + length] = bytes(length)
        return bytes(buf), f"zero {length} at {start}"
    assert other is not None
    start = rng.randrange(n)
    length = rng.randint(1, min(512, n - start))
    donor = rng.randrange(max(1, len(other) - length))
    same = rng.random() < 0.5 and start + length <= len(other)
    src = start if same else donor
    buf[start : start + length] = other[src : src + length]
    return bytes(buf), f"splice {length} from donor@{src} at {start}"


def _write(path: Path, data: bytes) -> None:
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o600
    path.write_bytes(data)
    path.chmod(mode)


def _pick_count(rng: random.Random) -> int:
    return rng.choices([1, 2, 3], weights=[70, 20, 10])[0]


# --------------------------------------------------------------------------------------------
# bundles


class BundleTarget:
    kind = "bundle"

    def __init__(self, work: Path) -> None:
        import numpy as np
        from sklearn.linear_model import LogisticRegression

        import persistkit as pk

        self.work = work
        rng = np.random.default_rng(7)
        x = rng.normal(size=(24, 3))
        y = (x[:, 0] > 0).astype(int)
        clf = LogisticRegression(max_iter=200).fit(x, y)
        models = {
            "weights": np.arange(48, dtype=np.float32).reshape(6, 8),
            "clf": clf,
            "table": {"steps": [1, 2, 3], "q": np.linspace(0, 1, 5), "name": "q-table"},
        }
        other = {
            "weights": np.ones((6, 8), dtype=np.float32),
            "clf": clf,
            "table": {"steps": [9], "name": "x"},
        }
        meta = {"run": 7, "lr": 0.001, "tags": ["fuzz", "small"], "nested": {"a": [1, 2.5, None]}}
        self.samples: dict[str, dict[str, Any]] = {}
        for variant, encrypt in (("plain", False), ("encrypted", True)):
            d = work / variant
            d.mkdir(parents=True)
            path = d / "model.models"
            pk.save_bundle(path, models, meta, encrypt=encrypt)
            donor = d / "donor.models"
            key = {"key_file": str(path) + ".key"} if encrypt else {}
            pk.save_bundle(donor, other, {"run": 8}, encrypt=encrypt, **key)
            loaded = pk.load_bundle(path, trusted=not encrypt)
            self.samples[variant] = {
                "bytes": path.read_bytes(),
                "donor": donor.read_bytes(),
                "key": (Path(str(path) + ".key").read_bytes() if encrypt else None),
                "models": loaded.models,
                "metadata": loaded.metadata,
            }

    def run(self, seed: int, case: Path) -> tuple[str, str, str]:
        """(outcome, detail, mutation); raises Finding or an untyped exception."""
        import persistkit as pk
        from persistkit.testing.compare import first_difference

        rng = random.Random(seed)
        variant = rng.choice(["plain", "encrypted"])
        sample = self.samples[variant]
        path = case / "model.models"
        data = sample["bytes"]
        key = sample["key"]
        steps = []
        forged = False  # re-sealed with valid digests: it claims other content, so only errors are judged
        for _ in range(_pick_count(rng)):
            roll = rng.random()
            if variant == "plain" and roll < 0.3:
                data, what = _forge_plain_bundle(data, rng)
                forged = True
            elif roll < 0.2:
                data, what = _mutate_zip_structure(data, sample["donor"], rng)
            elif roll < 0.27 and key is not None:
                key, what = _mutate_key(key, rng)
                what = "key: " + what
            else:
                data, what = mutate_bytes(data, rng, sample["donor"])
            steps.append(what)
        mutation = self.mutation = f"{variant}; " + "; ".join(steps)
        path.write_bytes(data)
        if key is not None:
            keypath = Path(str(path) + ".key")
            keypath.write_bytes(key)
            keypath.chmod(0o600)
        outcomes = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for op in ("inspect", "verify", "load"):
                try:
                    if op == "inspect":
                        pk.inspect(path)
                    elif op == "verify":
                        pk.verify(path)
                    else:
                        loaded = pk.load_bundle(path, trusted=variant == "plain")
                except Exception as err:
                    if not _typed(err):
                        raise
                    outcomes.append(type(err).__name__)
                    continue
                if op == "load" and not forged:
                    diff = first_difference(sample["models"], loaded.models, "models") or first_difference(
                        sample["metadata"], loaded.metadata, "metadata"
                    )
                    if diff:
                        raise Finding(f"load_bundle returned different data: {diff}")
                outcomes.append("ok")
        tag = "forged, " if forged else ""
        if outcomes[1] == "ok" and outcomes[2] != "ok":
            # verify passed, load refused: typed, but the two disagree; report it as detected
            return "detected", f"{tag}verify ok, load {outcomes[2]}", mutation
        if outcomes[2] == "ok":
            return "ok", tag.rstrip(", "), mutation
        return "detected", f"{tag}{outcomes[2]}", mutation


HOSTILE = (
    None,
    True,
    -1,
    0,
    2**63,
    2**70,
    -(2**63),
    1.5,
    float("inf"),
    "",
    "x",
    "../x",
    [],
    {},
    [1, 2],
    {"a": 1},
)


def _mutate_json(value: Any, rng: random.Random, depth: int = 0) -> Any:
    """A copy of a JSON value with one node (chosen at random, usually a deep one) replaced or removed."""
    if isinstance(value, dict) and value and (depth < 1 or rng.random() < 0.75):
        out = dict(value)
        key = rng.choice(sorted(out))
        if rng.random() < 0.15:
            del out[key]
        else:
            out[key] = _mutate_json(out[key], rng, depth + 1)
        return out
    if isinstance(value, list) and value and (depth < 1 or rng.random() < 0.75):
        out_list = list(value)
        i = rng.randrange(len(out_list))
        roll = rng.random()
        if roll < 0.1:
            del out_list[i]
        elif roll < 0.2:
            out_list.insert(i, out_list[i])
        else:
            out_list[i] = _mutate_json(out_list[i], rng, depth + 1)
        return out_list
    if isinstance(value, str) and value and rng.random() < 0.5:
        try:
            inner = json.loads(value)
        except ValueError:
            inner = None
        if isinstance(inner, (dict, list)):  # JSON inside a string (the numpy codec's header)
            return json.dumps(_mutate_json(inner, rng, depth + 1))
        chars = list(value)
        chars[rng.randrange(len(chars))] = rng.choice("0-9'\"(),:[]{}x")
        return "".join(chars)
    if isinstance(value, int) and not isinstance(value, bool) and rng.random() < 0.5:
        return value + rng.choice([-1, 1, -value - 1, 1 << 31, 1 << 40])
    return rng.choice(HOSTILE)


def _forge_plain_bundle(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Re-seal a plain bundle with one member's payload or header changed, or its manifest edited,
    keeping every digest valid (what anyone can do to a bundle without a key)."""
    from persistkit.format import manifest as mf
    from persistkit.format.envelope import TRAILER, open_envelope, seal

    try:
        entries = _zip_entries(data)
        by_name = {info.filename: i for i, (info, _) in enumerate(entries)}
        doc = json.loads(entries[by_name[mf.BUNDLE_MANIFEST]][1])
        members = doc["members"]
        m = rng.randrange(len(members))
        member = members[m]
        index = by_name[member["file"]]
        opened = open_envelope(entries[index][1])
    except Exception:
        return mutate_bytes(data, rng)  # an earlier mutation broke it: stay byte-level
    header = opened.header
    payload = bytes(opened.payload)
    meta = dict(header.meta)
    op = rng.choice(["payload", "payload", "meta", "manifest"])
    if op == "payload":
        payload = mutate_bytes(payload, rng)[0] if payload else b"\x00"
        what = f"forge {member['name']} payload"
    elif op == "meta":
        meta = _mutate_json(meta, rng)
        what = f"forge {member['name']} header meta"
    if op in ("payload", "meta"):
        try:
            sealed = seal(
                payload,
                kind=header.kind,
                codec=header.codec,
                schema=header.schema,
                compression=header.compression,
                meta=meta if isinstance(meta, dict) else {},
            )
        except Exception:  # the forger's tool refused (e.g. a meta value it cannot encode)
            return data, f"forge {member['name']} refused by seal"
        entries[index] = (_clone(entries[index][0]), sealed)
        member.update(
            plain_len=len(payload),
            envelope_len=len(sealed),
            digest=mf.digest(payload),
            envelope_digest=sealed[-TRAILER:].hex(),
        )
    else:
        doc = _mutate_json(doc, rng)
        what = "forge manifest"
    manifest_bytes = json.dumps(doc).encode()
    entries[by_name[mf.BUNDLE_MANIFEST]] = (_clone(entries[by_name[mf.BUNDLE_MANIFEST]][0]), manifest_bytes)
    if mf.BUNDLE_AUTH in by_name:
        auth = mf.auth_record(manifest_bytes)
        entries[by_name[mf.BUNDLE_AUTH]] = (_clone(entries[by_name[mf.BUNDLE_AUTH]][0]), auth)
    return _zip_build(entries), what


def _mutate_key(key: bytes, rng: random.Random) -> tuple[bytes, str]:
    roll = rng.random()
    if roll < 0.3:
        return base64.b64encode(rng.randbytes(32)) + b"\n", "replaced by another valid key"
    return mutate_bytes(key, rng)


def _zip_entries(data: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(info, zf.read(info)) for info in zf.infolist()]


def _zip_build(entries: list[tuple[zipfile.ZipInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point
        with zipfile.ZipFile(out, "w") as zf:
            for info, payload in entries:
                zf.writestr(info, payload)
    return out.getvalue()


def _clone(info: zipfile.ZipInfo, name: str | None = None) -> zipfile.ZipInfo:
    new = zipfile.ZipInfo(name if name is not None else info.filename, date_time=info.date_time)
    new.compress_type = info.compress_type
    new.external_attr = info.external_attr
    new.create_system = info.create_system
    return new


def _mutate_zip_structure(data: bytes, donor: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Rebuild the zip with whole entries dropped, duplicated, reordered, renamed or taken from the donor."""
    try:
        entries = _zip_entries(data)
        theirs = {i.filename: (i, p) for i, p in _zip_entries(donor)}
    except Exception:
        return mutate_bytes(data, rng, donor)  # an earlier mutation broke the zip: stay byte-level
    if not entries:
        return mutate_bytes(data, rng, donor)
    op = rng.choice(["drop", "duplicate", "swap", "donor", "rename", "recompress"])
    i = rng.randrange(len(entries))
    name = entries[i][0].filename
    if op == "drop":
        del entries[i]
    elif op == "duplicate":
        entries.insert(rng.randrange(len(entries) + 1), (_clone(entries[i][0]), entries[i][1]))
    elif op == "swap":
        j = rng.randrange(len(entries))
        entries[i], entries[j] = entries[j], entries[i]
        name = f"{name}<->{entries[i][0].filename}"
    elif op == "donor" and name in theirs:
        entries[i] = (_clone(theirs[name][0]), theirs[name][1])
    elif op == "rename":
        new = rng.choice(["../escape", "/abs", "member/x", entries[-1][0].filename, name.upper(), ""]) or "x"
        entries[i] = (_clone(entries[i][0], new), entries[i][1])
        name = f"{name}->{new}"
    else:
        info = _clone(entries[i][0])
        info.compress_type = zipfile.ZIP_DEFLATED if info.compress_type == zipfile.ZIP_STORED else 0
        entries[i] = (info, entries[i][1])
    return _zip_build(entries), f"zip {op} {name}"


# --------------------------------------------------------------------------------------------
# state stores


class ComponentRejected(Exception):
    """A harness component refused a malformed state (only a forged store may get that far)."""


class Holder:
    """A plain component: a dict state."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {"n": 0, "label": "", "weights": [0.0] * 4}

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.state["n"], "label": self.state["label"], "weights": list(self.state["weights"])}

    def load_state_dict(self, state: Any) -> None:
        try:
            self.state = {"n": state["n"], "label": state["label"], "weights": list(state["weights"])}
        except Exception as err:
            raise ComponentRejected(f"holder: {type(err).__name__}: {err}") from err


class ArrayHolder:
    """A component holding a numpy array."""

    def __init__(self) -> None:
        import numpy as np

        self.array = np.zeros(6, dtype=np.float64)

    def state_dict(self) -> dict[str, Any]:
        return {"array": self.array.copy()}

    def load_state_dict(self, state: Any) -> None:
        try:
            self.array = state["array"].copy()
            self.array.tolist()
        except Exception as err:
            raise ComponentRejected(f"arrays: {type(err).__name__}: {err}") from err


LOG_MAXLEN = 8  # small, so replay also exercises eviction


def _open_store(directory: Path, key_file: str | None, **kw: Any) -> tuple[Any, dict[str, Any]]:
    import persistkit as pk

    store = pk.StateStore(directory, autosave_every=None, keep_generations=3, key_file=key_file, **kw)
    parts = {
        "holder": store.register("holder", Holder()),
        "arrays": store.register("arrays", ArrayHolder()),
        "trades": store.register("trades", pk.BoundedLog(LOG_MAXLEN)),
    }
    return store, parts


def _snapshot(parts: dict[str, Any]) -> tuple[Any, Any, list[Any]]:
    return (parts["holder"].state_dict(), parts["arrays"].array.tolist(), list(parts["trades"]))


class StateTarget:
    kind = "state"

    def __init__(self, work: Path) -> None:
        import numpy as np

        from persistkit.keys import write_key_file

        self.work = work
        self.samples: dict[str, dict[str, Any]] = {}
        for variant in ("plain", "encrypted"):
            base = work / variant
            base.mkdir(parents=True)
            key_file = None
            if variant == "encrypted":
                key_file = str(base / "store.key")
                write_key_file(key_file)
            directory = base / "store"
            store, parts = _open_store(directory, key_file)
            store.load()
            commits: list[tuple[Any, Any]] = [(_snapshot(parts)[0], _snapshot(parts)[1])]
            acks: list[tuple[int, Any]] = [(0, _snapshot(parts))]  # (index of the commit in force, state)
            currents = [(directory / "CURRENT").read_bytes()]
            item = 0
            for round_ in range(1, 5):
                for _ in range(3):
                    parts["trades"].append({"id": item, "px": 100.0 + item})
                    item += 1
                    acks.append((len(commits) - 1, _snapshot(parts)))
                parts["holder"].state.update(n=round_, label=f"round {round_}")
                parts["holder"].state["weights"][round_ % 4] = round_ * 0.5
                parts["arrays"].array = np.arange(6, dtype=np.float64) * round_
                if round_ < 4:
                    store.save()
                    snap = _snapshot(parts)
                    commits.append((snap[0], snap[1]))
                    acks.append((len(commits) - 1, snap))
                    currents.append((directory / "CURRENT").read_bytes())
            for _ in range(3):  # appends after the last checkpoint: journaled, acknowledged
                parts["trades"].append({"id": item, "px": 100.0 + item})
                item += 1
                acks.append((len(commits) - 1, (commits[-1][0], commits[-1][1], list(parts["trades"]))))
            store.abandon()  # as a killed process: the round-4 component changes were never saved
            newest = max(p for p in directory.iterdir() if p.is_dir() and p.name.startswith("gen-"))
            journal = newest / "trades.journal"
            self.samples[variant] = {
                "base": base,
                "key_file": key_file,
                "commits": commits,
                "acks": acks,
                "currents": currents[:-1],
                "journal": (journal.relative_to(directory), journal.read_bytes()),
            }

    def run(self, seed: int, case: Path) -> tuple[str, str, str]:
        rng = random.Random(seed)
        variant = rng.choice(["plain", "encrypted"])
        sample = self.samples[variant]
        shutil.copytree(sample["base"], case / "s", symlinks=True)
        directory = case / "s" / "store"
        key_file = str(case / "s" / "store.key") if sample["key_file"] else None
        other = self.samples["encrypted" if variant == "plain" else "plain"]["base"] / "store"
        steps = []
        anchor_lost = False
        forged = (
            False  # re-sealed with valid checksums: a plain store has no authenticity, only errors are judged
        )
        for _ in range(_pick_count(rng)):
            if variant == "plain" and rng.random() < 0.25:
                what, lost = _forge_store(directory, rng), False
                forged = True
            else:
                what, lost = _mutate_store(directory, other, sample["currents"], rng)
            anchor_lost |= lost
            steps.append(what)
        mutation = self.mutation = f"{variant}; " + "; ".join(steps)

        from persistkit.testing.compare import first_difference

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                store, parts = _open_store(directory, key_file)
                try:
                    report = store.load()
                    loaded = _snapshot(parts)
                    store.close()
                except BaseException:
                    store.abandon()
                    raise
            except ComponentRejected as err:
                if not forged:
                    raise Finding(f"garbage reached a component without a checksum error: {err}") from err
                return "detected", "forged, rejected by the component", mutation
            except Exception as err:
                if not _typed(err):
                    raise
                return "detected", ("forged, " if forged else "") + type(err).__name__, mutation
        kept = _journal_cut_at_record_boundary(directory, *sample["journal"])
        reported = bool(report.failures) or any(c.torn_records for c in report.components.values())
        reported |= any("StateRecovered" in type(w.message).__name__ for w in caught)
        acks = sample["acks"]
        final = acks[-1][1]
        verdict = self._judge(loaded, acks, sample["commits"])
        if forged and verdict != "final":
            outcome = "forged"  # whatever the forger wrote, loaded without an untyped error
        elif verdict == "final":
            outcome = "ok"
        elif verdict == "older":
            if reported:
                outcome = "fallback"
            elif kept is not None and first_difference(_ack_after_appends(acks, kept), loaded) is None:
                # A known limitation (persistkit.state.journal): a journal cut exactly at a record
                # boundary, down to 0 bytes, looks like one that took fewer appends.
                outcome = "journal_cut"
            elif anchor_lost:
                outcome = "rollback"
            else:
                diff = first_difference(final, loaded, "state")
                raise Finding(f"silently loaded an older acknowledged state, with no report ({diff})")
        else:
            diff = first_difference(final, loaded, "state")
            raise Finding(f"loaded a state that was never acknowledged: {diff}")
        # The store checkpointed what it recovered; reopening must give exactly that, without complaint.
        with warnings.catch_warnings(record=True) as again:
            warnings.simplefilter("always")
            store, parts = _open_store(directory, key_file, readonly=True)
            try:
                store.load()
            except Exception as err:
                raise Finding(
                    f"after a successful load ({outcome}), reopening failed: {type(err).__name__}: {err}"
                ) from err
            reopened = _snapshot(parts)
        diff = first_difference(loaded, reopened, "reopened")
        if diff:
            raise Finding(f"reopening after a successful load gives other data: {diff}")
        if again and outcome == "ok" and not caught:
            raise Finding(f"reopening after a clean load warns: {again[0].message}")
        return outcome, "reported" if reported else "", mutation

    @staticmethod
    def _judge(loaded: Any, acks: list[tuple[int, Any]], commits: list[tuple[Any, Any]]) -> str:
        from persistkit.testing.compare import first_difference

        if first_difference(acks[-1][1], loaded) is None:
            return "final"
        if any(first_difference(state, loaded) is None for _, state in acks):
            return "older"
        # After a fallback the store replays later journals that chain on (no acknowledged append is
        # lost): components from a committed checkpoint, the log from an acknowledgement at or after it.
        for index, (holder, arrays) in enumerate(commits):
            if first_difference((holder, arrays), (loaded[0], loaded[1])) is not None:
                continue
            if any(at >= index and first_difference(s[2], loaded[2]) is None for at, s in acks):
                return "older"
        return "other"


def _journal_cut_at_record_boundary(directory: Path, rel: Path, original: bytes) -> int | None:
    """How many records the journal in force kept, if it is now ``original`` cut exactly after one of
    its records (or to 0 bytes); else None."""
    from persistkit.state import journal

    path = directory / rel
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) >= len(original) or not original.startswith(data):
        return None
    pos, kept = 0, 0
    while pos < len(data):
        length = journal.RECORD.unpack_from(original, pos)[0]
        pos += journal.RECORD.size + length + journal.CHECK
        kept += 1
    return kept if pos == len(data) else None


def _ack_after_appends(acks: list[tuple[int, Any]], kept: int) -> Any:
    """The acknowledged state after the last checkpoint and ``kept`` of the appends after it."""
    last_commit = acks[-1][0]
    first = next(i for i, (at, _) in enumerate(acks) if at == last_commit)
    return acks[first + kept][1]


def _forge_store(directory: Path, rng: random.Random) -> str:
    """Edit one file of a plain store and re-seal it, fixing up every digest that names it
    (component -> MANIFEST -> CURRENT), as anyone with write access can: no key protects a plain store."""
    import xxhash

    from persistkit.format import envelope, tree
    from persistkit.state import journal

    files = [p for p in _store_files(directory) if p.name == "CURRENT" or p.suffix in (".pk", ".journal")]
    files += list(directory.glob("gen-*/MANIFEST"))
    if not files:
        return "nothing to forge"
    target = rng.choice(sorted(files))
    rel = str(target.relative_to(directory))
    data = target.read_bytes()

    def edit(payload: bytes) -> tuple[bytes, str]:
        if rng.random() < 0.4:
            return mutate_bytes(payload, rng)[0], "raw"
        try:
            value = tree.decode(payload)
            return tree.encode(_mutate_json(value, rng)), "value"
        except Exception:
            return mutate_bytes(payload, rng)[0], "raw"

    if target.suffix == ".journal":
        records, pos = [], 0
        while pos + journal.RECORD.size <= len(data):
            length, seq, op = journal.RECORD.unpack_from(data, pos)
            end = pos + journal.RECORD.size + length + journal.CHECK
            if end > len(data):
                break
            records.append([seq, op, data[pos + journal.RECORD.size : end - journal.CHECK]])
            pos = end
        if not records:
            return f"forge {rel}: no records"
        record = rng.choice(records)
        what = rng.choice(["payload", "payload", "seq", "op"])
        if what == "payload":
            record[2], how = edit(record[2])
            what = f"payload ({how})"
        elif what == "seq":
            record[0] = max(0, record[0] + rng.choice([-1, 1, 5, -(record[0])]))
        else:
            record[1] = rng.choice([0, 3, 255])
        target.write_bytes(b"".join(journal.frame(*r) for r in records) + data[pos:])
        return f"forge {rel} record {what}"

    try:
        opened = envelope.open_envelope(data)
    except Exception:
        return f"forge {rel}: not an envelope (already damaged)"
    header = opened.header
    payload, meta, schema = bytes(opened.payload), dict(header.meta), header.schema
    roll = rng.random()
    if roll < 0.7:
        payload, how = edit(payload)
        what = f"payload ({how})"
    elif roll < 0.9:
        meta = _mutate_json(meta, rng)
        what = "header meta"
    else:
        schema = rng.choice([0, 2, 99, 2**31])
        what = f"schema {schema}"

    def reseal(path: Path, body: bytes, h: Any, m: Any, sch: int) -> bytes:
        sealed = envelope.seal(body, kind=h.kind, codec=h.codec, schema=sch, compression=h.compression,
                               meta=m if isinstance(m, dict) else {})  # fmt: skip
        path.write_bytes(sealed)
        return sealed

    try:
        sealed = reseal(target, payload, header, meta, schema)
    except Exception:
        return f"forge {rel} {what}: refused by seal"
    # fix up the digests that name the forged file, so that only the content is wrong
    try:
        if target.suffix == ".pk":
            mpath = target.parent / "MANIFEST"
            mopened = envelope.open_envelope(mpath.read_bytes())
            manifest = tree.decode(mopened.payload)
            entry = manifest["components"][target.stem]
            entry["digest"], entry["bytes"] = xxhash.xxh3_128_hexdigest(sealed), len(sealed)
            target, sealed = (
                mpath,
                reseal(mpath, tree.encode(manifest), mopened.header, dict(mopened.header.meta), 1),
            )
        if target.name == "MANIFEST":
            cpath = directory / "CURRENT"
            copened = envelope.open_envelope(cpath.read_bytes())
            current = tree.decode(copened.payload)
            if current.get("generation") == int(target.parent.name.split("-")[1]):
                current["manifest"] = xxhash.xxh3_128_hexdigest(sealed)
                reseal(cpath, tree.encode(current), copened.header, dict(copened.header.meta), 1)
    except Exception:
        pass  # something on the way is already damaged: the forgery stays half-done
    return f"forge {rel} {what}"


def _store_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != ".persistkit.lock")


def _mutate_store(
    directory: Path, other: Path, currents: list[bytes], rng: random.Random
) -> tuple[str, bool]:
    """One mutation of a store directory; returns (description, whether CURRENT was removed/rolled back)."""
    files = _store_files(directory)
    gens = sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith("gen-"))
    op = rng.choices(
        ["bytes", "delete", "delete_gen", "copy_file", "swap_gens", "dup_gen", "old_current", "foreign"],
        weights=[55, 8, 4, 10, 5, 5, 6, 7],
    )[0]
    rel = lambda p: str(p.relative_to(directory))  # noqa: E731
    if op == "bytes" or (op in ("delete_gen", "swap_gens", "dup_gen", "copy_file") and len(gens) < 2):
        if not files:
            return "nothing to mutate", False
        target = rng.choice(files)
        donors = [f for f in files if f != target]
        donor = rng.choice(donors).read_bytes() if donors else None
        data, what = mutate_bytes(target.read_bytes(), rng, donor)
        _write(target, data)
        return f"{rel(target)}: {what}", False
    if op == "delete":
        if not files:
            return "nothing to delete", False
        target = rng.choice(files)
        target.unlink()
        return f"delete {rel(target)}", target.name == "CURRENT"
    if op == "delete_gen":
        target = rng.choice(gens)
        shutil.rmtree(target)
        return f"delete {rel(target)}/", False
    if op == "copy_file":  # a file of one generation copied over (or into) another: a splice
        a, b = rng.sample(gens, 2)
        candidates = [p for p in a.iterdir() if p.is_file()]
        if not candidates:
            return "nothing to copy", False
        src = rng.choice(candidates)
        shutil.copyfile(src, b / src.name)
        return f"copy {rel(src)} -> {rel(b)}/", False
    if op == "swap_gens":
        a, b = rng.sample(gens, 2)
        tmp = directory / "swap.tmp"
        a.rename(tmp)
        b.rename(a)
        tmp.rename(b)
        return f"swap {a.name} <-> {b.name}", False
    if op == "dup_gen":  # a generation copied under a newer number
        src = rng.choice(gens)
        number = int(gens[-1].name.split("-")[1]) + rng.randint(1, 2)
        shutil.copytree(src, directory / f"gen-{number:06d}")
        return f"duplicate {src.name} as gen-{number:06d}", False
    if op == "old_current":
        old = rng.choice(currents)
        (directory / "CURRENT").write_bytes(old)
        return f"CURRENT replaced by an older CURRENT ({currents.index(old)})", True
    # a file of the same name from another store
    theirs = {str(p.relative_to(other)): p for p in _store_files(other)}
    mine = [p for p in files if rel(p) in theirs]
    if not mine:
        return "no foreign counterpart", False
    target = rng.choice(mine)
    shutil.copyfile(theirs[rel(target)], target)
    return f"{rel(target)} replaced by the other store's", False


# --------------------------------------------------------------------------------------------
# archives

SYMLINK_TARGETS = (".", "..", "../y", "a", "a/..", "a/../..", "/etc", "../outside", "b/c", "x/..", "")
MEMBER_NAMES = ("a", "a/b", "a/l", "x", "x/l", "x/l/evil.txt", "l/evil.txt", "b/c", "y/z", "A", "a/", "./a")


class ArchiveTarget:
    kind = "archive"

    def __init__(self, work: Path) -> None:
        import persistkit as pk

        self.work = work
        root = work / "root"
        (root / "logs" / "tb").mkdir(parents=True)
        (root / "models").mkdir()
        (root / "config").mkdir()
        rng = random.Random(3)
        (root / "logs" / "run1.log").write_text(
            "".join(f"step {i} loss {1 / (i + 1):.4f}\n" for i in range(40))
        )
        (root / "logs" / "tb" / "events.bin").write_bytes(rng.randbytes(1500))
        (root / "logs" / "latest").symlink_to("run1.log")
        (root / "models" / "m.bin").write_bytes(rng.randbytes(700))
        (root / "config" / "cfg.yaml").write_text("lr: 0.001\nbatch: 32\n")
        (root / "ckpt.pth").write_bytes(bytes(range(256)) * 3)
        self.archiver = pk.Archiver(root, archive_dir="archives", keep=5)
        path = self.archiver.create()
        self.bytes = path.read_bytes()
        self.name = path.name
        pristine = work / "pristine"
        pk.Archiver(work).restore(path, pristine)
        self.tree = _tree(pristine)
        self.donor = _zip_build([(_clone(i), p[::-1]) for i, p in _zip_entries(self.bytes)])

    def run(self, seed: int, case: Path) -> tuple[str, str, str]:
        import persistkit as pk

        rng = random.Random(seed)
        data = self.bytes
        steps = []
        crafted = False  # the archive no longer claims the original content
        for _ in range(_pick_count(rng)):
            roll = rng.random()
            if roll < 0.45:
                data, what = mutate_bytes(data, rng, self.donor)
            elif roll < 0.65:
                data, what = _craft_manifest(data, rng)
            elif roll < 0.85:
                data, what, changed = _mutate_archive_members(data, rng)
                crafted |= changed
            else:
                data, what = _symlink_attack(rng), "symlink attack"
                crafted = True
            steps.append(what)
        mutation = self.mutation = "; ".join(steps)
        archives = case / "archives"
        archives.mkdir()
        path = archives / self.name
        path.write_bytes(data)
        outside = case / "y"
        outside.mkdir()
        (outside / "keep.txt").write_text("outside")
        before = _tree(case)
        verdict = "?"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            archiver = pk.Archiver(case, archive_dir="archives")
            verify_error: BaseException | None = None  # raised after the restore checks, which still run
            try:
                report = archiver.verify(path)
                verdict = "ok" if report.ok else "problems"
            except Exception as err:
                if not _typed(err):
                    verify_error = err
                verdict = type(err).__name__
            into = case / "restored"
            restored: BaseException | None = None
            try:
                archiver.restore(path, into)
            except Exception as err:
                restored = err
        try:
            self._check_restore(case, into, before, restored)
        except Finding as err:
            if restored is not None and not _typed(restored):
                raise Finding(f"{err} (after untyped {type(restored).__name__}: {restored})") from restored
            raise
        if restored is not None and not _typed(restored):
            raise restored
        if verify_error is not None:
            raise verify_error
        if restored is not None:
            return "detected", f"verify {verdict}, restore {type(restored).__name__}", mutation
        got = {k: v for k, v in _tree(into).items() if k != "MANIFEST.json"}
        want = {k: v for k, v in self.tree.items() if k != "MANIFEST.json"}
        if got == want:
            return "ok", f"verify {verdict}", mutation
        diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        if verdict == "ok" and not crafted:
            raise Finding(f"verify said ok and restore succeeded, but the data differs: {diff[:5]}")
        if verdict == "ok":
            raise Finding(f"verify said ok for an archive whose members were altered: {diff[:5]}")
        if crafted:
            # restore does not check the manifest (verify does, and flagged it): contents as the zip claims
            return "detected", f"verify {verdict}, restore extracted altered members", mutation
        raise Finding(f"restore returned damaged data without an error (verify: {verdict}): {diff[:5]}")

    @staticmethod
    def _check_restore(
        case: Path, into: Path, before: dict[str, str], restored: BaseException | None
    ) -> None:
        """Safety, whatever the outcome: nothing outside the target changed, no temp left, no partial target."""
        after = _tree(case, skip=("restored",))
        leftovers = [k for k in after if k.startswith(".restored.restore-") or k.endswith(".restoring")]
        if leftovers:
            raise Finding(f"restore left {leftovers[:3]} behind")
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        if changed:
            raise Finding(f"restore changed files outside its target: {changed[:5]}")
        if restored is not None:
            if into.exists() or into.is_symlink():
                raise Finding(f"restore failed ({type(restored).__name__}) but left {into.name}/ in place")
            return
        for dirpath, dirnames, filenames in os.walk(into):
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                real = os.path.realpath(full)
                if os.path.islink(full) and not (real == str(into) or real.startswith(str(into) + os.sep)):
                    raise Finding(f"restored symlink {os.path.relpath(full, into)} resolves outside: {real}")
                mode = os.lstat(full).st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                    raise Finding(f"restored a special file {os.path.relpath(full, into)}")


def _tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """relative path -> 'dir' | 'link:<target>' | 'file:<sha256>' (never follows links)."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir.split(os.sep)[0] in skip:
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames if not (rel_dir == "." and d in skip)]
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel.split(os.sep)[0] in skip:
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(full)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    out[rel] = "file:" + hashlib.sha256(f.read()).hexdigest()
            else:
                out[rel] = f"special:{st.st_mode:o}"
    return out


def _craft_manifest(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    try:
        entries = _zip_entries(data)
    except Exception:
        return mutate_bytes(data, rng)
    idx = next((i for i, (info, _) in enumerate(entries) if info.filename == "MANIFEST.json"), None)
    if idx is None:
        return mutate_bytes(data, rng)
    raw = entries[idx][1]
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        doc = None
    files = doc.get("files") if isinstance(doc, dict) else None
    op = rng.choice(
        [
            "not_json", "not_utf8", "top_list", "top_str", "top_null", "files_not_list", "files_dict",
            "entry_not_dict", "entry_drop_key", "entry_type", "entry_extra", "entry_path_missing",
            "entry_symlink_target", "format", "deep", "duplicate_entry", "empty_files",
        ]
    )  # fmt: skip
    if op == "not_json":
        new = raw[: rng.randrange(max(1, len(raw)))]
    elif op == "not_utf8":
        new = b"\xff\xfe" + raw
    elif op == "top_list":
        new = json.dumps([doc]).encode()
    elif op == "top_str":
        new = json.dumps("MANIFEST").encode()
    elif op == "top_null":
        new = b"null"
    elif op == "deep":
        new = b"[" * 5_000 + b"]" * 5_000
    elif not isinstance(doc, dict) or not isinstance(files, list) or not files:
        new = mutate_bytes(raw, rng)[0]
        op = "bytes (manifest already broken)"
    else:
        doc = json.loads(raw)
        files = doc["files"]
        i = rng.randrange(len(files))
        entry = files[i]
        value = rng.choice([None, 1, -1, 2**70, 1.5, "x", [], {}, True, "../../etc/passwd", "/abs"])
        if not isinstance(entry, dict) and op.startswith("entry_"):
            op = "entry_not_dict"  # an earlier mutation already replaced it
        if op in ("entry_drop_key", "entry_type") and not entry:
            op = "entry_extra"
        if op == "files_not_list":
            doc["files"] = value
        elif op == "files_dict":
            doc["files"] = {str(k): v for k, v in enumerate(files)}
        elif op == "entry_not_dict":
            files[i] = value
        elif op == "entry_drop_key":
            entry.pop(rng.choice(sorted(entry)), None)
        elif op == "entry_type":
            entry[rng.choice(sorted(entry))] = value
        elif op == "entry_extra":
            entry[rng.choice(["kind", "mode", "target", "size"])] = value
        elif op == "entry_path_missing":
            entry["path"] = rng.choice(["nope/file", "../x", "", "MANIFEST.json"])
        elif op == "entry_symlink_target":
            entry["kind"] = "symlink"
            entry["target"] = value
        elif op == "format":
            doc["format"] = value
        elif op == "duplicate_entry":
            files.append(json.loads(json.dumps(entry)))
        else:
            doc["files"] = []
        new = json.dumps(doc).encode()
    entries[idx] = (_clone(entries[idx][0]), new)
    return _zip_build(entries), f"manifest {op}"


def _mutate_archive_members(data: bytes, rng: random.Random) -> tuple[bytes, str, bool]:
    """Change whole members (name, mode bits, content with a valid CRC); (bytes, what, content changed)."""
    try:
        entries = _zip_entries(data)
    except Exception:
        new, what = mutate_bytes(data, rng)
        return new, what, False
    if not entries:
        new, what = mutate_bytes(data, rng)
        return new, what, False
    i = rng.randrange(len(entries))
    info, payload = entries[i]
    op = rng.choice(
        ["mode", "mode", "rename", "content", "drop", "duplicate", "add_link", "add_dir_over_file"]
    )
    changed = True
    if op == "mode":
        kind = rng.choice(
            [stat.S_IFLNK, stat.S_IFDIR, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFREG, stat.S_IFSOCK]
        )
        new_info = _clone(info)
        new_info.external_attr = ((kind | 0o644) << 16) | (info.external_attr & 0xFFFF)
        entries[i] = (new_info, payload)
        what = f"mode of {info.filename} -> {kind:o}"
    elif op == "rename":
        new_name = rng.choice(["../evil", "/etc/evil", "a\\b", "C:/x", "x\x00y", info.filename.upper(), "./"])
        entries[i] = (_clone(info, new_name), payload)
        what = f"rename {info.filename} -> {new_name!r}"
    elif op == "content":
        entries[i] = (_clone(info), mutate_bytes(payload, rng)[0] if payload else b"x")
        what = f"content of {info.filename} (valid CRC)"
    elif op == "drop":
        del entries[i]
        what = f"drop {info.filename}"
    elif op == "duplicate":
        entries.append((_clone(info), payload))
        what = f"duplicate {info.filename}"
        changed = False
    elif op == "add_link":
        name = rng.choice(["logs/evil", "models", "logs/tb/up", info.filename])
        link = zipfile.ZipInfo(name)
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        target = rng.choice(SYMLINK_TARGETS)
        entries.insert(rng.randrange(len(entries) + 1), (link, target.encode()))
        what = f"symlink {name} -> {target!r}"
    else:
        d = zipfile.ZipInfo(info.filename.rstrip("/") + "/")
        d.external_attr = (stat.S_IFDIR | 0o755) << 16
        entries.insert(rng.randrange(len(entries) + 1), (d, b""))
        what = f"directory over {info.filename}"
    return _zip_build(entries), what, changed


def _symlink_attack(rng: random.Random) -> bytes:
    """A small archive of random links, directories and files from a tiny vocabulary of names."""
    entries = []
    for _ in range(rng.randint(2, 6)):
        name = rng.choice(MEMBER_NAMES)
        kind = rng.choice(["link", "link", "file", "dir"])
        info = zipfile.ZipInfo(name.rstrip("/") + ("/" if kind == "dir" else ""))
        if kind == "link":
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            entries.append((info, rng.choice(SYMLINK_TARGETS).encode()))
        elif kind == "dir":
            info.external_attr = (stat.S_IFDIR | 0o755) << 16
            entries.append((info, b""))
        else:
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            entries.append((info, b"payload"))
    return _zip_build(entries)


# --------------------------------------------------------------------------------------------
# running cases

TARGETS: dict[str, Callable[[Path], Any]] = {
    "bundle": BundleTarget,
    "state": StateTarget,
    "archive": ArchiveTarget,
}


def run_case(target: Any, seed: int, scratch: Path) -> Outcome:
    case = scratch / f"case-{seed}"
    case.mkdir()
    target.mutation = None  # each run() records its mutation here once mutating is done
    try:
        outcome, detail, mutation = target.run(seed, case)
        return Outcome(seed, target.kind, outcome, detail, mutation)
    except Finding as err:
        return Outcome(seed, target.kind, "finding", str(err), target.mutation)
    except BaseException as err:  # an untyped exception is exactly what we look for
        if isinstance(err, KeyboardInterrupt):
            raise
        if target.mutation is None:  # raised while mutating: the harness's own bug, not persistkit's
            detail = f"harness error while mutating: {type(err).__name__}: {err}"[:300]
            return Outcome(seed, target.kind, "harness_error", detail, "", _tb(err))
        detail = f"untyped {type(err).__name__}: {err}"[:300]
        return Outcome(seed, target.kind, "finding", detail, target.mutation, _tb(err))
    finally:
        with contextlib.suppress(OSError):
            for p in case.rglob("*"):  # make everything removable (mutations may chmod)
                if p.is_dir() and not p.is_symlink():
                    p.chmod(0o700)
        shutil.rmtree(case, ignore_errors=True)


def scratch_root() -> str | None:
    """Where cases live: ``$PK_FUZZ_TMP``, else /dev/shm (real files on tmpfs: fsync is cheap), else the default."""
    chosen = os.environ.get("PK_FUZZ_TMP")
    if chosen:
        return chosen
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    return None


def worker_main(kind: str) -> int:
    """Build samples, then answer one JSON line per case seed read from stdin."""
    with contextlib.suppress(ValueError, OSError):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    scratch = Path(tempfile.mkdtemp(prefix=f"pk-fuzz-{kind}-", dir=scratch_root()))
    try:
        target = TARGETS[kind](scratch / "samples")
        out = sys.stdout
        out.write("READY\n")
        out.flush()
        for line in sys.stdin:
            seed = int(line)
            result = run_case(target, seed, scratch)
            out.write(json.dumps(dataclasses.asdict(result)) + "\n")
            out.flush()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


class Worker:
    """A worker subprocess; ``run(seed, timeout)`` returns an Outcome, or None on a hang/crash."""

    def __init__(self, kind: str) -> None:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: collections.deque[str] = collections.deque(maxlen=40)
        self.pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True),
        ]
        for pump in self.pumps:
            pump.start()
        ready = self._next(180)
        if ready != "READY":
            self.kill()
            raise RuntimeError(f"fuzz worker for {kind} did not start: {ready!r}\n{''.join(self.stderr)}")

    @staticmethod
    def _pump(stream: Any, put: Callable[[Any], None]) -> None:
        for line in stream:
            put(line)
        put(None)

    def _next(self, timeout: float) -> str | None:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        return line.rstrip("\n") if line is not None else None

    def run(self, seed: int, timeout: float) -> Outcome | None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(f"{seed}\n")
            self.proc.stdin.flush()
        except OSError:
            return None
        line = self._next(timeout)
        if line is None:
            return None
        return Outcome(**json.loads(line))

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self._reap()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._reap()

    def _reap(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        for pump in self.pumps:
            pump.join(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()


@dataclasses.dataclass
class Summary:
    kind: str
    seed: int
    cases: int = 0
    seconds: float = 0.0
    counts: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    details: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    findings: list[Outcome] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.cases / self.seconds if self.seconds else 0.0

    def render(self) -> str:
        lines = [
            f"fuzz {self.kind}: seed {self.seed}, {self.cases} cases in {self.seconds:.1f} s "
            f"({self.rate:.1f} cases/s)",
            "  outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())),
        ]
        top = self.details.most_common(8)
        if top:
            lines.append("  most common: " + "; ".join(f"{k} x{v}" for k, v in top))
        groups: dict[str, list[Outcome]] = collections.defaultdict(list)
        for f in self.findings:
            groups[_signature(f)].append(f)
        if groups:
            lines.append(f"  FINDINGS: {len(self.findings)} in {len(groups)} groups")
        for sig, items in groups.items():
            seeds = ", ".join(str(f.seed) for f in items[:10])
            more = f" (+{len(items) - 10} more)" if len(items) > 10 else ""
            lines.append(f"  - {sig}: {len(items)} case(s); seeds {seeds}{more}")
            first = items[0]
            lines.append(f"      {first.detail[:300]}")
            if first.mutation:
                lines.append(f"      mutation: {first.mutation[:300]}")
            if first.traceback:
                lines.extend("      | " + t for t in first.traceback.strip().splitlines()[-8:])
        return "\n".join(lines)


def _signature(f: Outcome) -> str:
    """Group findings: untyped by exception type and the innermost persistkit frame, others by message head."""
    if f.detail.startswith("untyped"):
        frame = ""
        for line in f.traceback.splitlines():
            if "persistkit/" in line and line.strip().startswith("File"):
                frame = line.strip().split("persistkit/", 1)[1]
        return f"{f.detail.split(':')[0]} at {frame or '?'}"
    if f.outcome == "harness_error":
        return "HARNESS ERROR (fix tests/fuzz/harness.py): " + f.detail.split(":")[1].strip()
    if f.detail.startswith("hang") or f.detail.startswith("worker"):
        return f.detail.split(" (")[0]
    return f.detail.split(":")[0][:90]


def fuzz(
    kind: str,
    *,
    seed: int,
    cases: int | None = None,
    seconds: float | None = None,
    timeout: float = 10.0,
    progress: Callable[[Summary], None] | None = None,
) -> Summary:
    """Run cases ``seed * 1e6 + i`` in a worker subprocess until ``cases`` or ``seconds`` is reached."""
    if cases is None and seconds is None:
        cases = 300
    summary = Summary(kind, seed)
    worker = Worker(kind)
    start = time.perf_counter()
    last_progress = start
    try:
        index = 0
        while True:
            now = time.perf_counter()
            if cases is not None and index >= cases:
                break
            if seconds is not None and now - start >= seconds:
                break
            case_seed = seed * CASE_STRIDE + index
            index += 1
            result = worker.run(case_seed, timeout)
            if result is None:
                alive = worker.proc.poll() is None
                worker.kill()
                what = (
                    f"hang: no result within {timeout:.0f} s"
                    if alive
                    else f"worker died (exit {worker.proc.returncode})"
                )
                tail = "".join(worker.stderr)[-1500:]
                result = Outcome(case_seed, kind, "finding", what, "", tail)
                worker = Worker(kind)
            summary.cases += 1
            summary.counts[result.outcome] += 1
            if result.outcome in ("finding", "harness_error"):
                summary.findings.append(result)
            elif result.detail:
                summary.details[f"{result.outcome}: {result.detail}"] += 1
            if progress is not None and now - last_progress > 30:
                last_progress = now
                summary.seconds = now - start
                progress(summary)
    finally:
        summary.seconds = time.perf_counter() - start
        worker.close()
    return summary


def replay(kind: str, case_seed: int) -> Outcome:
    """Run one case in this process (for debugging a finding)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"pk-fuzz-replay-{kind}-", dir=scratch_root()))
    try:
        target = TARGETS[kind](scratch / "samples")
        return run_case(target, case_seed, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=[*KINDS, "all"], default="all")
    parser.add_argument("--seconds", type=float, default=None, help="time budget per kind")
    parser.add_argument("--cases", type=int, default=None, help="case budget per kind (default 300)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=10.0, help="per-case timeout (a hang is a finding)")
    parser.add_argument("--replay", type=int, default=None, help="run one case seed in-process and print it")
    parser.add_argument("--json", default=None, help="write the summaries here")
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    kinds = list(KINDS) if args.kind == "all" else [args.kind]
    if args.replay is not None:
        result = replay(kinds[0], args.replay)
        print(json.dumps(dataclasses.asdict(result), indent=1))
        return 1 if result.is_finding else 0
    summaries = []
    for kind in kinds:
        summary = fuzz(
            kind,
            seed=args.seed,
            cases=args.cases,
            seconds=args.seconds,
            timeout=args.timeout,
            progress=lambda s: print(f"  ... {s.kind}: {s.cases} cases, {dict(s.counts)}", flush=True),
        )
        print(summary.render(), flush=True)
        summaries.append(summary)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {
                        "kind": s.kind,
                        "seed": s.seed,
                        "cases": s.cases,
                        "seconds": round(s.seconds, 2),
                        "cases_per_second": round(s.rate, 2),
                        "counts": dict(s.counts),
                        "findings": [dataclasses.asdict(f) for f in s.findings],
                    }
                    for s in summaries
                ],
                indent=1,
            )
        )
    return 1 if any(s.findings for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())

"""The bug zoo: realistic broken persistence code, each next to a correct counterpart.

Every function here is the kind of code that ships in ML and trading projects.
The broken ones are each caught by one persistkit fixture (see cases.py); the
correct ones must pass every fixture that applies to them (no false positives).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("zoo")


def fsync_dir(path):
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_json(path):
    with open(path) as f:
        return json.load(f)


# -- single-file saves --------------------------------------------------------------------------


def save_atomic(path, value):
    """Correct: unique temp in the same directory, fsync, rename, fsync the directory."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".save-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path)


def save_with_persistkit(path, value):
    """Correct: persistkit's atomic_write."""
    from persistkit.io import atomic_write

    atomic_write(path, json.dumps(value).encode())


def save_in_place(path, value):
    """BUG: truncates the only copy, then writes it (a crash in between leaves an empty file)."""
    with open(path, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())


def save_rename_no_fsync(path, value):
    """BUG: rename without fsyncing the new file first (ext4 zero-length file after power loss)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)
    fsync_dir(path)


def save_no_dir_fsync(path, value):
    """BUG: the rename itself is never made durable (no fsync of the directory)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_delete_first(path, value):
    """BUG: removes the old file before the new one exists."""
    if os.path.exists(path):
        os.unlink(path)
    save_atomic(path, value)


def save_swallowing_errors(path, value):
    """BUG: a failed save is logged and forgotten; the caller believes it worked."""
    try:
        save_atomic(path, value)
    except OSError as err:
        log.warning("could not save %s: %s", path, err)


def save_retrying_fsync(path, value):
    """BUG: retries a failed fsync, which can "succeed" after the kernel dropped the data (fsyncgate)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
        f.flush()
        try:
            os.fsync(f.fileno())
        except OSError:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path)


def save_leaking_fd(path, value):
    """BUG: on a write error the temp file's descriptor is never closed."""
    tmp = f"{path}.{os.getpid()}.tmp"
    f = open(tmp, "w")  # noqa: SIM115 - the bug
    try:
        f.write(json.dumps(value))
        f.flush()
        os.fsync(f.fileno())
    except OSError:
        os.unlink(tmp)
        raise
    f.close()
    os.replace(tmp, path)
    fsync_dir(path)


def save_fixed_temp_name(path, value):
    """BUG: every writer uses the same temp name; two concurrent saves write into one file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path)


# -- numpy ----------------------------------------------------------------------------------------


def save_array_in_place(path, array):
    """BUG: numpy.save straight onto the checkpoint."""
    np.save(path, array)


def save_array_atomic(path, array):
    """Correct: numpy.save into a temp file, fsync, rename, fsync the directory."""
    tmp = Path(f"{path}.{os.getpid()}.tmp.npy")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path)


def load_array(path):
    return np.load(path, allow_pickle=False)


# -- multi-file checkpoints -----------------------------------------------------------------------


def save_pair_separately(directory, step, weights):
    """BUG: weights and metadata are each written atomically, but not together."""
    save_array_atomic(os.path.join(directory, "weights.npy"), weights)
    save_atomic(os.path.join(directory, "meta.json"), {"step": step, "sum": float(weights.sum())})


def save_pair_atomically(directory, step, weights):
    """Correct: write a new versioned directory, then atomically switch a pointer file to it."""
    version = f"v{step:06d}"
    target = os.path.join(directory, version)
    os.makedirs(target, exist_ok=True)
    save_array_atomic(os.path.join(target, "weights.npy"), weights)
    save_atomic(os.path.join(target, "meta.json"), {"step": step, "sum": float(weights.sum())})
    fsync_dir(target)
    save_atomic(os.path.join(directory, "CURRENT.json"), {"version": version})


def load_pair(directory):
    pointer = os.path.join(directory, "CURRENT.json")
    base = os.path.join(directory, load_json(pointer)["version"]) if os.path.exists(pointer) else directory
    meta = load_json(os.path.join(base, "meta.json"))
    weights = load_array(os.path.join(base, "weights.npy"))
    return {"step": meta["step"], "meta_sum": meta["sum"], "weights": weights.tolist()}


# -- components (state_dict) ---------------------------------------------------------------------------


class Wallet:
    """Correct component."""

    def __init__(self):
        self.balance = 0
        self.history = []

    def deposit(self, amount):
        self.balance += amount
        self.history.append(amount)

    def state_dict(self):
        return {"balance": self.balance, "history": list(self.history)}

    def load_state_dict(self, state):
        self.balance = state["balance"]
        self.history = list(state["history"])


class ForgetfulWallet(Wallet):
    """BUG: state_dict forgets a field added later (the history)."""

    def state_dict(self):
        return {"balance": self.balance}

    def load_state_dict(self, state):
        self.balance = state["balance"]


class PriceBuffer:
    """Correct component holding a float32 window."""

    def __init__(self):
        self.window = np.zeros(8, dtype=np.float32)

    def state_dict(self):
        return {"window": self.window}

    def load_state_dict(self, state):
        self.window = state["window"]


class LossyPriceBuffer(PriceBuffer):
    """BUG: stores the window as a list (float32 becomes float64 and an ndarray becomes a list)."""

    def state_dict(self):
        return {"window": self.window.tolist()}

    def load_state_dict(self, state):
        self.window = np.asarray(state["window"])


class TradeHistory:
    """BUG: keeps every trade forever; the checkpoint grows without bound."""

    def __init__(self):
        self.trades = []

    def record(self, trade):
        self.trades.append(trade)

    def state_dict(self):
        return {"trades": list(self.trades)}

    def load_state_dict(self, state):
        self.trades = list(state["trades"])


class BoundedTradeHistory(TradeHistory):
    """Correct: only the last 100 trades are kept."""

    def __init__(self):
        self.trades = collections.deque(maxlen=100)

    def state_dict(self):
        return {"trades": list(self.trades)}

    def load_state_dict(self, state):
        self.trades = collections.deque(state["trades"], maxlen=100)


# -- loaders --------------------------------------------------------------------------------------------


def save_checksummed(path, value):
    """Correct writer for the checksummed format: JSON plus a CRC32 trailer line."""
    body = json.dumps(value, sort_keys=True)
    save_atomic_text(path, f"{body}\n{zlib.crc32(body.encode()):08x}\n")


def save_atomic_text(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".save-", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path)


class CorruptStateError(ValueError):
    pass


def load_checksummed(path):
    """Correct: refuses a file whose checksum does not match."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode()
        body, crc, rest = text.split("\n")
    except ValueError as err:
        raise CorruptStateError(f"{path}: malformed") from err
    if rest or crc != f"{zlib.crc32(body.encode()):08x}":
        raise CorruptStateError(f"{path}: checksum mismatch")
    return json.loads(body)


DEFAULTS = {"balance": 0, "positions": []}


def load_or_defaults(path):
    """BUG: any problem reading the state silently starts the bot from defaults."""
    try:
        return load_checksummed(path)
    except (OSError, ValueError):
        return dict(DEFAULTS)


def load_unchecked(path):
    """BUG: no integrity check: a flipped bit in a number loads as a different number."""
    with open(path) as f:
        return json.loads(f.readline())


# -- encryption -----------------------------------------------------------------------------------------


KEY = bytes(range(32))


class CounterNonceVault:
    """BUG: the nonce is a counter kept in memory; it restarts at 0 when the process restarts."""

    def __init__(self, key=KEY):
        self.aead = AESGCM(key)
        self.counter = 0

    def encrypt(self, plaintext):
        self.counter += 1
        nonce = self.counter.to_bytes(12, "big")
        return nonce + self.aead.encrypt(nonce, plaintext, None)


class RandomNonceVault:
    """Correct: a fresh random 96-bit nonce per message."""

    def __init__(self, key=KEY):
        self.aead = AESGCM(key)

    def encrypt(self, plaintext):
        nonce = os.urandom(12)
        return nonce + self.aead.encrypt(nonce, plaintext, None)

"""A plain app with its own persistence (no StateStore): a ``persistkit check`` target of the third shape.

    persistkit check persistkit.reference.wallet:open_wallet

``open_wallet(state_dir)`` loads ``wallet.json`` if it exists. Each ``step()`` is
one deposit with a unique id (the deposit count, saved with the balance in one
file); ``save()`` writes the file atomically (temp file, fsync, rename, fsync of
the directory) with a sha256 of its content, so damage is detected on load.
It does its own file I/O on purpose, as user code does: the battery observes
those writes, not persistkit's.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

__all__ = ["Wallet", "open_wallet"]

FILE = "wallet.json"


class Wallet:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        os.makedirs(state_dir, exist_ok=True)
        self.path = os.path.join(os.fspath(state_dir), FILE)
        self.balance = 0
        self.deposits: list[list[int]] = []  # [id, amount], newest last; the last 100 kept
        self.next_id = 0
        if os.path.exists(self.path):
            self.load()

    def step(self) -> dict[str, Any]:
        deposit = {"id": self.next_id, "amount": self.next_id % 5 + 1}
        self.next_id += 1
        self.balance += deposit["amount"]
        self.deposits = [*self.deposits[-99:], [deposit["id"], deposit["amount"]]]
        return deposit

    def snapshot(self) -> dict[str, Any]:
        return {"balance": self.balance, "deposits": self.deposits, "next_id": self.next_id}

    def save(self) -> None:
        body = json.dumps(self.snapshot(), sort_keys=True)
        data = json.dumps({"sha256": hashlib.sha256(body.encode()).hexdigest(), "state": body}).encode()
        tmp = self.path + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        dfd = os.open(os.path.dirname(self.path), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def load(self) -> None:
        with open(self.path, "rb") as f:
            raw = f.read()
        try:
            doc = json.loads(raw)
            body = doc["state"]
            ok = hashlib.sha256(body.encode()).hexdigest() == doc["sha256"]
            state = json.loads(body) if ok else None
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{self.path} is damaged ({err}); restore it from a backup") from err
        if state is None:
            raise ValueError(f"{self.path} is damaged (sha256 mismatch); restore it from a backup")
        self.balance, self.deposits, self.next_id = state["balance"], state["deposits"], state["next_id"]


def open_wallet(state_dir: str | os.PathLike[str]) -> Wallet:
    return Wallet(state_dir)

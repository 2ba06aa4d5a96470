"""``corruptions``: damaged copies of a file, and a check that loading them never silently succeeds.

Kinds of damage (SQLite's malformed-file tests, LevelDB's corruption tests):

* ``truncated``: cut at offsets 0, 1, the middle, one byte short, every 4 KiB
  boundary, plus seeded random offsets;
* ``bit-flipped``: one bit flipped in each of the first and last bytes and at
  seeded random positions;
* ``sector-trashed``: a 512-byte sector overwritten with random bytes or zeros;
* ``junk-appended``: one byte, a few random bytes, a 4 KiB block, or the file
  itself appended.

``corruptions.assert_detected(load)`` writes each damaged copy in place of the
original, calls ``load(path)``, and fails if a load returns data that differs
from what the pristine file loads to without raising (or warning: a reported
fallback to an older copy is an explicit, visible recovery). Loading equal data
despite the damage (junk past the end that is ignored, say) is fine.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from persistkit.testing.compare import first_difference
from persistkit.testing.intercept import real_open
from persistkit.testing.report import RECORDER, Recorder

__all__ = ["KINDS", "Corruption", "Corruptions", "damaged_copies"]

KINDS = ("truncated", "bit-flipped", "sector-trashed", "junk-appended")
SECTOR = 512


@dataclass(frozen=True)
class Corruption:
    """One damaged copy of ``path``: ``data`` replaces the file's bytes."""

    path: str
    kind: str
    description: str
    data: bytes

    def apply(self) -> None:
        """Write the damaged bytes in place of the file."""
        _write(self.path, self.data)


def _write(path: str, data: bytes) -> None:
    with real_open(path, "wb") as f:
        f.write(data)


def damaged_copies(
    data: bytes, *, samples: int = 16, seed: int = 0, kinds: tuple[str, ...] = KINDS
) -> Iterator[tuple[str, str, bytes]]:
    """(kind, description, damaged bytes) for ``data``; deterministic for a given seed."""
    rng = random.Random(seed)
    n = len(data)
    if "truncated" in kinds and n:
        cuts = {0, 1, n // 2, n - 1} | set(range(4096, n, 4096))
        cuts |= {rng.randrange(n) for _ in range(samples)}
        for cut in sorted(c for c in cuts if 0 <= c < n):
            yield "truncated", f"truncated to {cut} of {n} bytes", data[:cut]
    if "bit-flipped" in kinds and n:
        spots = {(0, 0), (n - 1, 7), (min(8, n - 1), 3), (n // 2, 5)}
        spots |= {(rng.randrange(n), rng.randrange(8)) for _ in range(samples)}
        for pos, bit in sorted(spots):
            flipped = bytearray(data)
            flipped[pos] ^= 1 << bit
            yield "bit-flipped", f"bit {bit} of byte {pos} flipped", bytes(flipped)
    if "sector-trashed" in kinds and n:
        sectors = (n + SECTOR - 1) // SECTOR
        chosen = sorted(
            {0, sectors - 1} | {rng.randrange(sectors) for _ in range(min(samples // 4 + 1, sectors))}
        )
        for s in chosen:
            start, end = s * SECTOR, min((s + 1) * SECTOR, n)
            for fill in ("random", "zeros"):
                trashed = bytearray(data)
                trashed[start:end] = rng.randbytes(end - start) if fill == "random" else bytes(end - start)
                if trashed != data:
                    yield (
                        "sector-trashed",
                        f"sector {s} (bytes {start}-{end}) overwritten with {fill}",
                        bytes(trashed),
                    )
    if "junk-appended" in kinds:
        for junk, what in (
            (b"\0", "one zero byte"),
            (rng.randbytes(17), "17 random bytes"),
            (rng.randbytes(4096), "a 4 KiB random block"),
            (data, "a second copy of the file"),
        ):
            yield "junk-appended", f"{what} appended", data + junk


class Corruptions:
    """The ``corruptions`` fixture.

    Example::

        def test_damage_is_detected(corruptions, tmp_path):
            path = tmp_path / "state.bin"
            save_state(path, {"balance": 100})
            for c in corruptions(path):          # iterate to inspect each damaged copy
                assert c.data != path.read_bytes() or c.kind == "junk-appended"
            corruptions.assert_detected(load_state)   # load_state(path) must raise or warn
    """

    def __init__(self, *, samples: int = 16, seed: int = 0, recorder: Recorder = RECORDER) -> None:
        self.samples = samples
        self.seed = seed
        self.recorder = recorder
        self.paths: list[str] = []

    def __call__(
        self, path: str | os.PathLike[str], *, kinds: tuple[str, ...] = KINDS, samples: int | None = None
    ) -> Iterator[Corruption]:
        """Register ``path`` and yield its damaged copies (the file itself is not modified)."""
        for kind in kinds:
            if kind not in KINDS:
                raise ValueError(f"unknown corruption kind {kind!r}; choose from {KINDS}")
        p = os.path.abspath(os.fspath(path))
        if p not in self.paths:
            self.paths.append(p)
        with real_open(p, "rb") as f:
            data = f.read()
        return (
            Corruption(p, kind, desc, damaged)
            for kind, desc, damaged in damaged_copies(
                data, samples=self.samples if samples is None else samples, seed=self.seed, kinds=kinds
            )
        )

    def assert_detected(
        self,
        load: Callable[[str], Any],
        *,
        paths: list[str | os.PathLike[str]] | None = None,
        raises: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        kinds: tuple[str, ...] = KINDS,
    ) -> int:
        """Load every damaged copy; fail on the first that loads different data silently.

        ``load(path)`` is called with the damaged file in place (the original is
        restored afterwards). ``raises``: the exception types that count as
        detection; any other exception fails the check (pass e.g.
        ``persistkit.IntegrityError`` to insist on typed errors). A warning
        (other than deprecation/resource warnings) during the load counts as a
        reported fallback. Returns the number of damaged copies tried.
        """
        targets = [os.path.abspath(os.fspath(p)) for p in paths] if paths is not None else list(self.paths)
        if not targets:
            raise ValueError("corruptions.assert_detected: call corruptions(path) first, or pass paths=[...]")
        tried = 0
        silent: list[str] = []
        wrong_type: list[str] = []
        try:
            for target in targets:
                with real_open(target, "rb") as f:
                    pristine = f.read()
                original = load(target)
                try:
                    for c in self(target, kinds=kinds):
                        tried += 1
                        c.apply()
                        with warnings.catch_warnings(record=True) as caught:
                            warnings.simplefilter("always")
                            try:
                                got = load(target)
                            except raises:
                                continue
                            except Exception as err:
                                wrong_type.append(f"{c.description}: {type(err).__name__}: {err}")
                                continue
                        reported = [
                            w
                            for w in caught
                            if not issubclass(
                                w.category, (DeprecationWarning, PendingDeprecationWarning, ResourceWarning)
                            )
                        ]
                        if reported:
                            continue
                        problem = first_difference(original, got, "load()")
                        if problem is not None:
                            silent.append(f"{os.path.basename(target)}: {c.description}: {problem}")
                finally:
                    _write(target, pristine)
        finally:
            self.recorder.add_run("corruptions", corruptions=tried, violations=len(silent) + len(wrong_type))
        if silent or wrong_type:
            lines = []
            if silent:
                lines.append(
                    f"corruptions: {len(silent)} of {tried} damaged copies loaded without an error or warning "
                    f"and returned different data (silent corruption). First: {silent[0]}"
                )
                lines += [f"  also: {s}" for s in silent[1:5]]
            if wrong_type:
                expected = (
                    raises.__name__ if isinstance(raises, type) else " or ".join(r.__name__ for r in raises)
                )
                lines.append(
                    f"corruptions: {len(wrong_type)} damaged copies raised something other than {expected}. "
                    f"First: {wrong_type[0]}"
                )
            raise AssertionError("\n".join(lines))
        return tried

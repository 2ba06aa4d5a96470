"""``corruptions``: damaged copies of a file, and a check that loading them never silently succeeds.

Kinds of damage (SQLite's malformed-file tests, LevelDB's corruption tests):

* ``truncated``: cut at offsets 0, 1, the middle, one byte short, every 4 KiB
  boundary, plus seeded random offsets;
* ``bit-flipped``: one bit flipped in each of the first and last bytes and at
  seeded random positions;
* ``sector-trashed``: a 512-byte sector overwritten with random bytes or zeros;
* ``junk-appended``: one byte, a few random bytes, a 4 KiB block, or the file
  itself appended.

``corruptions(path).assert_detected(load)`` (or ``corruptions.assert_detected(load)``
for every registered path) writes each damaged copy in place of the original,
calls ``load()`` (or ``load(path)``, when it takes an argument), and fails if a load
returns data that differs from what the pristine file loads to without raising
or reporting a recovery. A recovery counts only when it is announced with a
persistkit recovery warning (``StateRecoveredWarning``) or a warning class the
caller names with ``warns=``; any other warning is noise, not detection.
Loading equal data despite the damage (junk past the end that is ignored, say)
is fine. The pristine result is detached (arrays and tensors copied out of any
``mmap``, as ``safetensors.load_file`` and ``numpy.load(mmap_mode=...)`` return)
before the file is damaged, so the comparison never sees the damage on both sides.
"""

from __future__ import annotations

import copy
import inspect
import os
import random
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from persistkit.testing.compare import first_difference
from persistkit.testing.observe.intercept import real_open
from persistkit.testing.report import RECORDER, Recorder

__all__ = ["KINDS", "Corruption", "CorruptionSet", "Corruptions", "damaged_copies"]

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


WarningTypes = type[Warning] | tuple[type[Warning], ...]


def _recovery_warnings() -> tuple[type[Warning], ...]:
    from persistkit.state.store import StateRecoveredWarning

    return (StateRecoveredWarning,)


def _call_load(load: Callable[..., Any], path: str) -> Any:
    """``load(path)`` when ``load`` takes an argument, else ``load()`` (like crash_points/disk_faults)."""
    try:
        sig = inspect.signature(load)
    except (TypeError, ValueError):
        return load(path)
    try:
        sig.bind(path)
    except TypeError:
        return load()
    return load(path)


def _detach(value: Any) -> Any:
    """A deep copy that shares no memory with the file (mmap-backed arrays and tensors are copied)."""
    module = type(value).__module__.split(".")[0]
    if module == "numpy" and hasattr(value, "__array__") and hasattr(value, "shape"):
        import numpy as np

        return np.array(value, copy=True, subok=False)
    if module == "torch" and hasattr(value, "clone") and hasattr(value, "detach"):
        return value.detach().clone()
    if type(value) is dict:
        return {k: _detach(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_detach(v) for v in value)
    return _copy(value)


def _copy(value: Any) -> Any:
    try:
        return copy.deepcopy(value)
    except Exception:  # not copyable: compare against the object itself
        return value


class CorruptionSet:
    """The damaged copies of one file: iterate them, or ``.assert_detected(load)``."""

    def __init__(self, owner: Corruptions, path: str, kinds: tuple[str, ...], samples: int | None) -> None:
        self.owner = owner
        self.path = path
        self.kinds = kinds
        self.samples = samples

    def __iter__(self) -> Iterator[Corruption]:
        return self.owner._copies(self.path, self.kinds, self.samples)

    def assert_detected(
        self,
        load: Callable[..., Any],
        *,
        raises: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        warns: WarningTypes = (),
    ) -> int:
        """``Corruptions.assert_detected`` for this file and these kinds."""
        __tracebackhide__ = True
        return self.owner.assert_detected(
            load, paths=[self.path], raises=raises, kinds=self.kinds, warns=warns
        )


class Corruptions:
    """The ``corruptions`` fixture.

    Example::

        def test_damage_is_detected(corruptions, tmp_path):
            path = tmp_path / "state.bin"
            save_state(path, {"balance": 100})
            for c in corruptions(path):          # iterate to inspect each damaged copy
                assert c.data != path.read_bytes() or c.kind == "junk-appended"
            corruptions(path).assert_detected(lambda: load_state(path))   # must raise
    """

    def __init__(self, *, samples: int = 16, seed: int = 0, recorder: Recorder = RECORDER) -> None:
        self.samples = samples
        self.seed = seed
        self.recorder = recorder
        self.paths: list[str] = []

    def __call__(
        self, path: str | os.PathLike[str], *, kinds: tuple[str, ...] = KINDS, samples: int | None = None
    ) -> CorruptionSet:
        """Register ``path``; the result iterates its damaged copies (the file is not modified)
        and has ``.assert_detected(load)``."""
        __tracebackhide__ = True
        for kind in kinds:
            if kind not in KINDS:
                raise ValueError(f"unknown corruption kind {kind!r}; choose from {KINDS}")
        p = os.path.abspath(os.fspath(path))
        if p not in self.paths:
            self.paths.append(p)
        if not os.path.isfile(p):
            raise FileNotFoundError(f"corruptions: {p} is not a file; save it before corrupting it")
        return CorruptionSet(self, p, kinds, samples)

    def _copies(self, p: str, kinds: tuple[str, ...], samples: int | None) -> Iterator[Corruption]:
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
        load: Callable[..., Any],
        *,
        paths: Iterable[str | os.PathLike[str]] | None = None,
        raises: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        kinds: tuple[str, ...] = KINDS,
        warns: WarningTypes = (),
    ) -> int:
        """Load every damaged copy; fail on the first that loads different data silently.

        ``load()`` or ``load(path)`` is called with the damaged file in place (the
        original is restored afterwards). ``raises``: the exception types that count
        as detection; any other exception fails the check (pass e.g.
        ``persistkit.IntegrityError`` to insist on typed errors). A warning counts
        as a reported fallback only if it is a persistkit recovery warning
        (``StateRecoveredWarning``) or one of ``warns``. Returns the number of
        damaged copies tried.
        """
        __tracebackhide__ = True
        accepted = _recovery_warnings() + ((warns,) if isinstance(warns, type) else tuple(warns))
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
                original = _detach(_call_load(load, target))
                try:
                    for c in self._copies(target, kinds, None):
                        tried += 1
                        c.apply()
                        with warnings.catch_warnings(record=True) as caught:
                            warnings.simplefilter("always")
                            try:
                                got = _call_load(load, target)
                            except raises:
                                continue
                            except Exception as err:
                                wrong_type.append(f"{c.description}: {type(err).__name__}: {err}")
                                continue
                        reported = [w for w in caught if issubclass(w.category, accepted)]
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

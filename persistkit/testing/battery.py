"""The battery ``persistkit check`` runs against one target.

A TARGET is ``module:factory``, in one of three shapes (checked once, up front):

* **store app**: ``factory(state_dir, *, readonly=False, **store_kw)`` returns an
  app that keeps its state in a ``StateStore`` (``app.store``), does one unit of
  work per ``app.step()`` and may offer ``app.snapshot()`` (the reference bot's
  ``make_bot``). Without a ``readonly`` parameter, the battery reads a copy of the
  state directory instead (the app under test holds the writer lock);
* **plain app** (no StateStore): ``factory(state_dir)`` returns an object with
  ``save()``, ``step()`` and ``snapshot()``; the factory loads whatever
  ``state_dir`` holds. A step's work is durable once ``save()`` returns, so the
  battery's child process saves after each step that returns a mapping with an
  ``"id"`` and then acknowledges it. ``close()``, if present, releases resources
  without saving;
* **component**: ``factory()`` (no parameters) returns a Persistent component
  (``state_dict()``/``load_state_dict()``), which the battery keeps in a
  StateStore of its own.

Checks, in order: round-trip of the state, in-process lifecycle, SIGTERM, a
SIGKILL storm, crash points (process and power-loss models) of a save, disk
faults at every operation of a save, corruption of the saved files, and save
budgets. Each ends as pass, FAIL, or "no verdict" (it saw nothing it could
judge: never a pass), or is skipped on request (``Settings.skip``).

A plain app whose ``step()`` saves by itself (a step changed the state directory
while the battery profiled the app) is judged on those saves too: crash points
and disk faults run on ``save()`` and on "a step() that saves" (steps until one
changes the directory), and the budget times both. A ``save()`` that wrote
nothing is not a save: it is neither judged nor timed.

States are compared with ``persistkit.testing.compare`` (type-aware, mapping
order ignored), also across processes: the children write the state behind
every digest they print, and the SIGTERM check compares those states.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib
import inspect
import logging
import os
import re
import shutil
import signal
import stat
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from persistkit.units import size

__all__ = [
    "CHECKS",
    "DEFAULT_KILLS",
    "DEFAULT_TARGET",
    "Battery",
    "CheckResult",
    "NoVerdict",
    "Profile",
    "Settings",
    "Target",
    "TargetError",
    "check_slug",
    "child_main",
    "digest",
    "fingerprint",
    "read_snapshot",
    "warm_up",
    "write_snapshot",
]

DEFAULT_TARGET = "persistkit.reference.bot:make_bot"
DEFAULT_KILLS = 20  # the same default as the pytest plugin's --persistkit-kills

PROTOCOLS = """\
persistkit check needs TARGET = module:factory in one of these shapes:
  store app:  factory(state_dir, *, readonly=False, **store_kw) -> object with .store (a StateStore) and step()
  plain app:  factory(state_dir) -> object with save(), step() and snapshot() (loads what state_dir holds)
  component:  factory() -> a Persistent component (state_dict() and load_state_dict(state))"""


class TargetError(ValueError):
    """TARGET cannot be imported, or its factory fits none of the shapes in ``PROTOCOLS``."""


def digest(value: Any) -> str:
    """A fingerprint of a snapshot (tree-encoded, xxh3-128)."""
    import xxhash

    from persistkit.format import tree
    from persistkit.format.codecs import model_hook

    return str(xxhash.xxh3_128_hexdigest(tree.encode(value, model_hook=model_hook)))


def _state_of(comp: Any) -> Any:
    return dict(comp.state_dict()) if callable(getattr(comp, "state_dict", None)) else comp.__getstate__()


class App:
    """A target opened on a directory: ``step()``, ``save()``, ``snapshot()``, ``close()``, ``abandon()``.

    ``store`` is the StateStore of store apps and components, None for plain apps.
    """

    def __init__(self, obj: Any, store: Any, own_store: bool, *, cleanup: Callable[[], None] | None = None):
        self.obj = obj
        self.store = store
        self.own_store = own_store
        self.cleanup = cleanup

    def step(self) -> Any:
        step = getattr(self.obj, "step", None)
        return step() if callable(step) else None

    def save(self) -> Any:
        return self.store.save() if self.store is not None else self.obj.save()

    def snapshot(self) -> Any:
        snap = getattr(self.obj, "snapshot", None)
        if callable(snap):
            return snap()
        return {name: _state_of(comp) for name, comp in components(self.store).items()}

    def close(self) -> None:
        """A graceful shutdown: the final save, then resources released."""
        try:
            if self.store is not None:
                self.store.close()
            else:
                self.obj.save()
                self._release()
        finally:
            self._cleanup()

    def abandon(self) -> None:
        """Drop the app as a killed process would: no final save; locks released."""
        try:
            if self.store is not None:
                self.store.abandon()
            else:
                self._release()
        finally:
            self._cleanup()

    def read(self) -> Any:
        """``snapshot()``, then let go without saving (for readers)."""
        try:
            return self.snapshot()
        finally:
            self.abandon()

    def _release(self) -> None:
        close = getattr(self.obj, "close", None)
        if callable(close):
            close()

    def _cleanup(self) -> None:
        if self.cleanup is not None:
            cleanup, self.cleanup = self.cleanup, None
            cleanup()


class _Graceful:
    """What the in-process lifecycle sees of a plain app: ``close()`` saves first."""

    def __init__(self, app: App) -> None:
        self.app = app

    def step(self) -> Any:
        return self.app.step()

    def snapshot(self) -> Any:
        return self.app.snapshot()

    def close(self) -> None:
        self.app.close()


def components(store: Any) -> dict[str, Any]:
    """The components registered in a StateStore, by name."""
    return dict(store.components)


def _accepts(params: Mapping[str, inspect.Parameter], name: str) -> bool:
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class Target:
    """Resolves ``module:factory`` and opens it on a directory."""

    def __init__(self, spec: str) -> None:
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise TargetError(f"TARGET must look like 'package.module:factory', not {spec!r}\n{PROTOCOLS}")
        self.spec = spec
        self.module = module_name
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise TargetError(
                f"cannot import {module_name!r} for TARGET {spec!r}: {err}. persistkit check imports TARGET "
                f"with the current directory ({os.getcwd()}) on sys.path, as pytest does: run it from your "
                "project's root, or add the module's directory to PYTHONPATH"
            ) from err
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise TargetError(f"{module_name!r} has no callable {attr!r} (TARGET {spec!r})")
        self.factory: Callable[..., Any] = factory
        try:
            params = dict(inspect.signature(factory).parameters)
        except (TypeError, ValueError):
            params = {}
        self.component_factory = len(params) == 0
        self.takes_readonly = _accepts(params, "readonly")
        self.takes_store_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        # refined by validate(); child processes of store apps and components skip the probe
        self.kind = "component" if self.component_factory else "store app"
        self.validated = False

    # -- shapes -----------------------------------------------------------------------------------
    def validate(self, scratch: str) -> str:
        """Open the target once on an empty directory and decide its shape; one clear error if none fits."""
        where = os.path.join(scratch, "probe")
        os.makedirs(where, exist_ok=True)
        if self.component_factory:
            comp = self._call(where)
            if not (
                callable(getattr(comp, "state_dict", None))
                and callable(getattr(comp, "load_state_dict", None))
            ):
                raise TargetError(
                    f"{self.spec}() returned {type(comp).__name__}, which is not a Persistent component "
                    f"(it lacks state_dict()/load_state_dict()).\n{PROTOCOLS}"
                )
            self.kind = "component"
            self.validated = True
            return self.kind
        obj = self._call(where)
        try:
            store = getattr(obj, "store", None)
            if (
                store is not None
                and callable(getattr(store, "save", None))
                and hasattr(store, "components")
                and callable(getattr(store, "register", None))
            ):
                self.kind = "store app"
            elif all(callable(getattr(obj, m, None)) for m in ("save", "step", "snapshot")):
                self.kind = "plain app"
            else:
                missing = [m for m in ("save", "step", "snapshot") if not callable(getattr(obj, m, None))]
                raise TargetError(
                    f"{self.spec}(state_dir) returned {type(obj).__name__}, which has no .store (a StateStore) "
                    f"and lacks {', '.join(m + '()' for m in missing)} for a plain app.\n{PROTOCOLS}"
                )
        finally:
            with contextlib.suppress(Exception):
                App(obj, getattr(obj, "store", None) if self.kind == "store app" else None, False).abandon()
        self.validated = True
        return self.kind

    def _call(self, where: str, **kw: Any) -> Any:
        try:
            return self.factory() if self.component_factory else self.factory(where, **kw)
        except TargetError:
            raise
        except Exception as err:
            call = f"{self.spec}()" if self.component_factory else f"{self.spec}({where!r})"
            raise TargetError(
                f"{call} raised {type(err).__name__}: {err}\n{traceback.format_exc(limit=4)}"
            ) from err

    def make(self, state_dir: str, **store_kw: Any) -> Any:
        """What the factory returns (an app, or a bare component for zero-argument factories)."""
        if self.component_factory:
            return self.factory()
        if self.kind == "plain app":
            return self.factory(state_dir)
        if not self.takes_store_kw:
            store_kw = {k: v for k, v in store_kw.items() if k == "readonly" and self.takes_readonly}
        return self.factory(state_dir, **store_kw)

    def open(self, state_dir: str | os.PathLike[str], *, readonly: bool = False, **store_kw: Any) -> App:
        where = os.fspath(state_dir)
        kw = {"autosave_every": 0.0, **store_kw}
        if self.component_factory:
            from persistkit.state import StateStore

            comp = self.factory()
            own = StateStore(where, **({"readonly": True} if readonly else kw))
            own.register("component", comp)
            own.load()
            return App(comp, own, True)
        if self.kind == "plain app":
            return App(self.factory(where), None, False)
        if readonly and not self.takes_readonly:
            # The app under test may hold the writer lock: read a private copy instead.
            copy = tempfile.mkdtemp(prefix="persistkit-read-")
            shutil.rmtree(copy)
            shutil.copytree(where, copy, symlinks=True)
            try:
                obj = self.make(copy, **kw)
            except BaseException:
                shutil.rmtree(copy, ignore_errors=True)
                raise
            return App(obj, obj.store, False, cleanup=lambda: shutil.rmtree(copy, ignore_errors=True))
        obj = self.make(where, **({"readonly": True} if readonly else kw))
        return App(obj, obj.store, False)


# The checks, by the name --skip takes and the name the report shows.
CHECKS: tuple[tuple[str, str], ...] = (
    ("round-trip", "round-trip"),
    ("lifecycle", "lifecycle"),
    ("sigterm", "SIGTERM"),
    ("sigkill", "SIGKILL storm"),
    ("crash-points", "crash points"),
    ("disk-faults", "disk faults"),
    ("corruption", "corruption"),
    ("budgets", "budgets"),
)
_ALIASES = {"roundtrip": "round-trip", "storm": "sigkill", "sigkill-storm": "sigkill", "budget": "budgets"}


def check_slug(name: str) -> str:
    """The --skip name of a check, from either of its names (any case; spaces or dashes)."""
    key = re.sub(r"[\s_]+", "-", name.strip().lower())
    key = _ALIASES.get(key, key)
    slugs = [slug for slug, _ in CHECKS]
    if key not in slugs:
        raise ValueError(f"no check named {name!r}; choose from {', '.join(slugs)}")
    return key


PASS, FAIL, NO_VERDICT, SKIPPED = "pass", "FAIL", "no verdict", "skipped"


@dataclass
class Settings:
    steps: int = 300
    kills: int = DEFAULT_KILLS
    seed: int = 0
    samples: int = 4
    max_save_seconds: float = 1.0
    max_bytes: int = 64 * 1024 * 1024
    observe: str = "auto"  # crash points and disk faults: "auto", "syscalls" or "python"
    skip: tuple[str, ...] = ()  # check slugs (see CHECKS)
    exclude: tuple[str, ...] = ()  # globs of files the corruption check leaves alone


@dataclass
class CheckResult:
    name: str
    status: str  # PASS, FAIL, NO_VERDICT or SKIPPED
    figures: dict[str, Any] = field(default_factory=dict)
    detail: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what the verdict does not cover, and tips
    fault_log: list[str] = field(default_factory=list)  # persistkit's log lines while faults were injected

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "status": self.status,
            "passed": self.passed,
            "figures": self.figures,
            "detail": self.detail,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
            "fault_log": self.fault_log,
        }


class NoVerdict(AssertionError):
    """A check saw nothing it could judge: never a pass, and not a failure of the app either."""


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname.lower()}: {record.getMessage()}")


@contextlib.contextmanager
def _collect_logs() -> Iterator[list[str]]:
    """persistkit's log lines during a check (the injected faults' aftermath) go into its result, not onto stderr."""
    logger = logging.getLogger("persistkit")
    handler = _Collect()
    saved = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.propagate = saved


_HASHED_UP_TO = 1 << 20


def fingerprint(where: str) -> dict[str, tuple[int, int, int, int]]:
    """Every file under ``where``: (inode, size, mtime in ns, content hash). Two differ when anything was written.

    Files up to 1 MiB are hashed as well: a file rewritten with the same size within one tick of
    the file system's coarse clock (a SQLite page, a small JSON file) keeps its mtime.
    """
    import xxhash

    out: dict[str, tuple[int, int, int, int]] = {}
    for dirpath, _dirs, files in os.walk(where):
        for name in files:
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
                content = 0
                if st.st_size <= _HASHED_UP_TO and stat.S_ISREG(st.st_mode):
                    with open(full, "rb") as f:
                        content = xxhash.xxh3_64_intdigest(f.read())
            except OSError:
                continue
            out[os.path.relpath(full, where)] = (st.st_ino, st.st_size, st.st_mtime_ns, content)
    return out


@dataclass
class Profile:
    """What running the app's steps showed, before any check."""

    steps: int = 0
    ids: int = 0  # steps that returned a mapping with an "id" (acknowledged work)
    saving_steps: int = 0  # steps that changed the state directory: the app saves as it goes

    @property
    def saves_in_step(self) -> bool:
        return self.saving_steps > 0

    @property
    def save_every(self) -> int:
        """Steps between the app's own saves (rounded up)."""
        return -(-self.steps // self.saving_steps) if self.saving_steps else 0


def _excluded(rel: str, patterns: tuple[str, ...]) -> str | None:
    """The --exclude pattern matching ``rel`` (a path relative to the state directory), if any."""
    for pat in patterns:
        if fnmatch.fnmatch(rel, pat) or ("/" not in pat and fnmatch.fnmatch(os.path.basename(rel), pat)):
            return pat
    return None


def _sqlite_companion(path: str) -> str | None:
    """The SQLite database whose rollback journal, WAL or WAL index ``path`` is (None: it is not one)."""
    for suffix in ("-journal", "-wal", "-shm"):
        if path.endswith(suffix):
            db = path[: -len(suffix)]
            if os.path.isfile(db) and _is_sqlite(db):
                return db
    return None


def _is_sqlite(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _exclusion_risk(path: str, rel: str) -> str:
    if _is_sqlite(path):
        return (
            f"{rel} (SQLite) is not damaged by the corruption check: SQLite keeps no checksums, so a damaged "
            "page can load as different data without an error. The alternatives: a checksum VFS (cksumvfs), "
            "or a checksum your app stores and verifies per row"
        )
    return (
        f"{rel} is not damaged by the corruption check: damage to it may load as different data without "
        "an error"
    )


_ROOT_ADVICE = re.compile(r"\s*\(pass root=[^)]*\)|\s*Point root= at .*?allow_outside=\[[^\]]*\]\.")


def _no_verdict_text(message: str) -> str:
    """A fixture's no-verdict message in check's terms: check has no root=/allow_outside= options."""
    text = _ROOT_ADVICE.sub("", message)
    return (
        text + "\n(persistkit check judges the state_dir the factory is given: the app must keep its "
        "state there. To judge saves that write elsewhere, use the crash_points/disk_faults fixtures, "
        "whose root= and allow_outside= options cover them.)"
    )


class Battery:
    """Runs every check against ``target`` in a scratch directory (kept with ``keep=True``)."""

    def __init__(
        self, target: Target, settings: Settings, *, workdir: str | None = None, keep: bool = False
    ) -> None:
        self.target = target
        self.settings = settings
        self.keep = keep
        self._tmp = (
            tempfile.TemporaryDirectory(prefix="persistkit-check-") if workdir is None and not keep else None
        )
        if workdir is None:
            workdir = (
                self._tmp.name if self._tmp is not None else tempfile.mkdtemp(prefix="persistkit-check-")
            )
        self.workdir = workdir
        self.results: list[CheckResult] = []
        self.excluded: dict[str, str] = {}  # relative path -> the risk that leaves unchecked
        self._profile: Profile | None = None
        self._notes: list[str] = []
        if not target.validated:
            try:
                target.validate(self.dir("probe"))
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        lc = getattr(self, "_lc", None)
        if lc is not None:
            lc.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def dir(self, name: str) -> str:
        path = os.path.join(self.workdir, name)
        os.makedirs(path, exist_ok=True)
        return path

    def checks(self) -> list[tuple[str, str, Callable[[], dict[str, Any]]]]:
        run = {
            "round-trip": self.check_roundtrip,
            "lifecycle": self.check_lifecycle,
            "sigterm": self.check_sigterm,
            "sigkill": self.check_sigkill,
            "crash-points": self.check_crash_points,
            "disk-faults": self.check_disk_faults,
            "corruption": self.check_corruption,
            "budgets": self.check_budgets,
        }
        return [(slug, name, run[slug]) for slug, name in CHECKS]

    def run(self, on_result: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
        from persistkit.testing.observe import NotJudgeable

        for slug, name, check in self.checks():
            if slug in self.settings.skip:
                result = CheckResult(name, SKIPPED, detail=f"skipped (--skip {slug}): not verified")
                self._finish(result, on_result)
                continue
            start = time.perf_counter()
            self._notes = []
            with _collect_logs() as lines:
                try:
                    figures = check()
                    result = CheckResult(name, PASS, figures)
                except NoVerdict as err:
                    result = CheckResult(name, NO_VERDICT, getattr(err, "figures", {}), str(err))
                except NotJudgeable as err:
                    detail = _no_verdict_text(str(err))
                    result = CheckResult(name, NO_VERDICT, getattr(err, "figures", {}), detail)
                except AssertionError as err:
                    result = CheckResult(name, FAIL, getattr(err, "figures", {}), str(err))
                except Exception as err:
                    result = CheckResult(
                        name, FAIL, {}, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}"
                    )
            result.notes = list(self._notes)
            result.fault_log = list(lines)
            result.seconds = time.perf_counter() - start
            self._finish(result, on_result)
        return self.results

    def _finish(self, result: CheckResult, on_result: Callable[[CheckResult], None] | None) -> None:
        self.results.append(result)
        if on_result is not None:
            on_result(result)

    def note(self, text: str) -> None:
        self._notes.append(text)

    # -- helpers --------------------------------------------------------------------------------
    def _steps(self, app: App, n: int) -> None:
        for _ in range(n):
            app.step()

    def _reader(self, where: str) -> Callable[[], Any]:
        def load() -> Any:
            return self.target.open(where, readonly=True).read()

        return load

    @contextlib.contextmanager
    def _app(self, where: str) -> Iterator[App]:
        app = self.target.open(where)
        try:
            yield app
        finally:
            with contextlib.suppress(Exception):
                app.abandon()

    @staticmethod
    def _bytes(where: str) -> int:
        total = 0
        for dirpath, _, files in os.walk(where):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_size
        return total

    @property
    def plain(self) -> bool:
        return self.target.kind == "plain app"

    def profile(self) -> Profile:
        """Run the app's steps once on a scratch directory: does it acknowledge work, does it save as it goes?"""
        if self._profile is not None:
            return self._profile
        where = self.dir("profile")
        prof = Profile()
        with self._app(where) as app:
            before = fingerprint(where)
            for _ in range(self.settings.steps):
                result = app.step()
                prof.steps += 1
                prof.ids += isinstance(result, Mapping) and "id" in result
                if self.plain:
                    now = fingerprint(where)
                    if now != before:
                        prof.saving_steps += 1
                        before = now
        self._profile = prof
        return prof

    def _step_save(self, app: App, where: str) -> int:
        """The app's own save: step() until a step changes the state directory; the number of steps."""
        limit = max(self.profile().save_every * 3, 10)
        before = fingerprint(where)
        for n in range(1, limit + 1):
            app.step()
            if fingerprint(where) != before:
                return n
        raise NoVerdict(
            f"no step() changed the state directory in {limit} steps, although steps saved while the app was "
            "profiled; the app's own saves could not be judged"
        )

    def _unsaved_steps(self, app: App, where: str, n: int) -> None:
        """``n`` steps, then more until the last one saved nothing, so that save() has work to write."""
        self._steps(app, n)
        if not (self.plain and self.profile().saves_in_step):
            return
        for _ in range(self.profile().save_every + 1):
            before = fingerprint(where)
            app.step()
            if fingerprint(where) == before:
                return

    def _saves(self, app: App, where: str) -> list[tuple[Callable[[], Any], bool]]:
        """The saves to judge, each with whether it is the save() call: save(), and the app's own."""
        saves: list[tuple[Callable[[], Any], bool]] = [(app.save, True)]
        if self.plain and self.profile().saves_in_step:
            saves.append((lambda: self._step_save(app, where), False))
        return saves

    # -- the checks ------------------------------------------------------------------------------
    def check_roundtrip(self) -> dict[str, Any]:
        from persistkit.testing.compare import first_difference
        from persistkit.testing.roundtrip import Roundtrip

        where = self.dir("roundtrip")
        if self.plain:
            with self._app(where) as app:
                self._steps(app, self.settings.steps)
                app.save()
                expected = app.snapshot()
            problem = first_difference(expected, self._reader(where)(), "snapshot()")
            if problem is not None:
                raise AssertionError(f"saved, then opened again: {problem}")
            return {"bytes": size(self._bytes(where))}
        rt = Roundtrip(self.dir("roundtrip-files"))
        with self._app(where) as app:
            self._steps(app, self.settings.steps)
            checkpoint = app.store.save()
            comps = components(app.store)
            for name, comp in comps.items():
                try:
                    rt(_state_of(comp), via="envelope")
                except AssertionError as err:
                    raise AssertionError(f"component {name!r}: {err}") from None
        return {"components": len(comps), "bytes": size(checkpoint.total_bytes)}

    def check_lifecycle(self) -> dict[str, Any]:
        from persistkit.testing.lifecycle import Lifecycle

        lc = Lifecycle(self.dir("lifecycle"), seed=self.settings.seed)

        def factory(where: str) -> Any:
            if self.plain:
                return _Graceful(self.target.open(where))
            return self.target.make(where, autosave_every=0.0)

        report = lc(factory, steps=max(self.settings.steps // 2, 1), cycles=2, snapshot=None)
        return {"steps": report.steps, "restarts": report.restarts}

    def _child(self) -> dict[str, Any]:
        """How to run the target in a child process (fork server target, argv, preload, warm-up)."""
        snaps = ["--snapshots", self.dir("snapshots")]
        base = ["--target", self.target.spec, "--state-dir", "{state_dir}", *snaps]
        child = "persistkit.testing.battery:child_main" if self.plain else "persistkit.testing.child:main"
        preload = [self.target.module, "persistkit.testing.child", "persistkit.testing.battery"]
        if self.target.spec == DEFAULT_TARGET:
            preload.insert(0, "persistkit.reference.preload")
        return {
            "target": child,
            "preload": preload,
            "warm": [("persistkit.testing.battery:warm_up", ["--target", self.target.spec])],
            "argv": [*base, "--steps", "10000000", "--autosave-every", "0.2"],
            "restart_argv": [*base, "--steps", "0"],
        }

    def _lifecycle(self) -> Any:
        from persistkit.testing.lifecycle import Lifecycle

        if not hasattr(self, "_lc"):
            self._lc = Lifecycle(self.dir("processes"), kills=self.settings.kills, seed=self.settings.seed)
        return self._lc

    def _snapshot_difference(self, saved: str, restarted: str) -> str | None:
        """Compare the states two children wrote beside their digests (type-aware, mapping order ignored)."""
        from persistkit.testing.compare import first_difference

        snaps = self.dir("snapshots")
        try:
            expected = read_snapshot(os.path.join(snaps, saved))
            got = read_snapshot(os.path.join(snaps, restarted))
        except OSError as err:
            return f"the child wrote no snapshot to compare ({err})"
        return first_difference(expected, got, "state")

    def check_sigterm(self) -> dict[str, Any]:
        # Wait for ACKs as long as a start-up may take when the app acknowledges work (a loaded
        # machine delays them); an app that acknowledges nothing is signalled after half a second.
        wait = 120.0 if self.profile().ids else 0.5
        report = self._lifecycle().subprocess(
            state_dir=self.dir("sigterm"),
            kills=0,
            sigterm=True,
            term_wait=wait,
            state_difference=self._snapshot_difference,
            **self._child(),
        )
        return {"exit after SIGTERM": f"{report.sigterm_exit_seconds:.2f} s", "acks": report.acks}

    def check_sigkill(self) -> dict[str, Any]:
        where = self.dir("sigkill")
        verify = self._verify_acks if not self.plain else self._verify_unique
        start = time.perf_counter()
        try:
            report = self._lifecycle().subprocess(
                state_dir=where, sigterm=False, verify=verify, **self._child()
            )
        except AssertionError as err:
            raise AssertionError(self._explain_repeat(str(err), where)) from None
        seconds = time.perf_counter() - start
        rec = report.recovery_seconds
        if report.acks == 0:
            self.note(
                f"the app acknowledged no work (no step() returned a mapping with an 'id'), so the storm proved "
                f"only that it restarted after {report.kills} SIGKILLs; it proved nothing about acknowledged "
                "work. Return {'id': ...} from step() for work that must survive a crash"
            )
        if report.kills and seconds > 30:
            per = seconds / report.kills
            self.note(
                f"the storm took {seconds:.0f} s ({per:.1f} s per kill); --kills N sets how many SIGKILLs "
                f"(now {report.kills})"
            )
        return {
            "kills": report.kills,
            "acks": report.acks,
            "restart to READY (max)": f"{max(rec):.2f} s" if rec else "-",
        }

    _REPEAT = re.compile(
        r"ids must be unique; id (\S+) was acknowledged twice, by run #(\d+) and again by run #(\d+)"
    )

    def _explain_repeat(self, message: str, where: str) -> str:
        """An id acknowledged by two runs: say whether ids repeat, or work was lost and redone."""
        found = self._REPEAT.search(message)
        if found is None:
            return message
        ack, first, again = found.groups()
        tail = message[message.find("\n") :] if "\n" in message else ""
        copies = None
        if self.target.kind != "plain app":
            with contextlib.suppress(Exception):
                copies = sum(ids.count(ack) for ids in self._logged_ids(where)[0].values())
        if copies is not None and copies >= 2:
            return (
                f"ids must be unique; id {ack} was acknowledged twice (by run #{first}, and again by run #{again}), "
                f"and the store's logs hold {copies} records with that id, so nothing was lost. Derive ids from "
                "durable state: a counter kept in a checkpointed component goes back after a SIGKILL, so rebuild "
                "it from the journaled log on load (see reconcile() in the README)" + tail
            )
        return (
            f"id {ack} was acknowledged by run #{first}, and again by run #{again} after a restart: either the "
            f"restart lost that acknowledged work and redid it, or ids are not unique (ids must be unique; id {ack} "
            "was acknowledged twice). Make each acknowledged id unique and durable before it is printed"
            + tail
        )

    def _logged_ids(self, where: str) -> tuple[dict[str, list[str]], bool]:
        """Per journaled log of the store, the ids of its id-bearing records (oldest first);
        and whether any of those logs is full (so it may have evicted acknowledged ids)."""
        from persistkit.state import BoundedLog

        app = self.target.open(where, readonly=True)
        out: dict[str, list[str]] = {}
        full = False
        try:
            for name, comp in components(app.store).items():
                if not isinstance(comp, BoundedLog):
                    continue
                found = [str(item["id"]) for item in comp if isinstance(item, Mapping) and "id" in item]
                if found:
                    out[name] = found
                    full = full or (comp.maxlen is not None and len(comp) >= comp.maxlen)
        finally:
            app.abandon()
        return out, full

    @staticmethod
    def _verify_unique(where: str, acks: list[Any]) -> None:
        """Every acknowledged id was acknowledged once (a repeat within one run is no loss, but no id)."""
        runs: dict[str, int] = {}
        for ack in acks:
            if ack.id in runs:
                raise AssertionError(
                    f"ids must be unique; id {ack.id} was acknowledged twice (by run #{runs[ack.id]}, and again "
                    f"by run #{ack.run}). persistkit check tells lost work by repeated ids, so make each "
                    "acknowledged id unique"
                )
            runs[ack.id] = ack.run

    def _verify_acks(self, where: str, acks: list[Any]) -> None:
        """After the storm, the store's journaled logs hold every ACK-ed id they have not evicted.

        Logs are FIFO: once an acknowledged id is present, every id acknowledged after it
        must be present too. Ids acknowledged before the oldest one present may have been
        pushed out of a full BoundedLog (by later records, acknowledged or not); in a log
        that is not full, every acknowledged id must be present.
        """
        self._verify_unique(where, acks)
        logs, full = self._logged_ids(where)
        present = {i for ids in logs.values() for i in ids}
        if not present:
            return
        order: list[str] = []
        seen: set[str] = set()
        for ack in acks:
            if ack.id not in seen:
                seen.add(ack.id)
                order.append(ack.id)
        first_present = next((n for n, i in enumerate(order) if i in present), len(order))
        missing = [i for i in order[first_present:] if i not in present]
        if not full:
            missing = [i for i in order if i not in present]
        if missing:
            raise AssertionError(
                f"{len(missing)} acknowledged ids missing from the store's logs: {missing[:10]}"
                + ("" if full else " (the logs are not full, so none was evicted)")
            )

    def _after_save(self, app: App, n: int, what: str) -> None:
        """The app keeps working after a judged save, as a live process would."""
        try:
            self._steps(app, n)
        except Exception as err:
            raise AssertionError(
                f"step() raised {type(err).__name__}: {err} after {what} had put the state directory back to "
                "the state after the save: an app that keeps files open (a database connection) needs them "
                "left in place\n" + traceback.format_exc(limit=4)
            ) from err

    def check_crash_points(self) -> dict[str, Any]:
        from persistkit.testing.crash_points import CrashPoints

        where = self.dir("crash")
        figures: dict[str, Any] = {}
        more = max(self.settings.steps // 10, 1)
        operations: dict[str, int] = {}
        observer = None
        with self._app(where) as app:
            self._steps(app, self.settings.steps)
            app.save()
            cp = CrashPoints(where)
            for save, is_call in self._saves(app, where):
                prefix = "" if is_call else "step() save: "
                for model in ("process", "power-loss"):
                    if is_call:
                        self._unsaved_steps(app, where, more)
                    wrote: list[bool] = []
                    try:
                        report = cp(
                            self._noting(save, where, wrote),
                            self._reader(where),
                            model=model,
                            observe=self.settings.observe,
                        )
                    except AssertionError as err:
                        if is_call and wrote == [False] and self.profile().saves_in_step:
                            self.note(
                                "save() wrote nothing after the app's own save; judged on its own saves"
                            )
                            break
                        if not is_call:
                            err.args = (f"judging a step() that saves (the app's own save): {err}",)
                        err.figures = figures  # type: ignore[attr-defined]
                        raise
                    figures[f"{prefix}{model} states"] = report.states
                    operations[f"{prefix}operations"] = len(report.operations)
                    observer = report.observer
                    self._after_save(app, 1, "crash points")
        if observer is None:
            raise NoVerdict("no save wrote anything to the state directory: nothing to judge")
        return {**figures, **operations, "observer": observer}

    @staticmethod
    def _noting(save: Callable[[], Any], where: str, wrote: list[bool]) -> Callable[[], Any]:
        def run() -> Any:
            before = fingerprint(where)
            try:
                return save()
            finally:
                wrote.append(fingerprint(where) != before)

        return run

    def check_disk_faults(self) -> dict[str, Any]:
        from persistkit.testing.compare import first_difference
        from persistkit.testing.disk_faults import DiskFaults

        where = self.dir("faults")
        with self._app(where) as app:
            self._steps(app, self.settings.steps)
            app.save()
        more = max(self.settings.steps // 20, 1)
        figures: dict[str, Any] = {}
        live: list[App] = []

        def setup() -> App:
            app = self.target.open(where)
            try:
                self._unsaved_steps(app, where, more)
            except BaseException:
                app.abandon()
                raise
            live[:] = [app]
            return app

        def same_as_live(value: Any) -> bool:
            # a save that advances the state (a step) is retried with the next step: what loads
            # must be the app's state once the retry returned
            return first_difference(live[0].snapshot(), value) is None

        faults = DiskFaults(where)
        kinds: list[tuple[str, Callable[[Any], Any], Callable[[Any], bool] | None]] = [
            ("save()", lambda app: app.save(), None)
        ]
        if self.plain and self.profile().saves_in_step:
            kinds.append(("step() save", lambda app: self._step_save(app, where), same_as_live))
        for label, save, after_retry in kinds:
            prefix = "" if label == "save()" else "step() save: "
            try:
                report = faults(
                    save,
                    self._reader(where),
                    setup=setup,
                    teardown=lambda app: app.abandon(),
                    rotate_errnos=True,
                    observe=self.settings.observe,
                    after_retry=after_retry,
                )
            except AssertionError as err:
                if label != "save()":
                    err.args = (f"judging a step() that saves (the app's own save): {err}",)
                err.figures = figures  # type: ignore[attr-defined]
                raise
            figures.update(
                {
                    f"{prefix}faults": report.fired,
                    f"{prefix}operations": len(report.operations),
                    f"{prefix}raised": report.raised,
                    "observer": report.observer,
                }
            )
        return figures

    def _saved_files(self, where: str) -> list[str]:
        if self.plain:
            return sorted(
                os.path.join(dirpath, name) for dirpath, _, names in os.walk(where) for name in names
            )
        from persistkit.state import generations as gens

        committed, _ = gens.list_generations(where)
        newest = os.path.join(where, gens.gen_name(committed[-1]))
        return [os.path.join(where, gens.CURRENT)] + [
            os.path.join(newest, name) for name in sorted(os.listdir(newest)) if not name.endswith(".journal")
        ]

    def check_corruption(self) -> dict[str, Any]:
        from persistkit.errors import PersistkitError
        from persistkit.testing.corruptions import Corruptions

        where = self.dir("corrupt")
        with self._app(where) as app:
            for _ in range(3):  # a few generations to fall back to
                self._steps(app, max(self.settings.steps // 3, 1))
                app.save()
        files = []
        for path in self._saved_files(where):
            rel = os.path.relpath(path, where)
            db = _sqlite_companion(path)
            if db is not None:
                # SQLite reads its journal/WAL only when a transaction needs recovering: damage to an
                # idle companion changes nothing by design. It is the database's own: judged with it.
                self.note(
                    f"{rel}: SQLite's companion of {os.path.basename(db)}, damaged with the database, not alone"
                )
                continue
            pattern = _excluded(rel, self.settings.exclude)
            if pattern is None:
                files.append(path)
            else:
                self.excluded[rel] = _exclusion_risk(path, rel)
                self.note(f"excluded by --exclude {pattern}: {self.excluded[rel]}")
        matched = set(self.excluded)
        for pattern in self.settings.exclude:
            if not any(_excluded(rel, (pattern,)) for rel in matched):
                self.note(f"--exclude {pattern} matched no saved file")
        if not files:
            raise NoVerdict(
                "every saved file was excluded (--exclude), so no damaged copy was tried; to leave the check "
                "out on purpose, pass --skip corruption"
            )
        reader = self._reader(where)
        corrupt = Corruptions(samples=self.settings.samples, seed=self.settings.seed)
        for path in files:
            corrupt(path)
        # persistkit's own stores must raise its typed errors; a plain app may raise anything
        raises: type[BaseException] = Exception if self.plain else PersistkitError
        try:
            tried = corrupt.assert_detected(lambda _path: reader(), raises=raises)
        except AssertionError as err:
            sqlite = [os.path.relpath(p, where) for p in files if _is_sqlite(p)]
            named = [rel for rel in sqlite if rel in str(err)]
            if named:
                raise AssertionError(
                    f"{err}\nTo accept the risk for a SQLite file instead, leave it out of this check: "
                    + " ".join(f"--exclude {rel}" for rel in named)
                ) from None
            raise
        return {
            "files": len(files),
            "corruptions": tried,
            **({"excluded": len(self.excluded)} if self.excluded else {}),
        }

    def check_budgets(self) -> dict[str, Any]:
        from persistkit.testing.budget import Budget, check_budget, measure

        where = self.dir("budget")
        if self.plain:
            return self._plain_budgets(where)
        with self._app(where) as app, measure() as fs:
            for _ in range(5):
                self._steps(app, max(self.settings.steps // 5, 1))
                app.save()
        secs = [s.seconds for s in fs.saves]
        files = fs.files()
        if not secs:
            raise NoVerdict("5 save() calls wrote no checkpoint (each was skipped), so no save was timed")
        figures = {
            "saves": len(secs),
            "save median": f"{statistics.median(secs) * 1000:.1f} ms",
            "save max": f"{max(secs) * 1000:.1f} ms",
            "largest file": size(max(files.values())) if files else "-",
            "bytes": size(sum(files.values())),
        }
        problems = check_budget(fs, Budget(self.settings.max_bytes, self.settings.max_save_seconds))
        if problems:
            err = AssertionError("budget exceeded: " + "; ".join(problems[:5]))
            err.figures = figures  # type: ignore[attr-defined]
            raise err
        return figures

    def _plain_budgets(self, where: str) -> dict[str, Any]:
        """Time the saves that wrote something: save() calls, and the steps in which the app saved itself.

        A save() that changed nothing in the state directory is not a save and is not timed; a
        step that changed it is timed whole (its work included: the app's save is inside it).
        """
        saves: list[tuple[str, float]] = []
        idle = 0

        def timed_step(app: App) -> bool:
            before = fingerprint(where)
            start = time.perf_counter()
            app.step()
            took = time.perf_counter() - start
            if fingerprint(where) == before:
                return False
            saves.append(("step()", took))
            return True

        with self._app(where) as app:
            for _ in range(5):
                saved = False
                for _ in range(max(self.settings.steps // 5, 1)):
                    saved = timed_step(app)
                for _ in range(self.profile().save_every if saved else 0):
                    if not timed_step(app):
                        break  # unsaved work again: save() has something to write
                before = fingerprint(where)
                start = time.perf_counter()
                app.save()
                took = time.perf_counter() - start
                if fingerprint(where) != before:
                    saves.append(("save()", took))
                else:
                    idle += 1
        if idle:
            self.note(f"{idle} of 5 save() calls wrote nothing and were not timed")
        if not saves:
            raise NoVerdict(
                "no save() call and no step() wrote anything to the state directory, so no save was timed"
            )
        sizes = {path: os.lstat(path).st_size for path in self._saved_files(where)}
        secs = [took for _, took in saves]
        calls = sum(kind == "save()" for kind, _ in saves)
        figures = {
            "saves": len(secs),
            **({"of which steps": len(secs) - calls} if calls != len(secs) else {}),
            "save median": f"{statistics.median(secs) * 1000:.1f} ms",
            "save max": f"{max(secs) * 1000:.1f} ms",
            "largest file": size(max(sizes.values())) if sizes else "-",
            "bytes": size(sum(sizes.values())),
        }
        problems = [
            f"{os.path.relpath(p, where)} reached {n:,} bytes > max_bytes={self.settings.max_bytes:,}"
            for p, n in sizes.items()
            if n > self.settings.max_bytes
        ]
        slowest_kind, slowest = max(saves, key=lambda s: s[1])
        if slowest > self.settings.max_save_seconds:
            what = "save()" if slowest_kind == "save()" else "a step() that saved"
            problems.append(
                f"{what} took {slowest:.3f} s > max_save_seconds={self.settings.max_save_seconds:g}"
            )
        if problems:
            err = AssertionError("budget exceeded: " + "; ".join(problems[:5]))
            err.figures = figures  # type: ignore[attr-defined]
            raise err
        return figures


# -- snapshots beside the digests, so that states are compared, not fingerprints ---------------------


def write_snapshot(directory: str, value: Any) -> str:
    """Store ``value`` (tree-encoded) under its digest in ``directory``; return the digest."""
    from persistkit.format import tree
    from persistkit.format.codecs import model_hook

    data = tree.encode(value, model_hook=model_hook)
    import xxhash

    name = str(xxhash.xxh3_128_hexdigest(data))
    path = os.path.join(directory, name)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return name


def read_snapshot(path: str) -> Any:
    from persistkit.format import tree
    from persistkit.format.codecs import decode_member

    with open(path, "rb") as f:
        data = f.read()
    return tree.decode(data, model_resolver=lambda codec, payload: decode_member(codec, payload), source=path)


def warm_up(argv: list[str]) -> None:
    """In the fork server, before any fork: open TARGET on a scratch directory, step, save and read it.

    The lazily imported parts of the app's libraries (torch's optimizers, sklearn's
    estimators) are loaded here once, so each restarted child costs a fork, not an import.
    torch, if the app uses it, is limited to one thread: thread pools do not survive fork().
    """
    parser = argparse.ArgumentParser(prog="persistkit check warm-up")
    parser.add_argument("--target", required=True)
    args = parser.parse_args(argv)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    target = Target(args.target)
    with tempfile.TemporaryDirectory(prefix="persistkit-warm-") as scratch:
        kind = target.validate(scratch)
        where = os.path.join(scratch, "app")
        app = target.open(where)
        try:
            for _ in range(3):
                app.step()
            app.save()
            digest(app.snapshot())
        finally:
            app.abandon()
        target.kind = kind
        target.open(where, readonly=True).read()


# -- the child process of a plain app ---------------------------------------------------------------


def _write(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write(2) per line: never interleaved on a pipe


def child_main(argv: list[str] | None = None) -> int:
    """Run a plain app and speak the lifecycle line protocol (READY, ACK, SAVED, DONE).

    A step that returns a mapping with an ``"id"`` is saved, then acknowledged. SIGTERM
    (or SIGINT) finishes the current step, saves, prints ``SAVED`` and exits 0. With
    ``--snapshots DIR`` the state behind each printed digest is written to ``DIR/<digest>``.
    """
    parser = argparse.ArgumentParser(prog="persistkit check (plain app child)")
    parser.add_argument("--target", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--autosave-every", type=float, default=300.0)
    parser.add_argument("--snapshots", default=None)
    args = parser.parse_args(argv)
    target = Target(args.target)
    target.kind = "plain app"
    app = target.open(args.state_dir)

    def fingerprint_of(snapshot: Any) -> str:
        return digest(snapshot) if args.snapshots is None else write_snapshot(args.snapshots, snapshot)

    stop: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop.append(signum))
    saves = 0
    _write("READY 0")
    last = time.monotonic()
    for _ in range(args.steps):
        result = app.step()
        if isinstance(result, Mapping) and "id" in result:
            app.save()
            saves += 1
            last = time.monotonic()
            _write(f"ACK {result['id']}")
        elif time.monotonic() - last >= args.autosave_every:
            app.save()
            saves += 1
            last = time.monotonic()
        if stop:
            app.save()
            _write(f"SAVED {saves + 1} {fingerprint_of(app.snapshot())}")
            app.abandon()
            return 0
    app.save()
    snapshot = app.snapshot()
    app.abandon()
    _write(f"DONE {fingerprint_of(snapshot)}")
    return 0

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
budgets.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import logging
import os
import re
import shutil
import signal
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from persistkit.units import size

__all__ = [
    "DEFAULT_KILLS",
    "DEFAULT_TARGET",
    "Battery",
    "CheckResult",
    "Settings",
    "Target",
    "TargetError",
    "child_main",
    "digest",
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


@dataclass
class Settings:
    steps: int = 300
    kills: int = DEFAULT_KILLS
    seed: int = 0
    samples: int = 4
    max_save_seconds: float = 1.0
    max_bytes: int = 64 * 1024 * 1024
    observe: str = "auto"  # crash points and disk faults: "auto", "syscalls" or "python"


@dataclass
class CheckResult:
    name: str
    passed: bool
    figures: dict[str, Any] = field(default_factory=dict)
    detail: str = ""
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # persistkit's log lines while faults were injected

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "passed": self.passed,
            "figures": self.figures,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
            "warnings": self.warnings,
        }


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname.lower()}: {record.getMessage()}")


@contextlib.contextmanager
def _collect_logs() -> Iterator[list[str]]:
    """persistkit's warnings during a check go into its result, not onto stderr."""
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

    def checks(self) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
        return [
            ("round-trip", self.check_roundtrip),
            ("lifecycle", self.check_lifecycle),
            ("SIGTERM", self.check_sigterm),
            ("SIGKILL storm", self.check_sigkill),
            ("crash points", self.check_crash_points),
            ("disk faults", self.check_disk_faults),
            ("corruption", self.check_corruption),
            ("budgets", self.check_budgets),
        ]

    def run(self, on_result: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
        for name, check in self.checks():
            start = time.perf_counter()
            with _collect_logs() as lines:
                try:
                    figures = check()
                    result = CheckResult(name, True, figures)
                except AssertionError as err:
                    result = CheckResult(name, False, getattr(err, "figures", {}), str(err))
                except Exception as err:
                    result = CheckResult(
                        name, False, {}, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}"
                    )
            result.warnings = list(lines)
            if lines:
                result.figures["logged warnings"] = len(lines)
            result.seconds = time.perf_counter() - start
            self.results.append(result)
            if on_result is not None:
                on_result(result)
        return self.results

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

    # -- the checks ------------------------------------------------------------------------------
    def check_roundtrip(self) -> dict[str, Any]:
        from persistkit.testing.compare import first_difference
        from persistkit.testing.roundtrip import Roundtrip

        where = self.dir("roundtrip")
        if self.target.kind == "plain app":
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
            if self.target.kind == "plain app":
                return _Graceful(self.target.open(where))
            return self.target.make(where, autosave_every=0.0)

        report = lc(factory, steps=max(self.settings.steps // 2, 1), cycles=2, snapshot=None)
        return {"steps": report.steps, "restarts": report.restarts}

    def _child(self) -> dict[str, Any]:
        """How to run the target in a child process (fork server target, argv, preload)."""
        if self.target.spec == DEFAULT_TARGET:
            return {
                "target": "persistkit.reference.bot:main",
                "preload": ["persistkit.reference.preload"],
                "argv": ["--state-dir", "{state_dir}", "--steps", "10000000", "--autosave-every", "0.2"],
                "restart_argv": ["--state-dir", "{state_dir}", "--steps", "0"],
            }
        base = ["--target", self.target.spec, "--state-dir", "{state_dir}"]
        child = "persistkit.testing.battery:child_main" if self.target.kind == "plain app" else None
        return {
            "target": child or "persistkit.testing.child:main",
            "preload": [self.target.module, "persistkit.testing.child", "persistkit.testing.battery"],
            "argv": [*base, "--steps", "10000000", "--autosave-every", "0.2"],
            "restart_argv": [*base, "--steps", "0"],
        }

    def _lifecycle(self) -> Any:
        from persistkit.testing.lifecycle import Lifecycle

        if not hasattr(self, "_lc"):
            self._lc = Lifecycle(self.dir("processes"), kills=self.settings.kills, seed=self.settings.seed)
        return self._lc

    def check_sigterm(self) -> dict[str, Any]:
        report = self._lifecycle().subprocess(
            state_dir=self.dir("sigterm"), kills=0, sigterm=True, term_wait=0.5, **self._child()
        )
        return {"exit after SIGTERM": f"{report.sigterm_exit_seconds:.2f} s", "acks": report.acks}

    def check_sigkill(self) -> dict[str, Any]:
        where = self.dir("sigkill")
        verify = self._verify_acks if self.target.kind != "plain app" else self._verify_unique
        try:
            report = self._lifecycle().subprocess(
                state_dir=where, sigterm=False, verify=verify, **self._child()
            )
        except AssertionError as err:
            raise AssertionError(self._explain_repeat(str(err), where)) from None
        rec = report.recovery_seconds
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

    def check_crash_points(self) -> dict[str, Any]:
        from persistkit.testing.crash_points import CrashPoints

        where = self.dir("crash")
        figures: dict[str, Any] = {}
        with self._app(where) as app:
            self._steps(app, self.settings.steps)
            app.save()
            cp = CrashPoints(where)
            for model in ("process", "power-loss"):
                self._steps(app, max(self.settings.steps // 10, 1))
                try:
                    report = cp(app.save, self._reader(where), model=model, observe=self.settings.observe)
                except AssertionError as err:
                    err.figures = figures  # type: ignore[attr-defined]
                    raise
                figures[f"{model} states"] = report.states
            figures["operations"] = len(report.operations)
            figures["observer"] = report.observer
        return figures

    def check_disk_faults(self) -> dict[str, Any]:
        from persistkit.testing.disk_faults import DiskFaults

        where = self.dir("faults")
        with self._app(where) as app:
            self._steps(app, self.settings.steps)
            app.save()
        more = max(self.settings.steps // 20, 1)

        def setup() -> App:
            app = self.target.open(where)
            try:
                self._steps(app, more)
            except BaseException:
                app.abandon()
                raise
            return app

        report = DiskFaults(where)(
            lambda app: app.save(),
            self._reader(where),
            setup=setup,
            teardown=lambda app: app.abandon(),
            rotate_errnos=True,
            observe=self.settings.observe,
        )
        return {
            "faults": report.fired,
            "operations": len(report.operations),
            "raised": report.raised,
            "observer": report.observer,
        }

    def _saved_files(self, where: str) -> list[str]:
        if self.target.kind == "plain app":
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
        files = self._saved_files(where)
        reader = self._reader(where)
        corrupt = Corruptions(samples=self.settings.samples, seed=self.settings.seed)
        for path in files:
            corrupt(path)
        # persistkit's own stores must raise its typed errors; a plain app may raise anything
        raises: type[BaseException] = Exception if self.target.kind == "plain app" else PersistkitError
        tried = corrupt.assert_detected(lambda _path: reader(), raises=raises)
        return {"files": len(files), "corruptions": tried}

    def check_budgets(self) -> dict[str, Any]:
        from persistkit.testing.budget import Budget, check_budget, measure

        where = self.dir("budget")
        if self.target.kind == "plain app":
            return self._plain_budgets(where)
        with self._app(where) as app, measure() as fs:
            for _ in range(5):
                self._steps(app, max(self.settings.steps // 5, 1))
                app.save()
        secs = [s.seconds for s in fs.saves]
        files = fs.files()
        figures = {
            "saves": len(secs),
            "save median": f"{statistics.median(secs) * 1000:.1f} ms" if secs else "-",
            "save max": f"{max(secs) * 1000:.1f} ms" if secs else "-",
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
        secs: list[float] = []
        with self._app(where) as app:
            for _ in range(5):
                self._steps(app, max(self.settings.steps // 5, 1))
                start = time.perf_counter()
                app.save()
                secs.append(time.perf_counter() - start)
        sizes = {path: os.lstat(path).st_size for path in self._saved_files(where)}
        figures = {
            "saves": len(secs),
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
        if max(secs) > self.settings.max_save_seconds:
            problems.append(
                f"save() took {max(secs):.3f} s > max_save_seconds={self.settings.max_save_seconds:g}"
            )
        if problems:
            err = AssertionError("budget exceeded: " + "; ".join(problems[:5]))
            err.figures = figures  # type: ignore[attr-defined]
            raise err
        return figures


# -- the child process of a plain app ---------------------------------------------------------------


def _write(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write(2) per line: never interleaved on a pipe


def child_main(argv: list[str] | None = None) -> int:
    """Run a plain app and speak the lifecycle line protocol (READY, ACK, SAVED, DONE).

    A step that returns a mapping with an ``"id"`` is saved, then acknowledged. SIGTERM
    (or SIGINT) finishes the current step, saves, prints ``SAVED`` and exits 0.
    """
    parser = argparse.ArgumentParser(prog="persistkit check (plain app child)")
    parser.add_argument("--target", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--autosave-every", type=float, default=300.0)
    args = parser.parse_args(argv)
    target = Target(args.target)
    target.kind = "plain app"
    app = target.open(args.state_dir)
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
            _write(f"SAVED {saves + 1} {digest(app.snapshot())}")
            app.abandon()
            return 0
    app.save()
    snapshot = app.snapshot()
    app.abandon()
    _write(f"DONE {digest(snapshot)}")
    return 0

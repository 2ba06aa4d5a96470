"""The battery ``persistkit check`` runs against one target.

A TARGET is ``module:factory``. Either

* ``factory(state_dir, *, readonly=False, **store_kw)`` returns an app that keeps
  its state in a ``StateStore`` (``app.store``), steps with ``app.step()`` and
  may offer ``app.snapshot()`` (the reference bot's ``make_bot``); or
* ``factory()`` (no parameters) returns a Persistent component, which the
  battery keeps in a StateStore of its own.

Checks, in order: round-trip of every component's state, in-process
lifecycle, SIGTERM, a SIGKILL storm, crash points (process and power-loss
models) of a checkpoint, disk faults at every operation of a checkpoint,
corruption of the newest checkpoint's files, and save budgets.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_TARGET", "Battery", "CheckResult", "Settings", "Target", "digest"]

DEFAULT_TARGET = "persistkit.reference.bot:make_bot"


def digest(value: Any) -> str:
    """A fingerprint of a snapshot (tree-encoded, xxh3-128)."""
    import xxhash

    from persistkit.format import tree
    from persistkit.format.codecs import model_hook

    return str(xxhash.xxh3_128_hexdigest(tree.encode(value, model_hook=model_hook)))


class App:
    """A target opened on a directory: ``store``, ``step()``, ``snapshot()``, ``close()``, ``abandon()``."""

    def __init__(self, obj: Any, store: Any, own_store: bool) -> None:
        self.obj = obj
        self.store = store
        self.own_store = own_store

    def step(self) -> Any:
        step = getattr(self.obj, "step", None)
        return step() if callable(step) else None

    def snapshot(self) -> Any:
        snap = getattr(self.obj, "snapshot", None)
        if callable(snap):
            return snap()
        out: dict[str, Any] = {}
        for name, comp in components(self.store).items():
            out[name] = (
                dict(comp.state_dict())
                if callable(getattr(comp, "state_dict", None))
                else comp.__getstate__()
            )
        return out

    def close(self) -> None:
        self.store.close()

    def abandon(self) -> None:
        """Drop the app as a killed process would: no final save; locks released."""
        self.store._abandon()

    def read(self) -> Any:
        """``snapshot()``, then close (for read-only apps)."""
        try:
            return self.snapshot()
        finally:
            self.store.close()


def components(store: Any) -> dict[str, Any]:
    """The components registered in a StateStore, by name."""
    return {name: reg.component for name, reg in store._components.items()}


class Target:
    """Resolves ``module:factory`` and opens it on a directory."""

    def __init__(self, spec: str) -> None:
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise ValueError(f"TARGET must look like 'package.module:factory', not {spec!r}")
        self.spec = spec
        self.module = module_name
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"cannot import {module_name!r} for TARGET {spec!r}: {err}") from err
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise ValueError(f"{module_name!r} has no callable {attr!r} (TARGET {spec!r})")
        self.factory: Callable[..., Any] = factory
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        self.component_factory = len(params) == 0

    def make(self, state_dir: str, **store_kw: Any) -> Any:
        """What the factory returns (an app, or a bare component for zero-argument factories)."""
        if self.component_factory:
            return self.factory()
        try:
            return self.factory(state_dir, **store_kw)
        except TypeError:
            if not store_kw:
                raise
            return self.factory(state_dir)

    def open(self, state_dir: str | os.PathLike[str], *, readonly: bool = False, **store_kw: Any) -> App:
        where = os.fspath(state_dir)
        kw = {"autosave_every": 0.0, **store_kw}
        if readonly:
            kw = {"readonly": True}
        if self.component_factory:
            from persistkit.state import StateStore

            comp = self.factory()
            own = StateStore(where, **kw)
            own.register("component", comp)
            own.load()
            return App(comp, own, True)
        obj = self.make(where, **kw)
        store: Any = getattr(obj, "store", None)
        if store is None:
            raise TypeError(
                f"{self.spec} returned {type(obj).__name__}, which has no .store; return an app with a StateStore "
                "as .store, or make the factory take no arguments and return a Persistent component"
            )
        return App(obj, store, False)


@dataclass
class Settings:
    steps: int = 300
    kills: int = 25
    seed: int = 0
    samples: int = 4
    max_save_seconds: float = 1.0
    max_bytes: int = 64 * 1024 * 1024


@dataclass
class CheckResult:
    name: str
    passed: bool
    figures: dict[str, Any] = field(default_factory=dict)
    detail: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "passed": self.passed,
            "figures": self.figures,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


class Battery:
    """Runs every check against ``target`` in a scratch directory."""

    def __init__(self, target: Target, settings: Settings, *, workdir: str | None = None) -> None:
        self.target = target
        self.settings = settings
        self._tmp = tempfile.TemporaryDirectory(prefix="persistkit-check-") if workdir is None else None
        self.workdir = workdir if workdir is not None else self._tmp.name  # type: ignore[union-attr]
        self.results: list[CheckResult] = []

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
            try:
                figures = check()
                result = CheckResult(name, True, figures)
            except AssertionError as err:
                result = CheckResult(name, False, getattr(err, "figures", {}), str(err))
            except Exception as err:
                result = CheckResult(
                    name, False, {}, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}"
                )
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

    # -- the checks ------------------------------------------------------------------------------
    def check_roundtrip(self) -> dict[str, Any]:
        from persistkit.testing.roundtrip import Roundtrip

        rt = Roundtrip(self.dir("roundtrip-files"))
        with self._app(self.dir("roundtrip")) as app:
            self._steps(app, self.settings.steps)
            checkpoint = app.store.save()
            comps = components(app.store)
            for name, comp in comps.items():
                state = (
                    dict(comp.state_dict())
                    if callable(getattr(comp, "state_dict", None))
                    else comp.__getstate__()
                )
                try:
                    rt(state, via="envelope")
                except AssertionError as err:
                    raise AssertionError(f"component {name!r}: {err}") from None
        return {"components": len(comps), "bytes": checkpoint.total_bytes}

    def check_lifecycle(self) -> dict[str, Any]:
        from persistkit.testing.lifecycle import Lifecycle

        lc = Lifecycle(self.dir("lifecycle"), seed=self.settings.seed)
        report = lc(
            lambda where: self.target.make(where, autosave_every=0.0),
            steps=max(self.settings.steps // 2, 1),
            cycles=2,
            snapshot=None,
        )
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
        return {
            "target": "persistkit.testing.child:main",
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
        report = self._lifecycle().subprocess(
            state_dir=where, sigterm=False, verify=self._verify_acks, **self._child()
        )
        rec = report.recovery_seconds
        return {
            "kills": report.kills,
            "acks": report.acks,
            "restart to READY (max)": f"{max(rec):.2f} s" if rec else "-",
        }

    def _verify_acks(self, where: str, acks: list[Any]) -> None:
        """After the storm, the store's journaled logs hold every ACK-ed id they have room for.

        A BoundedLog keeps its newest ``maxlen`` items, so the newest acknowledged ids
        (as many as the logs holding id-bearing records can keep) must all be present.
        """
        from persistkit.state import BoundedLog

        app = self.target.open(where, readonly=True)
        try:
            ids: set[str] = set()
            capacity = 0
            for comp in components(app.store).values():
                if not isinstance(comp, BoundedLog):
                    continue
                found = [str(item["id"]) for item in comp if isinstance(item, Mapping) and "id" in item]
                if found:
                    ids.update(found)
                    capacity += comp.maxlen if comp.maxlen is not None else len(found)
        finally:
            app.close()
        if not capacity:
            return
        newest_first: list[str] = []
        for ack in reversed(acks):
            if ack.id not in newest_first:
                newest_first.append(ack.id)
            if len(newest_first) >= capacity:
                break
        missing = [i for i in newest_first if i not in ids]
        if missing:
            raise AssertionError(
                f"{len(missing)} acknowledged ids missing from the store's logs: {sorted(missing, key=len)[:10]}"
            )

    def check_crash_points(self) -> dict[str, Any]:
        from persistkit.testing.crash_points import CrashPoints

        where = self.dir("crash")
        figures: dict[str, Any] = {}
        with self._app(where) as app:
            self._steps(app, self.settings.steps)
            app.store.save()
            cp = CrashPoints(where)
            for model in ("process", "power-loss"):
                self._steps(app, max(self.settings.steps // 10, 1))
                try:
                    report = cp(app.store.save, self._reader(where), model=model)
                except AssertionError as err:
                    err.figures = figures  # type: ignore[attr-defined]
                    raise
                figures[f"{model} states"] = report.states
            figures["operations"] = len(report.operations)
        return figures

    def check_disk_faults(self) -> dict[str, Any]:
        from persistkit.testing.disk_faults import DiskFaults

        where = self.dir("faults")
        with self._app(where) as app:
            self._steps(app, self.settings.steps)
            app.store.save()
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
            lambda app: app.store.save(),
            self._reader(where),
            setup=setup,
            teardown=lambda app: app.abandon(),
            rotate_errnos=True,
        )
        return {"faults": report.fired, "operations": len(report.operations), "raised": report.raised}

    def check_corruption(self) -> dict[str, Any]:
        from persistkit.errors import PersistkitError
        from persistkit.state import generations as gens
        from persistkit.testing.corruptions import Corruptions

        where = self.dir("corrupt")
        with self._app(where) as app:
            for _ in range(3):  # a few generations to fall back to
                self._steps(app, max(self.settings.steps // 3, 1))
                app.store.save()
        committed, _ = gens.list_generations(where)
        newest = os.path.join(where, gens.gen_name(committed[-1]))
        files = [os.path.join(where, gens.CURRENT)] + [
            os.path.join(newest, name) for name in sorted(os.listdir(newest)) if not name.endswith(".journal")
        ]
        reader = self._reader(where)
        corrupt = Corruptions(samples=self.settings.samples, seed=self.settings.seed)
        for path in files:
            corrupt(path)
        tried = corrupt.assert_detected(lambda _path: reader(), raises=PersistkitError)
        return {"files": len(files), "corruptions": tried}

    def check_budgets(self) -> dict[str, Any]:
        from persistkit.testing.budget import Budget, check_budget, measure

        where = self.dir("budget")
        with self._app(where) as app, measure() as fs:
            for _ in range(5):
                self._steps(app, max(self.settings.steps // 5, 1))
                app.store.save()
        secs = [s.seconds for s in fs.saves]
        files = fs.files()
        figures = {
            "saves": len(secs),
            "save median": f"{statistics.median(secs) * 1000:.1f} ms" if secs else "-",
            "save max": f"{max(secs) * 1000:.1f} ms" if secs else "-",
            "largest file": f"{max(files.values()):,} B" if files else "-",
            "bytes": sum(files.values()),
        }
        problems = check_budget(fs, Budget(self.settings.max_bytes, self.settings.max_save_seconds))
        if problems:
            err = AssertionError("budget exceeded: " + "; ".join(problems[:5]))
            err.figures = figures  # type: ignore[attr-defined]
            raise err
        return figures

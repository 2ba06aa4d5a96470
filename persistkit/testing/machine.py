"""``PersistenceMachine``: a Hypothesis state machine that tries to make a component lose state.

Subclass it with a component ``factory`` and a ``mutate`` method; Hypothesis
then runs random programs of these rules against an in-memory model of what
the store must give back:

* ``mutate``: your method changes the live component (draw what you need from ``data``);
* ``save``: checkpoint; the model remembers the saved state;
* ``crash``: the process dies without a final save (``kill -9``); on restart the
  component must equal the last saved state;
* ``restart``: graceful shutdown and restart; the component must equal its
  state at shutdown;
* ``corrupt``: after a shutdown, one bit of the newest checkpoint file is
  flipped; the restart must either raise a typed ``PersistkitError`` or fall
  back, with a warning, to the previous saved state. Never silently wrong.

Example::

    from hypothesis import strategies as st
    from persistkit.testing import PersistenceMachine

    class WalletMachine(PersistenceMachine):
        factory = Wallet                      # Wallet() -> a Persistent component

        def mutate(self, wallet, data):
            wallet.deposit(data.draw(st.integers(0, 100)))

    TestWallet = WalletMachine.TestCase
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from persistkit.testing.compare import first_difference, live_state
from persistkit.testing.fs import Snapshot

__all__ = ["PersistenceMachine"]

COMPONENT = "component"


class PersistenceMachine(RuleBasedStateMachine):
    """Base class: set ``factory`` and override ``mutate``; see the module docstring."""

    factory: ClassVar[Callable[[], Any] | None] = None
    store_options: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="persistkit-machine-")
        self.store: Any = None
        self.component: Any = None
        self.generations: dict[int, Any] = {}  # the state committed in each generation
        self.restarts = 0
        self._open()

    # -- what subclasses provide -------------------------------------------------------------
    def make_component(self) -> Any:
        factory = type(self).factory
        if factory is None:
            raise TypeError(
                f"{type(self).__name__}: set factory = <zero-argument callable returning the component>"
            )
        return factory()

    def mutate(self, component: Any, data: st.DataObject) -> None:
        raise NotImplementedError(f"{type(self).__name__}: override mutate(self, component, data)")

    def snapshot(self, component: Any) -> Any:
        """A comparable copy of the live component (``persistkit.testing.compare.live_state``):
        its attributes, deep-copied, so a ``state_dict`` that forgets a field is caught.
        Override this to leave out transient attributes (caches, locks)."""
        return live_state(component)

    # -- plumbing ---------------------------------------------------------------------------------
    def _open(self) -> tuple[Any, list[warnings.WarningMessage]]:
        """Open the store and load the component; returns the LoadReport and any warnings."""
        from persistkit.state import StateStore

        self.component = self.make_component()
        store = StateStore(
            self.directory, **{"autosave_every": 0, "keep_generations": 3, **self.store_options}
        )
        try:
            store.register(COMPONENT, self.component)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                report = store.load()
        except BaseException:
            store.abandon()
            raise
        self.store = store
        # load() may commit a checkpoint itself (first start, after a recovery)
        self._committed(store.generation)
        return report, list(caught)

    def _committed(self, generation: int | None) -> None:
        if generation is not None and generation not in self.generations:
            self.generations[generation] = self.snapshot(self.component)

    @property
    def latest(self) -> Any:
        return self.generations[max(self.generations)]

    def _check(self, expected: Any, what: str) -> None:
        problem = first_difference(expected, self.snapshot(self.component), "component")
        if problem is not None:
            raise AssertionError(f"after {what}, the component differs from the model: {problem}")

    def _is_log(self) -> bool:
        from persistkit.state import BoundedLog

        return isinstance(self.component, BoundedLog)

    def teardown(self) -> None:
        if self.store is not None:
            self.store.abandon()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- rules --------------------------------------------------------------------------------------
    @rule(data=st.data())
    def mutate_component(self, data: st.DataObject) -> None:
        self.mutate(self.component, data)

    @rule()
    def save(self) -> None:
        checkpoint = self.store.save()
        if not checkpoint.skipped:
            self._committed(checkpoint.generation)

    @rule()
    def crash(self) -> None:
        """Die like ``kill -9``: no final save; a journaled log keeps every append."""
        current = self.snapshot(self.component)
        expected = current if self._is_log() else self.latest
        self.store.abandon()
        self.store = None
        self._check_open(expected, "a crash and restart")

    def _check_open(self, expected: Any, what: str) -> None:
        self._open()
        self.restarts += 1
        self._check(expected, what)

    def _close(self) -> Any:
        current = self.snapshot(self.component)
        checkpoint = self.store.close()
        self.store = None
        if checkpoint is not None and not checkpoint.skipped:
            self.generations[checkpoint.generation] = current
        return current

    @rule()
    def restart(self) -> None:
        current = self._close()
        self._check_open(current, "a graceful restart")

    @precondition(lambda self: not self._is_log())
    @rule(data=st.data())
    def corrupt(self, data: st.DataObject) -> None:
        """Flip one bit of the newest checkpoint's component file, then restart."""
        from persistkit.errors import PersistkitError
        from persistkit.state import generations as gens

        current = self._close()
        committed, _ = gens.list_generations(self.directory)
        newest_n = committed[-1]
        newest = os.path.join(self.directory, gens.gen_name(newest_n), gens.component_file(COMPONENT))
        intact = Snapshot.take(self.directory)
        with open(newest, "rb") as f:
            pristine = f.read()
        position = data.draw(st.integers(0, len(pristine) * 8 - 1), label="bit to flip")
        damaged = bytearray(pristine)
        damaged[position // 8] ^= 1 << (position % 8)
        with open(newest, "wb") as f:
            f.write(bytes(damaged))
        what = f"flipping bit {position} of {gens.gen_name(newest_n)}/{gens.component_file(COMPONENT)}"
        try:
            report, caught = self._open()
        except PersistkitError:
            # Detected and refused (no older copy to fall back to): undo the damage and go on.
            intact.materialize(self.directory)
            self._open()
            self._check(current, "repairing a detected corruption")
            return
        self.restarts += 1
        if report.generation == newest_n:
            self._check(current, f"{what} (loaded without complaint)")
            return
        if not caught:
            raise AssertionError(
                f"after {what}, the store silently fell back to generation {report.generation}: "
                "a fallback must be reported"
            )
        if report.generation not in self.generations:
            raise AssertionError(
                f"after {what}, the store loaded generation {report.generation}, never committed"
            )
        self._check(self.generations[report.generation], f"{what} (reported fallback)")

"""Model-based test: a StateStore against an in-memory model (Hypothesis RuleBasedStateMachine).

Rules: mutate, append, save, autosave (a save from another thread, as the
autosave thread does it), crash (the process dies: ``abandon`` then reopen),
restart (clean close then reopen), save or append under an injected I/O fault
(then crash, or carry on once the fault clears), corrupt a file of the newest
checkpoint, and a read-only observer.

What the model knows: every non-log component returns to the newest
*committed* checkpoint after a crash (non-log changes are only durable once
saved), while every journaled append survives (``sync="always"``), bounded by
``maxlen``. A damaged newest checkpoint falls back to the one before it, with
one warning and a quarantined copy; the journals chain, so no append is lost.
Every checkpoint the model expects is looked up by generation number.

A save that fails is a crash as far as the disk goes: its generation may stay
behind (its removal failed too) until the next writer removes it. CURRENT is
what says it was never committed, so while CURRENT is readable it is never
loaded; once CURRENT is destroyed, one newer than every committed generation
is indistinguishable from a commit whose CURRENT was lost, and the store may
load it (the "new state" of an interrupted save, reported). The store accepts
no append while such a generation exists, so taking it loses none.
"""

from __future__ import annotations

import copy
import errno
import os
import shutil
import tempfile
import threading
import warnings

import pytest
from conftest import Counter, Pair, open_store
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from persistkit.errors import IntegrityError, PersistIOError
from persistkit.io import current_fs, use_fs
from persistkit.state import BoundedLog, StateStore
from persistkit.state import generations as gens
from persistkit.state.store import StateRecoveredWarning
from persistkit.testing.fs.faultfs import Fault, FaultFS

MAXLEN = 5  # conftest.open_store registers BoundedLog(5)
items = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=6),
    st.dictionaries(st.sampled_from("abc"), st.integers(0, 9), max_size=2),
    # uniform rows, like trades: the log may store them column-wise
    st.fixed_dictionaries(
        {"id": st.integers(0, 10**6), "pnl": st.floats(-1e6, 1e6), "side": st.sampled_from("LS")}
    ),
)


def components(parts):
    """The non-log state, as plain data."""
    return {"counter": parts["counter"].state_dict(), "pair": parts["pair"].__getstate__()}


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="pk-machine-")
        self.dir = os.path.join(self.tmp, "store")
        self.live = {"counter": {"value": 0, "history": []}, "pair": {"a": 0, "b": "x"}}
        self.log: list = []
        self.checkpoints: dict[int, dict] = {}  # generation -> the non-log state it committed
        self.appends_refused = False  # a failed save left no journal open: appends must be refused
        self.unpruned = False  # a failed save may leave extra generations until the next save
        self.leftovers: dict[int, dict] = {}  # generation of a failed save left on disk -> its state
        self.store = None
        self.reopen()

    # -- helpers ----------------------------------------------------------------
    def reopen(self, *, expect_fallback_to: int | None = None, **kw):
        """Open the store as a restarted process would; check exactly what it loaded."""
        self.appends_refused = False
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.store, self.parts, self.report = open_store(self.dir, **kw)
        fallbacks = [w for w in caught if issubclass(w.category, StateRecoveredWarning)]
        assert len(fallbacks) == len(caught), [str(w.message) for w in caught]
        assert len(fallbacks) == (1 if self.report.failures else 0)
        if expect_fallback_to is not None:
            assert self.report.generation == expect_fallback_to and self.report.recovered
            assert f"fell back to {gens.gen_name(expect_fallback_to)}" in str(fallbacks[0].message)
        self.check_loaded()
        # a writable load may checkpoint at once (first run, replayed journal, recovery)
        self.checkpoints[self.store.generation] = copy.deepcopy(self.live)

    def check_loaded(self):
        assert components(self.parts) == self.live, f"report: {self.report.summary()}"
        assert list(self.parts["log"]) == self.log

    def committed_generations(self):
        return gens.list_generations(self.dir)[0]

    def history(self):
        """The committed generations CURRENT lists (the only ones a load may fall back to)."""
        current = gens.read_current(self.dir, key=None)
        assert current is not None
        return current["history"]

    def in_force(self):
        """The generation CURRENT names on disk: what a restarted process loads."""
        current = gens.read_current(self.dir, key=None)
        assert current is not None
        return current["generation"]

    def commit(self, checkpoint):
        """Record a save that returned; it also finishes any failed save's leftovers."""
        assert checkpoint.generation == self.store.generation == self.in_force()
        self.appends_refused = self.unpruned = False
        if checkpoint.skipped:
            assert self.checkpoints[checkpoint.generation] == self.live
        else:
            self.checkpoints[checkpoint.generation] = copy.deepcopy(self.live)

    # -- rules --------------------------------------------------------------------
    @rule(n=st.integers(-100, 100), b=st.text(max_size=4))
    def mutate(self, n, b):
        counter, pair = self.parts["counter"], self.parts["pair"]
        counter.value += n
        counter.history.append(n)
        pair.a += 1
        pair.b = b
        self.live["counter"]["value"] += n
        self.live["counter"]["history"].append(n)
        self.live["pair"]["a"] += 1
        self.live["pair"]["b"] = b

    @rule(item=items)
    def append(self, item):
        if self.appends_refused:  # never acknowledged, so never expected back
            with pytest.raises(PersistIOError, match=r"Call save\(\) to retry"):
                self.parts["log"].append(item)
            return
        before = self.store.generation
        self.parts["log"].append(item)
        self.log = [*self.log, item][-MAXLEN:]
        if self.store.generation != before:  # a spent journal: the append committed a checkpoint first
            event("append after a failed append started a new generation")
            self.checkpoints[self.store.generation] = copy.deepcopy(self.live)
            self.unpruned = False

    @precondition(lambda self: "log" in self.store._writers and not self.store._spent_journals)
    @rule(
        at=st.integers(0, 1),
        code=st.sampled_from([errno.ENOSPC, errno.EIO]),
        persistent=st.booleans(),
        short=st.booleans(),
        then_crash=st.booleans(),
        retry=st.booleans(),
        item=items,
    )
    def append_under_io_fault(self, at, code, persistent, short, then_crash, retry, item):
        """An append's write (#0) or fsync (#1) fails: the journal is left exactly as it was.

        Then the process dies, or space returns and the bot carries on: the next append or
        save starts a new generation (the failed record's nonce is never used again).
        """
        journal = self.store._writers["log"].path
        before = current_fs().read_bytes(journal)
        fault = Fault(
            at=at, errno=code, persistent=persistent, short_write=short, kinds=frozenset({"write", "fsync"})
        )
        faulty = FaultFS(current_fs(), fault)
        with use_fs(faulty), pytest.raises(PersistIOError):
            self.parts["log"].append(item)
        assert faulty.fired
        assert current_fs().read_bytes(journal) == before
        event(f"io fault: append failed ({errno.errorcode[code]} at #{at})")
        if then_crash:
            in_force = self.in_force()
            self.store.abandon()
            self.live = copy.deepcopy(self.checkpoints[in_force])
            self.reopen()
        elif retry:  # the user retries at once, as the error message says, and space is back
            self.append(item)

    @rule()
    def save(self):
        self.commit(self.store.save())

    @rule()
    def autosave(self):
        result = []

        def tick():  # what the autosave thread does on each tick
            result.append(self.store.save())

        saver = threading.Thread(target=tick, name="persistkit-autosave")
        saver.start()
        saver.join()
        assert len(result) == 1
        self.commit(result[0])

    @rule()
    def crash(self):
        in_force = self.in_force()
        self.store.abandon()
        self.live = copy.deepcopy(self.checkpoints[in_force])
        self.appends_refused = False
        self.reopen()

    @rule()
    def restart(self):
        checkpoint = self.store.close()
        if checkpoint is not None:
            self.commit(checkpoint)
        self.reopen()

    @rule(
        at=st.integers(0, 30),
        persistent=st.booleans(),
        then_crash=st.booleans(),
        short=st.booleans(),
    )
    def save_under_io_fault(self, at, persistent, then_crash, short):
        """A save hits EIO at its ``at``-th file operation: once, or from then on until the block ends.

        Then the process dies, or the disk recovers and the bot carries on (a later
        save finishes the job; cleanup that failed may leave an unused generation behind).
        """
        old = self.in_force()
        attempted, before = copy.deepcopy(self.live), set(self.committed_generations())
        fault = Fault(at=at, errno=errno.EIO, persistent=persistent, short_write=short)
        faulty = FaultFS(current_fs(), fault)
        with use_fs(faulty):
            try:
                checkpoint = self.store.save()
            except PersistIOError as err:
                assert faulty.fired, "a PersistIOError without an injected fault"
                assert self.dir in str(err) or (err.path or "").startswith(self.dir)
                checkpoint = None
        if faulty.fired:
            self.unpruned = True  # removing old generations may have failed (logged, not raised)
        if checkpoint is not None:
            event(f"io fault: save succeeded ({'fault hit cleanup' if faulty.fired else 'never fired'})")
            self.commit(checkpoint)
            self.unpruned = bool(faulty.fired)
            return
        on_disk = self.in_force()
        if on_disk != old:  # CURRENT was switched before the fault: the save committed
            self.checkpoints[on_disk] = copy.deepcopy(self.live)
        event(f"io fault: save {'committed' if on_disk != old else 'rolled back'}")
        left = [n for n in self.committed_generations() if n > on_disk and n not in before]
        if left:  # never committed, but its removal failed too
            assert len(left) == 1 and self.store._writers == {}, "appends accepted beside a leftover"
            self.leftovers[left[0]] = attempted
            event("io fault: failed save left its generation behind")
        if then_crash:
            self.store.abandon()
            self.live = copy.deepcopy(self.checkpoints[on_disk])
            self.reopen()
        else:
            self.appends_refused = (
                "log" not in self.store._writers and "log" not in self.store._spent_journals
            )
            event(f"io fault: bot carries on, appends {'refused' if self.appends_refused else 'accepted'}")

    @rule(
        victim=st.sampled_from(["counter.pk", "pair.pk", "log.pk", "MANIFEST", "CURRENT"]),
        clean=st.booleans(),
    )
    def corrupt_newest(self, victim, clean):
        if clean:
            checkpoint = self.store.close()
            if checkpoint is not None:
                self.commit(checkpoint)
        else:
            self.store.abandon()
        newest = self.in_force()
        self.live = copy.deepcopy(self.checkpoints[newest])
        path = os.path.join(self.dir, victim if victim == "CURRENT" else gens.gen_name(newest) + "/" + victim)
        data = bytearray(current_fs().read_bytes(path))
        data[len(data) // 2] ^= 0x20
        with open(path, "r+b") as f:  # damage in place, as a bad sector would
            f.write(data)
        event(f"corrupt {victim}")
        if victim == "CURRENT":  # the generations themselves are fine: the newest still loads
            on_disk = self.committed_generations()
            taken = max([n for n in self.leftovers if n > newest and n in on_disk], default=newest)
            if taken != newest:  # a failed save's leftover; nothing tells it from a lost commit now
                event("corrupt CURRENT: a failed save's leftover is taken")
                self.live = copy.deepcopy(self.leftovers.pop(taken))
                self.checkpoints[taken] = copy.deepcopy(self.live)  # the recovery save commits it
            self.reopen(expect_fallback_to=taken)
            return
        older = [n for n in self.history() if n < newest and n in self.committed_generations()]
        event("corrupt newest: fall back" if older else "corrupt newest: nothing older")
        if not older:  # nothing to fall back to: a typed error, unless defaults are chosen
            failed = StateStore(self.dir, autosave_every=0)
            for name, comp in {"counter": Counter(), "pair": Pair(), "log": BoundedLog(MAXLEN)}.items():
                failed.register(name, comp)
            with pytest.raises(IntegrityError, match=r"every checkpoint is damaged|no readable checkpoint"):
                failed.load()
            assert failed.close() is None  # releases the lock; nothing was loaded, so nothing is saved
            self.live = {"counter": {"value": 0, "history": []}, "pair": {"a": 0, "b": "x"}}
            self.log = []
            self.reopen(on_corrupt="defaults")
            return
        assert older[-1] in self.checkpoints, f"{gens.gen_name(older[-1])} on disk was never committed"
        self.live = copy.deepcopy(self.checkpoints[older[-1]])
        self.reopen(expect_fallback_to=older[-1])
        quarantined = [n for n in os.listdir(self.dir) if n.startswith(gens.gen_name(newest) + ".corrupt-")]
        assert len(quarantined) == 1 and os.path.exists(os.path.join(self.dir, quarantined[0], victim))

    @rule()
    def read_only_observer_sees_the_durable_state(self):
        in_force = self.in_force()
        reader, parts, report = open_store(self.dir, readonly=True)
        assert report.generation == in_force and not report.recovered
        assert components(parts) == self.checkpoints[in_force]
        assert list(parts["log"]) == self.log  # every append is durable when it returns
        reader.close()

    # -- invariants ------------------------------------------------------------------
    @invariant()
    def memory_matches_the_model(self):
        assert components(self.parts) == self.live
        assert list(self.parts["log"]) == self.log

    @precondition(lambda self: self.store is not None)
    @invariant()
    def generations_stay_bounded(self):
        if self.unpruned:
            return
        on_disk = self.committed_generations()
        assert len(on_disk) <= self.store.keep_generations
        assert set(on_disk) <= set(self.checkpoints), "a generation on disk was never committed"

    def teardown(self):
        if self.store is not None and not self.store._closed:
            self.store.abandon()
        shutil.rmtree(self.tmp, ignore_errors=True)


_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
}

TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=25, stateful_step_count=25, **_COMMON)


class SlowStoreMachine(StoreMachine):
    pass


TestStoreMachineSoak = pytest.mark.slow(SlowStoreMachine.TestCase)
TestStoreMachineSoak.settings = settings(max_examples=200, stateful_step_count=50, **_COMMON)

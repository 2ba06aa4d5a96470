"""crash_points: every crash state of a save loads as before or after, with figures and clear failures."""

from __future__ import annotations

import json
import os

import pytest

from persistkit.io import atomic_write
from persistkit.state import BoundedLog, StateStore
from persistkit.testing.crash_points import CrashPoints
from persistkit.testing.report import Recorder


def load_json(path):
    with open(path) as f:
        return json.load(f)


def in_place(path, value):
    with open(path, "w") as f:
        json.dump(value, f)


@pytest.mark.parametrize("model", ["process", "power-loss"])
def test_persistkit_atomic_write_passes_and_reports_figures(tmp_path, model):
    path = tmp_path / "m.json"
    atomic_write(path, json.dumps({"v": 1}).encode())
    rec = Recorder()
    report = CrashPoints(tmp_path, recorder=rec)(
        lambda: atomic_write(path, json.dumps({"v": 2}).encode()), lambda: load_json(path), model=model
    )
    assert report.violations == [] and report.states >= 4
    assert report.new_states >= 1 and (report.old_states >= 1 or model == "power-loss")
    assert report.operations[0].startswith("#0 create .m.json.pk-tmp-")
    assert rec.crash_states == report.states and rec.violations == 0
    assert load_json(path) == {"v": 2}  # the directory is left in the state after the save


def test_first_save_may_crash_back_to_no_file(tmp_path):
    path = tmp_path / "m.json"
    report = CrashPoints(tmp_path)(
        lambda: atomic_write(path, b"{}"), lambda: load_json(path), model="process"
    )
    assert report.old_states >= 1  # load() raising FileNotFoundError counts as "before"


def test_in_place_write_fails_with_the_state_and_operation_log(tmp_path):
    path = tmp_path / "m.json"
    in_place(path, {"v": 1})
    with pytest.raises(AssertionError) as info:
        CrashPoints(tmp_path)(lambda: in_place(path, {"v": 2}), lambda: load_json(path), model="process")
    message = str(info.value)
    assert message.startswith("crash_points: 1 of 4 crash states (process model)")
    assert "First violation: process crash after #0 create m.json" in message
    assert "load() raised JSONDecodeError" in message
    assert "  #1 write m.json [0:8]" in message  # the operation list, relative paths


def test_load_failing_after_a_clean_save_is_reported_as_such(tmp_path):
    path = tmp_path / "m.json"
    with pytest.raises(AssertionError, match="load\\(\\) fails even after save\\(\\) completed"):
        CrashPoints(tmp_path)(lambda: path.write_text("not json"), lambda: load_json(path))


def test_max_states_caps_the_enumeration(tmp_path):
    path = tmp_path / "m.json"
    report = CrashPoints(tmp_path)(
        lambda: atomic_write(path, b"x" * 20000),
        lambda: path.read_bytes() if path.exists() else None,
        max_states=3,
    )
    assert report.states == 3 and report.sampled


class Counter:
    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def open_store(directory, readonly=False):
    counter, log = Counter(), BoundedLog(100)
    store = StateStore(directory, autosave_every=0, readonly=readonly)
    store.register("counter", counter)
    store.register("log", log)
    store.load()
    return store, counter, log


@pytest.mark.parametrize("model", ["process", "power-loss"])
def test_state_store_checkpoints_pass(tmp_path, model):
    where = tmp_path / "store"
    store, counter, log = open_store(where)
    counter.value = 1
    log.append({"n": 1})
    store.save()
    counter.value = 2

    def load():
        reader, c, lg = open_store(where, readonly=True)
        reader.close()
        return c.value, list(lg)

    report = CrashPoints(tmp_path)(store.save, load, model=model)
    store.abandon()
    assert report.violations == [] and report.states > 5


def test_concurrent_persistkit_writers_never_tear(tmp_path):
    path = tmp_path / "m.json"
    atomic_write(path, b'{"v": 0}')
    report = CrashPoints(tmp_path).concurrent(
        lambda v: atomic_write(path, json.dumps(v).encode()),
        lambda: load_json(path),
        values=[{"v": 1}, {"v": 2}],
    )
    assert report.violations == [] and report.schedules >= 10 and report.enforced == report.schedules


def test_concurrent_shared_temp_name_is_caught(tmp_path):
    path = tmp_path / "m.json"

    def save(value):
        with open(f"{path}.tmp", "w") as f:
            json.dump(value, f)
        os.replace(f"{path}.tmp", path)

    save({"v": 0})
    with pytest.raises(AssertionError, match=r"crash_points.concurrent: \d+ of \d+ interleavings"):
        CrashPoints(tmp_path).concurrent(save, lambda: load_json(path), values=[{"v": "a" * 100}, {"v": 2}])


def test_concurrent_takes_exactly_two_values(tmp_path):
    with pytest.raises(ValueError, match="exactly two writers"):
        CrashPoints(tmp_path).concurrent(print, dict, values=[1, 2, 3])


def test_max_states_samples_across_the_whole_save(tmp_path):
    import os as _os

    from persistkit.testing.crash_points import CrashPoints
    from persistkit.testing.report import Recorder

    path = tmp_path / "big.bin"
    path.write_bytes(b"a" * 40000)

    def save():
        tmp = tmp_path / "big.tmp"
        with open(tmp, "wb") as f:
            for _ in range(10):
                f.write(b"b" * 4000)
                f.flush()
            _os.fsync(f.fileno())
        _os.replace(tmp, path)
        fd = _os.open(tmp_path, _os.O_RDONLY)
        _os.fsync(fd)
        _os.close(fd)

    cp = CrashPoints(tmp_path, recorder=Recorder())
    full = cp(save, path.read_bytes)
    path.write_bytes(b"a" * 40000)
    few = cp(save, path.read_bytes, max_states=7)
    assert full.states > 7 and few.states == 7 and few.sampled and not full.sampled
    # the sample reaches the end of the save: the state after the rename loads the new bytes
    assert few.new_states >= 1 and few.old_states >= 1


def test_crash_points_works_under_given(pytester):
    """Function-scoped fixtures under @given: suppress the health check, as the plugin docstring says."""
    pytester.makepyfile(
        """
        import json, os
        from hypothesis import HealthCheck, given, settings, strategies as st

        def save(path, value):
            tmp = str(path) + ".tmp"
            with open(tmp, "w") as f:
                json.dump(value, f); f.flush(); os.fsync(f.fileno())
            os.replace(tmp, path)
            fd = os.open(os.path.dirname(path), os.O_RDONLY); os.fsync(fd); os.close(fd)

        @settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(st.integers())
        def test_any_value(crash_points, tmp_path, n):
            path = tmp_path / "v.json"
            save(path, {"n": 0})
            crash_points(lambda: save(path, {"n": n}), lambda: json.load(open(path)))
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "ignore::ResourceWarning")
    result.assert_outcomes(passed=1)

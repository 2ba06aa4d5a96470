"""Zoo cases: each persister in persisters.py against the fixture meant to catch it.

This file runs inside a pytester subprocess (tests/plugin/test_zoo.py copies it
there as test_zoo.py); it is not collected by the main suite. Broken
persisters must fail, correct ones must pass.
"""

from __future__ import annotations

import sys

import numpy as np
import persisters as z
import pytest
from hypothesis import settings
from hypothesis import strategies as st

from persistkit.state import StateStore
from persistkit.testing import PersistenceMachine, assert_unique_nonces

OLD = {"weights": [1.5] * 100, "step": 1}
NEW = {"weights": [2.25] * 2000, "step": 2}  # > 8 KiB: writes can tear at 4 KiB blocks


@pytest.mark.parametrize(
    "name",
    ["save_atomic", "save_with_persistkit", "save_in_place", "save_rename_no_fsync", "save_no_dir_fsync",
     "save_delete_first"],
)  # fmt: skip
def test_crash_points(crash_points, tmp_path, name):
    save = getattr(z, name)
    path = tmp_path / "model.json"
    for model in ("process", "power-loss"):
        save(path, OLD)
        crash_points(lambda: save(path, NEW), lambda: z.load_json(path), model=model)


@pytest.mark.parametrize("name", ["save_array_atomic", "save_array_in_place"])
def test_crash_points_numpy(crash_points, tmp_path, name):
    save = getattr(z, name)
    path = tmp_path / "weights.npy"
    for model in ("process", "power-loss"):
        save(path, np.zeros((64, 64)))
        crash_points(lambda: save(path, np.ones((64, 64))), lambda: z.load_array(path), model=model)


@pytest.mark.parametrize("name", ["save_pair_atomically", "save_pair_separately"])
def test_crash_points_multi_file(crash_points, tmp_path, name):
    save = getattr(z, name)
    save(str(tmp_path), 1, np.full(16, 1.0))
    crash_points(
        lambda: save(str(tmp_path), 2, np.full(16, 2.0)), lambda: z.load_pair(str(tmp_path)), model="process"
    )


@pytest.mark.parametrize("name", ["save_atomic", "save_with_persistkit", "save_fixed_temp_name"])
def test_concurrent_writers(crash_points, tmp_path, name):
    save = getattr(z, name)
    path = tmp_path / "model.json"
    save(path, OLD)
    crash_points.concurrent(lambda v: save(path, v), lambda: z.load_json(path), values=[NEW, {"step": 3}])


@pytest.mark.parametrize(
    "name",
    [
        "save_atomic",
        "save_with_persistkit",
        "save_swallowing_errors",
        "save_retrying_fsync",
        "save_leaking_fd",
    ],
)
def test_disk_faults(disk_faults, tmp_path, name):
    save = getattr(z, name)
    path = tmp_path / "model.json"
    save(path, OLD)
    disk_faults(lambda: save(path, NEW), lambda: z.load_json(path))


@pytest.mark.parametrize("name", ["Wallet", "ForgetfulWallet"])
def test_roundtrip_state(roundtrip, name):
    wallet = getattr(z, name)()
    for amount in (5, 7, 11):
        wallet.deposit(amount)
    roundtrip(wallet, via="state")


@pytest.mark.parametrize("name", ["PriceBuffer", "LossyPriceBuffer"])
def test_roundtrip_dtype(roundtrip, name):
    buf = getattr(z, name)()
    buf.window = np.linspace(0, 1, 8, dtype=np.float32)
    roundtrip(buf, via="state")


@pytest.mark.persist_budget(max_bytes=16_000, max_save_seconds=2.0)
@pytest.mark.parametrize("name", ["BoundedTradeHistory", "TradeHistory"])
def test_history_budget(tmp_path, name):
    history = getattr(z, name)()
    rng = np.random.default_rng(0)
    with StateStore(tmp_path / "state", autosave_every=0) as store:
        store.register("history", history)
        store.load()
        for i in range(1500):
            history.record(
                {"id": i, "price": float(rng.uniform(90, 110)), "pnl": float(rng.normal()), "side": "long"}
            )
            if i % 100 == 99:
                store.save()


@pytest.mark.parametrize("loader", ["load_checksummed", "load_or_defaults", "load_unchecked"])
def test_corruption_detected(corruptions, tmp_path, loader):
    path = tmp_path / "state.json"
    z.save_checksummed(path, {"balance": 1234.5, "positions": [{"id": 7, "qty": 3}]})
    corruptions(path)
    corruptions.assert_detected(getattr(z, loader))


@pytest.mark.parametrize("name", ["RandomNonceVault", "CounterNonceVault"])
def test_nonces(name):
    vault = getattr(z, name)
    assert_unique_nonces(vault().encrypt, restart=lambda: vault().encrypt)


@pytest.mark.parametrize("mode", ["good", "no-save-on-term", "ack-before-durable"])
def test_lifecycle_subprocess(lifecycle, tmp_path, mode):
    worker = [sys.executable, "worker.py", "--state-dir", "{state_dir}", "--mode", mode]
    lifecycle.subprocess(
        [*worker, "--steps", "100000"], restart_cmd=[*worker, "--steps", "0"], state_dir=tmp_path / "worker"
    )


@pytest.mark.parametrize("name", ["Wallet", "ForgetfulWallet"])
def test_lifecycle_in_process(lifecycle, name):
    lifecycle(lambda state_dir: getattr(z, name)(), steps=20, operate=lambda w, i: w.deposit(i))


class WalletMachine(PersistenceMachine):
    factory = z.Wallet

    def mutate(self, wallet, data):
        wallet.deposit(data.draw(st.integers(0, 100)))


class ForgetfulWalletMachine(WalletMachine):
    factory = z.ForgetfulWallet


TestWalletMachine = WalletMachine.TestCase
TestWalletMachine.settings = settings(max_examples=25, stateful_step_count=8, deadline=None, derandomize=True)
TestForgetfulWalletMachine = ForgetfulWalletMachine.TestCase
TestForgetfulWalletMachine.settings = settings(
    max_examples=25, stateful_step_count=8, deadline=None, derandomize=True
)

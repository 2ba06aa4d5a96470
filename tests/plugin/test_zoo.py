"""The bug zoo: every broken persister is caught by the fixture meant for it; correct ones pass.

One pytester subprocess runs all the zoo cases (tests/plugin/zoo/cases.py) at
once; this test reads each case's outcome and failure message from the
summary and reports the catch rate and the false-positive count.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

ZOO = Path(__file__).parent / "zoo"

# case id -> (expected: "bug" or "ok", the message the catching fixture starts its failure with)
CASES = {
    "test_crash_points[save_atomic]": ("ok", ""),
    "test_crash_points[save_with_persistkit]": ("ok", ""),
    "test_crash_points[save_in_place]": ("bug", "crash_points:"),
    "test_crash_points[save_rename_no_fsync]": ("bug", "crash_points:"),
    "test_crash_points[save_no_dir_fsync]": ("bug", "crash_points:"),
    "test_crash_points[save_delete_first]": ("bug", "crash_points:"),
    "test_crash_points_numpy[save_array_atomic]": ("ok", ""),
    "test_crash_points_numpy[save_array_in_place]": ("bug", "crash_points:"),
    "test_crash_points_multi_file[save_pair_atomically]": ("ok", ""),
    "test_crash_points_multi_file[save_pair_separately]": ("bug", "crash_points:"),
    "test_concurrent_writers[save_atomic]": ("ok", ""),
    "test_concurrent_writers[save_with_persistkit]": ("ok", ""),
    "test_concurrent_writers[save_fixed_temp_name]": ("bug", "crash_points.concurrent:"),
    "test_disk_faults[save_atomic]": ("ok", ""),
    "test_disk_faults[save_with_persistkit]": ("ok", ""),
    "test_disk_faults[save_swallowing_errors]": ("bug", "disk_faults:"),
    "test_disk_faults[save_retrying_fsync]": ("bug", "disk_faults:"),
    "test_disk_faults[save_leaking_fd]": ("bug", "disk_faults:"),
    "test_roundtrip_state[Wallet]": ("ok", ""),
    "test_roundtrip_state[ForgetfulWallet]": ("bug", "roundtrip(via='state'):"),
    "test_roundtrip_dtype[PriceBuffer]": ("ok", ""),
    "test_roundtrip_dtype[LossyPriceBuffer]": ("bug", "roundtrip(via='state'):"),
    "test_history_budget[BoundedTradeHistory]": ("ok", ""),
    "test_history_budget[TradeHistory]": ("bug", "persist_budget exceeded"),
    "test_corruption_detected[load_checksummed]": ("ok", ""),
    "test_corruption_detected[load_or_defaults]": ("bug", "corruptions:"),
    "test_corruption_detected[load_unchecked]": ("bug", "corruptions:"),
    "test_nonces[RandomNonceVault]": ("ok", ""),
    "test_nonces[CounterNonceVault]": ("bug", "nonce reuse:"),
    "test_lifecycle_subprocess[good]": ("ok", ""),
    "test_lifecycle_subprocess[no-save-on-term]": ("bug", "lifecycle.subprocess: SIGTERM"),
    "test_lifecycle_subprocess[ack-before-durable]": ("bug", "lifecycle.subprocess: ids must be unique; id"),
    "test_lifecycle_in_process[Wallet]": ("ok", ""),
    "test_lifecycle_in_process[ForgetfulWallet]": ("bug", "lifecycle:"),
    "TestWalletMachine::runTest": ("ok", ""),
    "TestForgetfulWalletMachine::runTest": ("bug", "after a"),
}

LINE = re.compile(r"^(PASSED|FAILED|ERROR) test_zoo\.py::(\S+)(?: - (.*))?$")


def test_every_zoo_bug_is_caught_and_no_correct_persister_is_flagged(pytester):
    pytester.makepyfile(
        persisters=(ZOO / "persisters.py").read_text(), test_zoo=(ZOO / "cases.py").read_text()
    )
    shutil.copy(ZOO / "worker.py", pytester.path / "worker.py")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:benchmark", "-rA", "-vv", "-W", "error", "--persistkit-kills=5"
    )
    outcomes: dict[str, tuple[str, str]] = {}
    for line in result.outlines:
        m = LINE.match(line)
        if m:
            outcomes[m[2]] = (m[1], m[3] or "")
    assert set(outcomes) == set(CASES), (
        f"unexpected cases: {set(outcomes) ^ set(CASES)}\n{result.stdout.str()[-3000:]}"
    )
    caught, missed, false_positives, rows = [], [], [], []
    for case, (expected, prefix) in CASES.items():
        status, message = outcomes[case]
        message = message.removeprefix("AssertionError: ")
        if expected == "bug":
            ok = status == "FAILED" and message.startswith(prefix)
            (caught if ok else missed).append(case)
            rows.append(f"  {'caught' if ok else 'MISSED':<7} {case}: {message[:100]}")
        else:
            if status != "PASSED":
                false_positives.append(f"{case}: {message}")
            rows.append(f"  {'clean' if status == 'PASSED' else 'FALSE+':<7} {case}")
    bugs = sum(1 for e, _ in CASES.values() if e == "bug")
    correct = len(CASES) - bugs
    print(
        f"\nbug zoo: {len(caught)}/{bugs} broken persisters caught, "
        f"{len(false_positives)}/{correct} false positives\n" + "\n".join(rows)
    )
    assert not missed, f"missed: {missed}\n{result.stdout.str()[-4000:]}"
    assert not false_positives, f"false positives: {false_positives}"
    assert bugs >= 12

"""A complete user test file using roundtrip, crash points, disk faults and corruptions, run through pytester."""

from __future__ import annotations

MYAPP = """
import dataclasses
import json

from persistkit.format.envelope import open_envelope, seal
from persistkit.io import atomic_write


@dataclasses.dataclass
class Wallet:
    balance: float = 0.0
    history: list = dataclasses.field(default_factory=list)

    def state_dict(self):
        return {"balance": self.balance, "history": list(self.history)}

    def load_state_dict(self, state):
        self.balance, self.history = state["balance"], list(state["history"])


def save_wallet(path, wallet):
    atomic_write(path, seal(json.dumps(wallet.state_dict()).encode(), kind="wallet", codec="json"))


def load_wallet(path):
    with open(path, "rb") as f:
        wallet = Wallet()
        wallet.load_state_dict(json.loads(open_envelope(f.read(), source=str(path)).payload))
        return wallet
"""

# --- README snippet starts here -------------------------------------------------------------
README_TEST = """
# test_wallet_persistence.py -- persistkit's fixtures load automatically with pytest
from myapp import Wallet, load_wallet, save_wallet


def test_wallet_persists(roundtrip, crash_points, disk_faults, corruptions, tmp_path):
    path = tmp_path / "wallet.pk"
    save_wallet(path, Wallet(balance=100.0))
    new = Wallet(balance=250.0, history=[150.0])
    roundtrip(new, via="state")  # saved and reloaded exactly; names the first difference
    crash_points(lambda: save_wallet(path, new), lambda: load_wallet(path))  # every crash: old or new
    disk_faults(lambda: save_wallet(path, new), lambda: load_wallet(path))  # ENOSPC/EIO/EDQUOT/EROFS
    corruptions(path)
    corruptions.assert_detected(load_wallet)  # damaged files raise, never load silently
"""
# --- README snippet ends here ---------------------------------------------------------------


def test_the_readme_example_passes_as_printed(pytester):
    pytester.makepyfile(myapp=MYAPP, test_wallet_persistence=README_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", "--persistkit-report")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["crash states explored: * faults injected: * corruptions tried: *"])


PLAIN_JSON = """
def save_wallet(path, wallet):
    with open(path, "w") as f:
        json.dump(wallet.state_dict(), f)


def load_wallet(path):
    with open(path) as f:
        wallet = Wallet()
        wallet.load_state_dict(json.load(f))
        return wallet
"""


def test_the_same_test_fails_for_a_plain_json_save(pytester):
    plain = MYAPP[: MYAPP.index("def save_wallet")] + PLAIN_JSON
    pytester.makepyfile(myapp=plain, test_wallet_persistence=README_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*crash_points: * crash states (power-loss model) load something*"])

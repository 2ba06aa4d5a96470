"""assert_unique_nonces finds keystream reuse without knowing the format."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from persistkit.format import envelope
from persistkit.format.crypto import Key
from persistkit.testing.nonces import assert_unique_nonces

KEY = AESGCM.generate_key(bit_length=256)


def random_nonce(data):
    nonce = os.urandom(12)
    return nonce + AESGCM(KEY).encrypt(nonce, data, None)


def test_random_nonces_and_persistkit_envelopes_pass():
    assert assert_unique_nonces(random_nonce) > 100
    key = Key.generate()

    def seal():
        return lambda data: envelope.seal(data, kind="blob", codec="bytes", key=key, compression="none")

    assert assert_unique_nonces(seal(), restart=seal) > 1000


def test_a_fixed_nonce_is_deterministic_encryption():
    def fixed(data):
        return AESGCM(KEY).encrypt(b"\0" * 12, data, None)

    with pytest.raises(AssertionError, match="identical ciphertexts"):
        assert_unique_nonces(fixed)


def test_a_nonce_counter_reset_by_a_restart_is_caught():
    class Vault:
        def __init__(self):
            self.n = 0

        def encrypt(self, data):
            self.n += 1
            nonce = self.n.to_bytes(12, "big")
            return nonce + AESGCM(KEY).encrypt(nonce, data, None)

    assert_unique_nonces(Vault().encrypt)  # within one process the counter never repeats
    with pytest.raises(
        AssertionError, match="restarted instance 1, message 0 were encrypted with the same keystream"
    ):
        assert_unique_nonces(Vault().encrypt, restart=lambda: Vault().encrypt)


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="samples"):
        assert_unique_nonces(random_nonce, samples=1)
    with pytest.raises(ValueError, match="size"):
        assert_unique_nonces(random_nonce, size=8)

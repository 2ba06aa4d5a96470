"""``assert_unique_nonces``: black-box detection of nonce (keystream) reuse in an encrypt function.

AES-GCM, AES-CTR and ChaCha20 encrypt by XOR with a keystream derived from
(key, nonce). Encrypt two different plaintexts under the same key and nonce
and the ciphertexts satisfy ``c1 XOR c2 == p1 XOR p2`` at the payload's
position; with fresh nonces that equality holds with probability 2**-(8*size).
So without knowing the file format or where the nonce sits, encrypting
random plaintexts of equal length and searching ``c1 XOR c2`` for
``p1 XOR p2`` reveals reuse, even when the nonce is derived, counted or
hidden. Identical ciphertexts for identical plaintexts (deterministic
encryption, e.g. no nonce at all) are reported too.

``restart`` covers the common real bug: a nonce counter kept in memory and
reset when the process restarts. Pass a zero-argument callable returning a
fresh encrypt function (a "restarted" instance with the same key); its
outputs are compared against the first instance's.

Plaintexts are random (incompressible), so encrypt functions that compress
first still place the plaintext bytes at a fixed offset.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

__all__ = ["assert_unique_nonces"]

Encrypt = Callable[[bytes], bytes]


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def assert_unique_nonces(
    encrypt: Encrypt,
    *,
    restart: Callable[[], Encrypt] | None = None,
    samples: int = 16,
    restarts: int = 2,
    size: int = 64,
) -> int:
    """Fail if two ciphertexts from ``encrypt`` (and restarted instances) share a keystream.

    ``encrypt(plaintext) -> bytes`` must use one fixed key. Returns the number of pairs checked.

    Example::

        key = AESGCM.generate_key(bit_length=256)
        def encrypt(data):
            nonce = os.urandom(12)
            return nonce + AESGCM(key).encrypt(nonce, data, None)
        assert_unique_nonces(encrypt)
    """
    if samples < 2:
        raise ValueError("samples must be at least 2")
    if size < 16:
        raise ValueError("size must be at least 16 bytes, so a chance match is impossible")
    runs: list[tuple[str, bytes, bytes]] = []  # (where, plaintext, ciphertext)
    instances: list[tuple[str, Encrypt]] = [("instance 0", encrypt)]
    if restart is not None:
        instances += [(f"restarted instance {i + 1}", restart()) for i in range(restarts)]
    for label, fn in instances:
        repeated = os.urandom(size)
        first, second = fn(repeated), fn(repeated)
        if first == second:
            raise AssertionError(
                f"nonce reuse: {label} encrypted the same plaintext twice to identical ciphertexts "
                "(deterministic encryption: the nonce is fixed or missing). Use a fresh random nonce per message."
            )
        for i in range(samples):
            plain = os.urandom(size)
            runs.append((f"{label}, message {i}", plain, fn(plain)))
    pairs = 0
    for (where_a, plain_a, cipher_a), (where_b, plain_b, cipher_b) in itertools.combinations(runs, 2):
        pairs += 1
        if len(cipher_a) != len(cipher_b):
            continue
        if _xor(cipher_a, cipher_b).find(_xor(plain_a, plain_b)) != -1:
            raise AssertionError(
                f"nonce reuse: {where_a} and {where_b} were encrypted with the same keystream "
                "(ciphertext XOR equals plaintext XOR), so the key+nonce pair was reused. With AES-GCM this leaks "
                "the plaintexts and the authentication key. Use a fresh random nonce per message, or a counter "
                "that is persisted durably before use."
            )
    return pairs

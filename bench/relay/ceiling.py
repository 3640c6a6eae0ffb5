"""The crypto ceiling: how many 60 KB prescriptions per second this machine's crypto alone would allow.

Each primitive is timed with ``cryptography`` directly (OpenSSL underneath, one thread), then the secure path's
cryptographic work per message is added up from the operations it performs — counted from the code of
``mssecure.smtp.processing``/``delivery`` and the TLS hops, listed in ``OPERATIONS`` so that the model can be read
and corrected:

* operator A: S/MIME signature (SHA-256 over the entity, one RSA-2048 signature) and DKIM (SHA-256 of body and
  headers, one RSA-2048 signature); envelope (AES-256-CBC over the signed message, RSA-OAEP/PKCS#1 key transport to
  one recipient); the archive's message store seals the received and the relayed copies (AES-GCM); TLS: the
  submission (AES-GCM decrypt of the message) and the relay hop (encrypt; a new TLS handshake per message today:
  one RSA-2048 signature by B's server key and one by A's client key);
* operator B: RSA-2048 decryption of the content key, AES-256-CBC decryption, S/MIME and DKIM verification (SHA-256
  and two RSA public operations), the message store's two copies, TLS decryption of the relay hop.

SHA-256 digests of the archive events (``sha256=`` of each copy) are counted too. The ceiling is ``cores / CPU
seconds of crypto per message``: everything else (SMTP parsing, MIME, the database, the disk) is what separates the
relay from it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["crypto_ceiling"]


def _rate(operation: Callable[[], Any], minimum_seconds: float) -> float:
    """Operations per second of ``operation`` (repeated for at least ``minimum_seconds``)."""
    operation()
    count, started = 0, time.perf_counter()
    while True:
        operation()
        count += 1
        elapsed = time.perf_counter() - started
        if elapsed >= minimum_seconds:
            return count / elapsed


def crypto_ceiling(message_bytes: int, *, minimum_seconds: float = 0.5) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key()
    block = os.urandom(1 << 20)
    signature = key.sign(b"x", padding.PKCS1v15(), hashes.SHA256())
    wrapped = public.encrypt(os.urandom(32), padding.PKCS1v15())
    aes_key, iv, nonce = os.urandom(32), os.urandom(16), os.urandom(12)
    gcm = AESGCM(aes_key)

    def cbc_encrypt() -> None:
        encryptor = Cipher(algorithms.AES256(aes_key), modes.CBC(iv)).encryptor()
        encryptor.update(block)
        encryptor.finalize()

    def cbc_decrypt() -> None:
        decryptor = Cipher(algorithms.AES256(aes_key), modes.CBC(iv)).decryptor()
        decryptor.update(block)
        decryptor.finalize()

    def sha256() -> None:
        digest = hashes.Hash(hashes.SHA256())
        digest.update(block)
        digest.finalize()

    primitives = {
        "rsa2048_sign_per_s": _rate(lambda: key.sign(b"digest", padding.PKCS1v15(), hashes.SHA256()), minimum_seconds),
        "rsa2048_verify_per_s": _rate(lambda: public.verify(signature, b"x", padding.PKCS1v15(), hashes.SHA256()),
                                      minimum_seconds),
        "rsa2048_encrypt_per_s": _rate(lambda: public.encrypt(b"k" * 32, padding.PKCS1v15()), minimum_seconds),
        "rsa2048_decrypt_per_s": _rate(lambda: key.decrypt(wrapped, padding.PKCS1v15()), minimum_seconds),
        "aes256_cbc_encrypt_MB_per_s": _rate(cbc_encrypt, minimum_seconds),
        "aes256_cbc_decrypt_MB_per_s": _rate(cbc_decrypt, minimum_seconds),
        "aes256_gcm_MB_per_s": _rate(lambda: gcm.encrypt(nonce, block, None), minimum_seconds),
        "sha256_MB_per_s": _rate(sha256, minimum_seconds),
    }  # fmt: skip
    size = message_bytes / (1 << 20)  # MiB: the bulk rates are per 1 MiB block
    enveloped = size * 4 / 3  # the CMS envelope travels base64-encoded
    rsa_private = 1 / primitives["rsa2048_sign_per_s"]  # a decryption costs what a signature costs (CRT)
    operations: dict[str, tuple[float, float]] = {  # name → (count per message, seconds per unit)
        "RSA-2048 private (S/MIME sign, DKIM sign, 2 TLS handshake signatures, S/MIME decrypt)": (5, rsa_private),
        "RSA-2048 public (key transport, S/MIME and DKIM verify, 2 TLS certificate checks)": (
            5, 1 / primitives["rsa2048_verify_per_s"]),
        "AES-256-CBC encrypt (envelope), MiB": (size, 1 / primitives["aes256_cbc_encrypt_MB_per_s"]),
        "AES-256-CBC decrypt (envelope), MiB": (size, 1 / primitives["aes256_cbc_decrypt_MB_per_s"]),
        "AES-GCM (TLS: submission in, relay out and in; store: 4 copies), MiB": (
            size + 2 * enveloped + 4 * size, 1 / primitives["aes256_gcm_MB_per_s"]),
        "SHA-256 (S/MIME digest and verify, DKIM sign and verify, archive digests ×4), MiB": (
            8 * size, 1 / primitives["sha256_MB_per_s"]),
    }  # fmt: skip
    seconds = sum(count * unit for count, unit in operations.values())
    cores = len(os.sched_getaffinity(0))
    return {
        "message_bytes": message_bytes,
        "primitives": {name: round(value, 1) for name, value in primitives.items()},
        "operations_per_message": {
            name: {"count": round(count, 3), "microseconds": round(count * unit * 1e6, 1)}
            for name, (count, unit) in operations.items()
        },
        "crypto_cpu_ms_per_message": round(seconds * 1000, 3),
        "cores": cores,
        "ceiling_messages_per_second": round(cores / seconds, 1),
    }

"""Private keys at rest, encrypted under the operator's master secret.

The master secret comes from ``$MSSECURE_MASTER_KEY`` or, failing that, from ``master.key`` in the data directory
(32 random bytes, written 0600 by ``mssecure init``). A key file that group or others can read is refused: the
operator's keys are only as safe as that file.

Every private key is stored as an encrypted PKCS#8 PEM (PBES2, AES-256-CBC, the encryption ``cryptography``
chooses as best available) — a standard format that ``openssl pkey -passin`` reads with the master secret.
Key files are written 0600 through a temporary file and a rename, so a crash never leaves half a key.
"""

from __future__ import annotations

import base64
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from mssecure.errors import KeyStoreError

__all__ = ["MASTER_KEY_ENV", "MASTER_KEY_FILE", "KeyStore", "write_private_file"]

MASTER_KEY_ENV = "MSSECURE_MASTER_KEY"
MASTER_KEY_FILE = "master.key"


def write_private_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically, readable by the owner only (the mode is set before any byte)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


class KeyStore:
    """The operator's private keys under ``data_dir/keys``, encrypted with the master secret."""

    def __init__(self, data_dir: Path, environ: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.environ = os.environ if environ is None else environ
        self._master: bytes | None = None
        self._cache: dict[str, Any] = {}

    @property
    def master_file(self) -> Path:
        return self.data_dir / MASTER_KEY_FILE

    def create_master_secret(self) -> bool:
        """Write a new master key file unless the secret comes from the environment; True if a file was written."""
        if self.environ.get(MASTER_KEY_ENV):
            return False
        if self.master_file.exists():
            raise KeyStoreError(f"{self.master_file} already exists: refusing to replace the master secret")
        write_private_file(self.master_file, base64.urlsafe_b64encode(secrets.token_bytes(32)) + b"\n")
        return True

    def master_secret(self) -> bytes:
        if self._master is None:
            self._master = self._read_master_secret()
        return self._master

    def _read_master_secret(self) -> bytes:
        from_env = self.environ.get(MASTER_KEY_ENV)
        if from_env:
            if len(from_env) < 16:
                raise KeyStoreError(f"${MASTER_KEY_ENV} is too short (at least 16 characters)")
            return from_env.encode()
        path = self.master_file
        try:
            info = path.stat()
        except FileNotFoundError:
            raise KeyStoreError(f"no master secret: ${MASTER_KEY_ENV} is not set and {path} does not exist") from None
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise KeyStoreError(
                f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}): refusing to use it; "
                f"run chmod 600 {path}"
            )
        secret = path.read_bytes().strip()
        if len(secret) < 16:
            raise KeyStoreError(f"{path} does not hold a master secret")
        return secret

    # -- keys as bytes (for keys kept in the database)

    def seal(self, key: PrivateKeyTypes) -> bytes:
        """The key as an encrypted PKCS#8 PEM."""
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(self.master_secret()),
        )

    def unseal(self, pem: bytes) -> PrivateKeyTypes:
        try:
            return serialization.load_pem_private_key(pem, password=self.master_secret())
        except (ValueError, TypeError):
            raise KeyStoreError("a stored private key cannot be decrypted with this master secret") from None

    # -- named key files

    def key_path(self, name: str) -> Path:
        return self.data_dir / "keys" / f"{name}.key"

    def save(self, name: str, key: PrivateKeyTypes) -> Path:
        path = self.key_path(name)
        if path.exists():
            raise KeyStoreError(f"{path} already exists: refusing to replace a key")
        write_private_file(path, self.seal(key))
        self._cache[name] = key
        return path

    def load(self, name: str) -> Any:
        if name not in self._cache:
            path = self.key_path(name)
            try:
                info = path.stat()
            except FileNotFoundError:
                raise KeyStoreError(f"missing key file {path}") from None
            if stat.S_IMODE(info.st_mode) & 0o077:
                raise KeyStoreError(f"{path} is readable by others: refusing to use it; run chmod 600 {path}")
            self._cache[name] = self.unseal(path.read_bytes())
        return self._cache[name]

"""Private keys at rest, encrypted under the operator's master secret.

The master secret is at least 32 random bytes, encoded in base64 (standard or URL-safe alphabet) or hex: what
``mssecure init`` writes to ``master.key`` in the data directory, or what ``$MSSECURE_MASTER_KEY`` holds instead
(``openssl rand -base64 32`` makes one). A passphrase is refused: the keys are encrypted with the secret as a
PKCS#8 password, whose key derivation is only as strong as the secret itself. The encoded text (surrounding
whitespace removed) is the password, so ``openssl pkey -passin file:master.key`` reads the keys.

``master.key`` must be a regular file (not a symbolic link) owned by the user running mssecure and readable by it
alone (0600): the operator's keys are only as safe as that file.

Every private key is stored as an encrypted PKCS#8 PEM (PBES2, AES-256-CBC, the encryption ``cryptography``
chooses as best available) — a standard format that ``openssl pkey -passin`` reads with the master secret.
Secret files are created with their final mode (``O_CREAT | O_EXCL``, never a umask-dependent moment), key files
through a temporary file and a rename, so a crash never leaves half a key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
import stat
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from mssecure.errors import KeyStoreError

__all__ = [
    "MASTER_KEY_ENV",
    "MASTER_KEY_FILE",
    "MIN_MASTER_SECRET_BYTES",
    "KeyStore",
    "check_master_secret",
    "create_private_file",
    "new_master_secret",
    "write_private_file",
]

MASTER_KEY_ENV = "MSSECURE_MASTER_KEY"
MASTER_KEY_FILE = "master.key"
MIN_MASTER_SECRET_BYTES = 32
_MAX_MASTER_FILE = 4096  # bytes read from master.key: a secret is ~45 characters
_STRENGTH = (
    f"at least {MIN_MASTER_SECRET_BYTES} random bytes encoded in base64 or hex, as `openssl rand -base64 32` makes "
    "(a passphrase is not accepted)"
)


def _open_flags(flags: int) -> int:
    return flags | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


def create_private_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` holding ``data``, with ``mode`` from its creation on (``O_CREAT | O_EXCL``: never through
    an existing file or symbolic link, whatever the umask). Raises ``FileExistsError`` if anything is there."""
    descriptor = os.open(path, _open_flags(os.O_WRONLY | os.O_CREAT | os.O_EXCL), mode)
    try:
        os.fchmod(descriptor, mode)  # exactly ``mode``: the umask may have removed bits the owner needs
        with os.fdopen(descriptor, "wb", closefd=False) as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        os.close(descriptor)
        path.unlink(missing_ok=True)
        raise
    os.close(descriptor)


def write_private_file(path: Path, data: bytes, mode: int = 0o600, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` atomically, readable by the owner only unless ``mode`` says otherwise (the mode is
    set before any byte). ``exclusive``: raise ``FileExistsError`` rather than replace anything at ``path``."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    create_private_file(partial, data, mode)
    try:
        if exclusive:
            os.link(partial, path)  # fails on any existing name, a dangling symbolic link included
            partial.unlink()
        else:
            os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def new_master_secret() -> bytes:
    """A new master secret as ``init`` writes it: 32 random bytes, URL-safe base64."""
    return base64.urlsafe_b64encode(secrets.token_bytes(MIN_MASTER_SECRET_BYTES))


def _decode_secret(text: str) -> bytes | None:
    """The bytes an encoded secret stands for (hex, base64 or base64url, padding optional); None if it is neither."""
    if len(text) % 2 == 0 and re.fullmatch(r"[0-9A-Fa-f]+", text):
        return bytes.fromhex(text)
    if re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", text) or re.fullmatch(r"[A-Za-z0-9_-]+={0,2}", text):
        standard = text.replace("-", "+").replace("_", "/")
        try:
            return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
        except binascii.Error:
            return None
    return None


def check_master_secret(value: bytes | str, origin: str) -> bytes:
    """The master secret (the encoded text, stripped) if ``value`` is strong material, else a ``KeyStoreError``
    naming ``origin`` (the variable or the file) — never the value itself."""
    raw = value.encode("utf-8", "replace") if isinstance(value, str) else value
    text = raw.strip().decode("ascii", "replace")
    secret = _decode_secret(text)
    if secret is None or len(secret) < MIN_MASTER_SECRET_BYTES:
        raise KeyStoreError(f"{origin} is not a strong master secret: it must be {_STRENGTH}")
    # Cheap tests that random material passes but placeholders and passphrases do not: 32 random bytes have ~30
    # distinct values (fewer than 16 by chance: ~1e-17), and their base64 mixes upper and lower case (one case only
    # by chance: ~4e-10).
    is_hex = re.fullmatch(r"[0-9A-Fa-f]+", text) is not None
    if len(set(secret)) < 16 or not (is_hex or (re.search("[a-z]", text) and re.search("[A-Z]", text))):
        raise KeyStoreError(f"{origin} does not look random (a placeholder or a passphrase?): it must be {_STRENGTH}")
    return text.encode("ascii")


UNSEALED_KEPT = 4096  # private keys a keystore keeps loaded (a relay's signers and local recipients)


class KeyStore:
    """The operator's private keys under ``data_dir/keys``, encrypted with the master secret."""

    def __init__(self, data_dir: Path, environ: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.environ = os.environ if environ is None else environ
        self._master: bytes | None = None
        self._cache: dict[str, Any] = {}
        self._unsealed: OrderedDict[bytes, PrivateKeyTypes] = OrderedDict()  # SHA-256 of the sealed PEM → its key
        self._unsealed_lock = threading.Lock()

    @property
    def master_file(self) -> Path:
        return self.data_dir / MASTER_KEY_FILE

    def create_master_secret(self) -> bool:
        """Write a new master key file unless the secret comes from the environment (which is then checked); True if
        a file was written."""
        if self.environ.get(MASTER_KEY_ENV):
            self.master_secret()
            return False
        try:
            write_private_file(self.master_file, new_master_secret() + b"\n", exclusive=True)
        except FileExistsError:
            raise KeyStoreError(f"{self.master_file} already exists: refusing to replace the master secret") from None
        return True

    def master_secret(self) -> bytes:
        if self._master is None:
            self._master = self._read_master_secret()
        return self._master

    def _read_master_secret(self) -> bytes:
        from_env = self.environ.get(MASTER_KEY_ENV)
        if from_env:
            return check_master_secret(from_env, f"${MASTER_KEY_ENV}")
        return check_master_secret(self._read_master_file(), str(self.master_file))

    def _read_master_file(self) -> bytes:
        """``master.key``, refused unless a regular file of ours that no one else can read or write."""
        path = self.master_file
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                raise KeyStoreError(f"{path} is a symbolic link: refusing it; keep the master secret in a regular file")
            # O_NOFOLLOW: a link swapped in after the check fails; O_NONBLOCK: a FIFO cannot hang us.
            descriptor = os.open(path, _open_flags(os.O_RDONLY | os.O_NONBLOCK))
        except FileNotFoundError:
            raise KeyStoreError(f"no master secret: ${MASTER_KEY_ENV} is not set and {path} does not exist") from None
        except OSError as exc:
            raise KeyStoreError(f"cannot open {path}: {exc.strerror}") from None
        try:
            info = os.fstat(descriptor)
            if not stat.S_ISREG(info.st_mode):
                raise KeyStoreError(f"{path} is not a regular file: refusing it")
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077:
                raise KeyStoreError(
                    f"{path} is accessible to its group or others (mode {mode:04o}): refusing to use it; "
                    f"run chmod 600 {path}"
                )
            if info.st_uid != os.geteuid():
                raise KeyStoreError(
                    f"{path} belongs to uid {info.st_uid}, not to the user running mssecure (uid {os.geteuid()}): "
                    "refusing to use it"
                )
            with os.fdopen(descriptor, "rb", closefd=False) as stream:
                data = stream.read(_MAX_MASTER_FILE + 1)
        finally:
            os.close(descriptor)
        if len(data) > _MAX_MASTER_FILE:
            raise KeyStoreError(f"{path} is not a strong master secret: it must be {_STRENGTH}")
        return data

    # -- keys as bytes (for keys kept in the database)

    def seal(self, key: PrivateKeyTypes) -> bytes:
        """The key as an encrypted PKCS#8 PEM."""
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(self.master_secret()),
        )

    def unseal(self, pem: bytes) -> PrivateKeyTypes:
        """The key sealed in ``pem``. Kept (the last UNSEALED_KEPT of them) for this keystore's lifetime: loading an
        RSA key checks it, about 90 ms of CPU, and the relay needs the same signers' and recipients' keys over and
        over (a relay process holds the master secret anyway)."""
        digest = hashlib.sha256(pem).digest()
        with self._unsealed_lock:
            key = self._unsealed.get(digest)
            if key is not None:
                self._unsealed.move_to_end(digest)
                return key
        try:
            key = serialization.load_pem_private_key(pem, password=self.master_secret())
        except (ValueError, TypeError):
            raise KeyStoreError("a stored private key cannot be decrypted with this master secret") from None
        with self._unsealed_lock:
            self._unsealed[digest] = key
            while len(self._unsealed) > UNSEALED_KEPT:
                self._unsealed.popitem(last=False)
        return key

    # -- named key files

    def key_path(self, name: str) -> Path:
        return self.data_dir / "keys" / f"{name}.key"

    def save(self, name: str, key: PrivateKeyTypes) -> Path:
        path = self.key_path(name)
        try:
            write_private_file(path, self.seal(key), exclusive=True)
        except FileExistsError:
            raise KeyStoreError(f"{path} already exists: refusing to replace a key") from None
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

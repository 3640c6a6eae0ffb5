"""The master secret and secret files: strong material only, files created with their final mode, ``master.key``
refused unless a private regular file of ours."""

from __future__ import annotations

import base64
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from mssecure.crypto.keys import (
    MASTER_KEY_ENV,
    KeyStore,
    check_master_secret,
    create_private_file,
    new_master_secret,
    write_private_file,
)
from mssecure.errors import KeyStoreError

RANDOM = secrets.token_bytes(32)


@pytest.fixture
def umask() -> Iterator[None]:
    """Run the test under the most permissive umask: modes must not depend on it."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- what a master secret is ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        new_master_secret().decode(),  # what init writes
        base64.b64encode(RANDOM).decode(),  # openssl rand -base64 32
        base64.urlsafe_b64encode(RANDOM).decode().rstrip("="),  # unpadded, as some vaults give it
        RANDOM.hex(),  # openssl rand -hex 32
        RANDOM.hex().upper(),
        base64.b64encode(secrets.token_bytes(48)).decode(),  # more is fine
        base64.b64encode(RANDOM).decode() + "\n",  # a trailing newline is not part of it
    ],
    ids=["init", "base64", "base64url-unpadded", "hex", "HEX", "48-bytes", "newline"],
)
def test_strong_material_is_accepted_as_its_encoded_text(value: str) -> None:
    assert check_master_secret(value, "$X") == value.strip().encode()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("a long operator secret from the vault", "is not a strong master secret"),  # a passphrase
        ("S3cret-passphrase-2026!", "is not a strong master secret"),
        (base64.b64encode(secrets.token_bytes(24)).decode(), "is not a strong master secret"),  # 24 bytes: too short
        (secrets.token_bytes(31).hex(), "is not a strong master secret"),
        (base64.b64encode(RANDOM).decode()[:-2] + "!=", "is not a strong master secret"),
        ("x" * 44, "does not look random"),  # a placeholder
        ("00" * 32, "does not look random"),
        ("correcthorsebatterystaplecorrecthorsebatterystaple", "does not look random"),  # base64 letters, one case
        ("", "is not a strong master secret"),
    ],
)
def test_weak_material_is_refused_naming_where_it_came_from_but_never_the_value(value: str, fragment: str) -> None:
    with pytest.raises(KeyStoreError) as raised:
        check_master_secret(value, f"${MASTER_KEY_ENV}")
    message = str(raised.value)
    assert message.startswith(f"${MASTER_KEY_ENV} ")
    assert fragment in message
    assert "openssl rand -base64 32" in message
    if value:
        assert value not in message


def test_the_environment_takes_precedence_and_is_checked(tmp_path: Path) -> None:
    weak = KeyStore(tmp_path, environ={MASTER_KEY_ENV: "correct horse battery staple"})
    with pytest.raises(KeyStoreError, match=r"^\$MSSECURE_MASTER_KEY is not a strong master secret"):
        weak.create_master_secret()  # checked at init, before anything is encrypted with it
    strong = base64.b64encode(RANDOM).decode()
    store = KeyStore(tmp_path, environ={MASTER_KEY_ENV: strong})
    assert store.create_master_secret() is False
    assert not store.master_file.exists()
    key = ec.generate_private_key(ec.SECP256R1())
    assert store.unseal(store.seal(key)).private_numbers() == key.private_numbers()  # type: ignore[union-attr]


# --- master.key ----------------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path, umask: None) -> KeyStore:
    store = KeyStore(tmp_path / "data", environ={})
    assert store.create_master_secret() is True
    return store


def test_master_key_is_created_0600_whatever_the_umask(store: KeyStore) -> None:
    assert _mode(store.master_file) == 0o600
    assert store.master_file.stat().st_uid == os.geteuid()
    assert KeyStore(store.data_dir, environ={}).master_secret() == store.master_file.read_bytes().strip()
    assert [p.name for p in store.data_dir.iterdir()] == ["master.key"]  # no partial file left


def test_an_existing_master_key_is_never_replaced(store: KeyStore, tmp_path: Path) -> None:
    before = store.master_file.read_bytes()
    with pytest.raises(KeyStoreError, match="already exists"):
        store.create_master_secret()
    assert store.master_file.read_bytes() == before
    # Not even through a dangling symbolic link, which would create a file elsewhere.
    other = KeyStore(tmp_path / "other", environ={})
    other.data_dir.mkdir()
    target = tmp_path / "elsewhere.key"
    other.master_file.symlink_to(target)
    with pytest.raises(KeyStoreError, match="already exists"):
        other.create_master_secret()
    assert not target.exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o660, 0o644])
def test_a_master_key_others_can_access_is_refused(store: KeyStore, mode: int) -> None:
    store.master_file.chmod(mode)
    with pytest.raises(KeyStoreError, match=f"accessible to its group or others \\(mode {mode:04o}\\).*chmod 600"):
        KeyStore(store.data_dir, environ={}).master_secret()


def test_a_master_key_that_is_a_symbolic_link_is_refused(store: KeyStore, tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    store.master_file.rename(real)
    store.master_file.symlink_to(real)
    with pytest.raises(KeyStoreError, match="is a symbolic link"):
        KeyStore(store.data_dir, environ={}).master_secret()


def test_a_master_key_that_is_not_a_regular_file_is_refused(store: KeyStore) -> None:
    store.master_file.unlink()
    store.master_file.mkdir(mode=0o700)
    with pytest.raises(KeyStoreError, match="is not a regular file"):
        KeyStore(store.data_dir, environ={}).master_secret()
    store.master_file.rmdir()
    os.mkfifo(store.master_file, 0o600)  # opening it must not wait for a writer
    with pytest.raises(KeyStoreError, match="is not a regular file"):
        KeyStore(store.data_dir, environ={}).master_secret()


def test_a_master_key_owned_by_another_user_is_refused(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    owner = store.master_file.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)  # as if mssecure ran as another user
    with pytest.raises(KeyStoreError, match=f"belongs to uid {owner}, not to the user running mssecure"):
        KeyStore(store.data_dir, environ={}).master_secret()


def test_a_master_key_holding_a_passphrase_is_refused(store: KeyStore) -> None:
    store.master_file.write_bytes(b"my operator passphrase\n")
    with pytest.raises(KeyStoreError) as raised:
        KeyStore(store.data_dir, environ={}).master_secret()
    assert str(raised.value).startswith(f"{store.master_file} is not a strong master secret")
    assert "passphrase" not in str(raised.value).split(":")[0]


# --- secret files --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o277])
def test_private_files_have_exactly_their_mode_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    previous = os.umask(mask)
    try:
        create_private_file(tmp_path / "secret", b"s")
        write_private_file(tmp_path / "keys" / "k.key", b"k")
        write_private_file(tmp_path / "public.crt", b"c", mode=0o644)
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "secret") == 0o600
    assert _mode(tmp_path / "keys" / "k.key") == 0o600
    assert _mode(tmp_path / "public.crt") == 0o644
    assert (tmp_path / "secret").read_bytes() == b"s"


def test_create_private_file_never_goes_through_an_existing_name(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        create_private_file(existing, b"new")
    assert existing.read_bytes() == b"keep"
    link, target = tmp_path / "link", tmp_path / "target"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        create_private_file(link, b"new")
    assert not target.exists()

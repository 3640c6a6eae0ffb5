"""Every error mssecure raises on purpose.

The tree (each class carries a message an operator can act on; the CLI prints it as one line and exits 1):

    MssecureError
    ├── ConfigError            the configuration file is missing, unreadable or invalid (names the key)
    ├── DatabaseError          the database cannot be opened, or its schema is not the one this version needs
    ├── DirectoryError         a directory operation was refused
    │   ├── InvalidEntry       an address, identifier, kind or field value is not acceptable
    │   ├── EntryNotFound      no entry has this address
    │   ├── EntryExists        an entry already has this address
    │   └── InvalidTransition  a status change the lifecycle forbids (revoked is final)
    ├── ImportFormatError      an import file cannot be read at all (unknown format, wrong header, not UTF-8)
    ├── CryptoError            a cryptographic operation was refused
    │   ├── KeyStoreError      the master secret or a stored key is missing, unreadable or exposed
    │   ├── CertificateError   a certificate cannot be issued, renewed, revoked or imported
    │   ├── SignatureError     a message is not S/MIME, cannot be parsed, decrypted or verified
    │   └── TrustError         a trust bundle is refused (bad signature, unconfirmed CA, foreign domains)
    ├── Refused                the relay refuses a command or a message: carries the SMTP reply to send and the
    │                          precise reason for the log (which the peer never sees)
    ├── QueueError             a queue operation was refused (unknown queue id, nothing to retry)
    └── ArchiveError           (mssecure.archive.records) the archive cannot be written, read or checked

Anything else that escapes is a bug: the CLI reports it as an internal error in one line (full traceback with
``--debug``); the SMTP servers answer ``451 4.3.0`` and log it with its stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mssecure.smtp.replies import Reply


class MssecureError(Exception):
    """Base of every deliberate mssecure error; ``str()`` is the message for the operator."""


class ConfigError(MssecureError):
    """The configuration is missing, unreadable or invalid."""


class DatabaseError(MssecureError):
    """The database cannot be used (unreachable, not initialised, schema out of date)."""


class DirectoryError(MssecureError):
    """A directory operation was refused."""


class InvalidEntry(DirectoryError):
    """A value of a directory entry is not acceptable (the message says which and why)."""


class EntryNotFound(DirectoryError):
    """No directory entry has the requested address."""


class EntryExists(DirectoryError):
    """A directory entry with this address already exists."""


class InvalidTransition(DirectoryError):
    """The requested status change is not allowed (for example, reactivating a revoked entry)."""


class ImportFormatError(MssecureError):
    """An import file cannot be processed at all (as opposed to single rejected lines)."""


class CryptoError(MssecureError):
    """A cryptographic operation was refused (details for the log; a peer only hears a generic failure)."""


class KeyStoreError(CryptoError):
    """The master secret or a stored private key is missing, unreadable, or readable by others."""


class CertificateError(CryptoError):
    """A certificate cannot be issued, renewed, revoked or imported."""


class SignatureError(CryptoError):
    """A message is not S/MIME, or cannot be parsed, decrypted or verified."""


class TrustError(CryptoError):
    """A trust bundle is refused, or a trust-space operation is not possible."""


class Refused(MssecureError):
    """The relay refuses: ``reply`` goes to the SMTP client or peer, ``reason`` (precise) to the log only."""

    def __init__(self, reply: Reply, reason: str | None = None) -> None:
        super().__init__(reason or reply.text)
        self.reply = reply
        self.reason = reason or reply.text


class QueueError(MssecureError):
    """A queue operation was refused (unknown queue id, a message in a state that does not allow it)."""

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
    └── CryptoError            a cryptographic operation was refused
        ├── KeyStoreError      the master secret or a stored key is missing, unreadable or exposed
        ├── CertificateError   a certificate cannot be issued, renewed, revoked or imported
        ├── SignatureError     a message is not S/MIME, cannot be parsed, decrypted or verified
        └── TrustError         a trust bundle is refused (bad signature, unconfirmed CA, foreign domains)

Anything else that escapes is a bug: the CLI reports it as an internal error in one line (full traceback with
``--debug``). The SMTP side (issue 4) adds an exception that carries its SMTP reply.
"""

from __future__ import annotations


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

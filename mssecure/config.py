"""The typed configuration of an mssecure operator, loaded once from TOML.

Each section is a frozen dataclass; each field documents itself (``doc``) and may name an environment variable that
overrides it (``env``, for secrets such as a database URL with a password). ``render_config`` writes the commented
TOML file from these declarations, so ``config/mssecure.example.toml`` and the file ``mssecure init`` writes cannot
drift from the code (a test compares them).

Where the configuration comes from, in order: ``--config FILE``, then ``$MSSECURE_CONFIG``, then ``./mssecure.toml``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mssecure.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "CONFIG_FILENAME",
    "AuthConfig",
    "Config",
    "DatabaseConfig",
    "DeliveryConfig",
    "DkimConfig",
    "OperatorConfig",
    "PathsConfig",
    "PkiConfig",
    "SmtpConfig",
    "find_config_file",
    "load_config",
    "render_config",
    "validate_domain",
]

CONFIG_FILENAME = "mssecure.toml"
CONFIG_ENV = "MSSECURE_CONFIG"

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"(?:{_LABEL}\.)+{_LABEL}")


def validate_domain(value: str) -> str:
    """Return ``value`` lowercased if it is a fully qualified DNS name of ASCII LDH labels, else raise ValueError."""
    domain = value.strip().lower().rstrip(".")
    if len(domain) > 253 or not _DOMAIN_RE.fullmatch(domain) or domain.rsplit(".", 1)[-1].isdigit():
        raise ValueError(f"{value!r} is not a fully qualified domain name")
    return domain


def _check_database_url(value: str) -> str:
    if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
        raise ValueError("must start with sqlite:/// or postgresql://")
    return value


def _check_domains(value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(validate_domain(d) for d in value)


def _setting(
    doc: str,
    *,
    example: Any = None,
    env: str | None = None,
    check: Callable[[Any], Any] | None = None,
    default: Any = dataclasses.MISSING,
) -> Any:
    """Declare a configuration field with its documentation, an example value, an env override and a check."""
    metadata = {"doc": doc, "example": example, "env": env, "check": check}
    if default is dataclasses.MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class OperatorConfig:
    """Who this operator is in the trust space."""

    domain: str = _setting(
        "Main mail domain of this operator; addresses in it (and in extra_domains) are local entries.",
        example="chu-nord.mssante.test",
        check=validate_domain,
    )
    hostname: str = _setting(
        "Host name of the relay (SMTP greeting, TLS certificate); defaults to mail.<domain> at init.",
        example="mail.chu-nord.mssante.test",
        check=validate_domain,
    )
    extra_domains: tuple[str, ...] = _setting(
        "Other mail domains this operator serves.",
        example=(),
        check=_check_domains,
        default=(),
    )

    @property
    def domains(self) -> frozenset[str]:
        """Every domain whose addresses are local."""
        return frozenset((self.domain, *self.extra_domains))


@dataclass(frozen=True)
class DatabaseConfig:
    """Where mssecure keeps its state."""

    url: str = _setting(
        "SQLAlchemy URL. SQLite paths are relative to this file; PostgreSQL: postgresql://user@host/db "
        "(put a password in the environment variable, not here).",
        example="sqlite:///mssecure.db",
        env="MSSECURE_DATABASE_URL",
        check=_check_database_url,
        default="sqlite:///mssecure.db",
    )


@dataclass(frozen=True)
class PathsConfig:
    """Files of the operator (relative paths are relative to this file)."""

    data_dir: str = _setting(
        "Directory for the operator's keys, certificates and mailboxes (created 0700 by init).",
        example="data",
        default="data",
    )


def _check_url(value: str) -> str:
    if value and not re.match(r"^https?://[^\s/]+/\S*$", value):
        raise ValueError("must be an http:// or https:// URL")
    return value


def _check_days(value: int) -> int:
    if not 1 <= value <= 3650:
        raise ValueError("must be between 1 and 3650 days")
    return value


@dataclass(frozen=True)
class PkiConfig:
    """The operator's certificate authority."""

    crl_url: str = _setting(
        "Where relying parties fetch this operator's CRL (written in every certificate issued). "
        "Empty: http://<hostname>/crl/ca.crl; publish the file `mssecure certs crl` writes there.",
        example="",
        check=_check_url,
        default="",
    )
    smime_validity_days: int = _setting(
        "Validity of the S/MIME certificates issued to directory entries, in days.",
        example=730,
        check=_check_days,
        default=730,
    )


@dataclass(frozen=True)
class DkimConfig:
    """DKIM signing of outgoing mail (RFC 6376)."""

    selector: str = _setting(
        "Selector of the operator's DKIM key: its public key is published at <selector>._domainkey.<domain>.",
        example="mssecure",
        check=lambda v: v if re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", v) else _raise("not a DNS label"),
        default="mssecure",
    )


def _raise(message: str) -> Any:
    raise ValueError(message)


def _check_port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port (0-65535; 0 disables the listener)")
    return value


def _check_positive(value: int) -> int:
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _check_non_negative(value: int) -> int:
    if value < 0:
        _raise("must be 0 or more")
    return value


def _check_endpoint(value: str) -> str:
    if value and not re.fullmatch(r"[A-Za-z0-9.-]+:\d{1,5}", value):
        raise ValueError("must be host:port")
    return value


def _check_schedule(value: tuple[int, ...]) -> tuple[int, ...]:
    if not value or any(v < 1 for v in value):
        raise ValueError("must be a non-empty list of positive numbers of seconds")
    return value


@dataclass(frozen=True)
class SmtpConfig:
    """The relay's listeners and the limits every SMTP session is held to."""

    listen: str = _setting(
        "Address the listeners bind to (0.0.0.0 for every IPv4 address, :: for IPv6 too).",
        example="0.0.0.0",  # noqa: S104 - a relay listens on the network by design
        default="0.0.0.0",  # noqa: S104
    )
    submission_port: int = _setting(
        "Submission for mail clients with STARTTLS (RFC 6409); 0 disables it.",
        example=587,
        check=_check_port,
        default=587,
    )
    submissions_port: int = _setting(
        "Submission for mail clients over implicit TLS (RFC 8314); 0 disables it.",
        example=465,
        check=_check_port,
        default=465,
    )
    inbound_port: int = _setting(
        "Inbound relay from peer operators (STARTTLS and a trusted client certificate required); 0 disables it.",
        example=25,
        check=_check_port,
        default=25,
    )
    relay_endpoint: str = _setting(
        "host:port where peers reach the inbound relay, published in the trust bundle. "
        "Empty: <operator.hostname>:<inbound_port>.",
        example="",
        check=_check_endpoint,
        default="",
    )
    workers: int = _setting(
        "Relay processes sharing the listeners and the queue (0: one per CPU core). Each runs its own event loop; "
        "the parent opens the ports, prepares the spool and restarts a worker that dies.",
        example=1,
        check=_check_non_negative,
        default=1,
    )
    max_message_size: int = _setting(
        "Largest message accepted, in bytes (advertised with SIZE, RFC 1870).",
        example=50 * 1024 * 1024,
        check=_check_positive,
        default=50 * 1024 * 1024,
    )
    max_recipients: int = _setting("Most recipients of one message.", example=100, check=_check_positive, default=100)
    max_header_size: int = _setting(
        "Largest message header, in bytes.", example=256 * 1024, check=_check_positive, default=256 * 1024
    )
    max_commands: int = _setting(
        "Most SMTP commands in one session before it is closed.", example=1000, check=_check_positive, default=1000
    )
    idle_timeout: int = _setting(
        "Seconds a session may stay idle before it is closed.", example=300, check=_check_positive, default=300
    )


@dataclass(frozen=True)
class AuthConfig:
    """How mail clients authenticate to submission."""

    require_client_cert: bool = _setting(
        "Require a TLS client certificate issued by this operator to the authenticating address (the strong, "
        "smart-card-like mode), besides the password.",
        example=False,
        default=False,
    )
    max_failures: int = _setting(
        "Failed logins allowed per address and per client IP within failure_window before AUTH is refused.",
        example=5,
        check=_check_positive,
        default=5,
    )
    failure_window: int = _setting(
        "Seconds over which failed logins are counted.", example=900, check=_check_positive, default=900
    )


@dataclass(frozen=True)
class DeliveryConfig:
    """Local mailboxes, the queue and retries."""

    maildir: str = _setting(
        "Root of the local mailboxes: one Maildir per address at <maildir>/<domain>/<local part>/ (relative "
        "paths are relative to this file).",
        example="data/mail",
        default="data/mail",
    )
    retry_schedule: tuple[int, ...] = _setting(
        "Seconds to wait before each new delivery attempt; the last one repeats until max_lifetime.",
        example=(60, 300, 900, 1800, 3600, 7200),
        check=_check_schedule,
        default=(60, 300, 900, 1800, 3600, 7200),
    )
    max_lifetime: int = _setting(
        "Seconds a message may stay in the queue before it bounces (a DSN to its sender); 5 days by default.",
        example=5 * 24 * 3600,
        check=_check_positive,
        default=5 * 24 * 3600,
    )
    connections_per_destination: int = _setting(
        "Most simultaneous connections to one peer operator.", example=4, check=_check_positive, default=4
    )
    connect_timeout: int = _setting(
        "Seconds to wait for a peer relay to connect and answer.", example=30, check=_check_positive, default=30
    )
    duplicate_prescription: str = _setting(
        "What to do when a prescription identifier (XDM metadata or X-MSS-Prescription-Id) is delivered to another "
        'local mailbox than the first one: "flag" delivers it with an X-MSSecure-Prescription-Duplicate header and '
        'archives it, "refuse" refuses the message (the sender gets a DSN).',
        example="flag",
        check=lambda v: v if v in ("flag", "refuse") else _raise('must be "flag" or "refuse"'),
        default="flag",
    )
    require_encrypted_inbound: bool = _setting(
        "Refuse mail from peers that is not S/MIME encrypted (switch off only for a transition period).",
        example=True,
        default=True,
    )


@dataclass(frozen=True)
class ArchiveConfig:
    """The audit archive: signed checkpoints and the encrypted message store."""

    checkpoint_interval: int = _setting(
        "Seconds between two signed checkpoints written by the relay while it runs (one more is written when it "
        "stops); 0 writes them only at stop.",
        example=300,
        check=_check_non_negative,
        default=300,
    )
    store_messages: bool = _setting(
        "Keep an encrypted copy of every accepted message, as received and as delivered, in the archive's "
        "message store.",
        example=True,
        default=True,
    )
    retention_received: int = _setting(
        "Days the message store keeps a message as received (from a client or a peer operator) before "
        "`mssecure archive purge` deletes it; 0 keeps it forever. Events and proofs are never purged.",
        example=3650,
        check=_check_non_negative,
        default=3650,
    )
    retention_delivered: int = _setting(
        "Days the message store keeps a message as delivered (to a mailbox or a peer operator) before "
        "`mssecure archive purge` deletes it; 0 keeps it forever.",
        example=3650,
        check=_check_non_negative,
        default=3650,
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``source`` is the file it was read from."""

    operator: OperatorConfig
    database: DatabaseConfig
    paths: PathsConfig
    pki: PkiConfig
    dkim: DkimConfig
    source: Path
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)

    @property
    def crl_url(self) -> str:
        return self.pki.crl_url or f"http://{self.operator.hostname}/crl/ca.crl"

    @property
    def base_dir(self) -> Path:
        return self.source.parent

    @property
    def data_dir(self) -> Path:
        return self.base_dir / self.paths.data_dir

    @property
    def maildir(self) -> Path:
        return self.base_dir / self.delivery.maildir

    @property
    def relay_endpoint(self) -> str:
        return self.smtp.relay_endpoint or f"{self.operator.hostname}:{self.smtp.inbound_port}"

    @property
    def database_url(self) -> str:
        """The database URL, with a relative SQLite path made absolute against the config file's directory."""
        url = self.database.url
        match = re.match(r"^(sqlite(?:\+\w+)?:///)(.*)$", url)
        if match and match.group(2) and not match.group(2).startswith((":memory:", "/", "file:")):
            return match.group(1) + str(self.base_dir / match.group(2))
        return url


_SECTIONS: dict[str, type[Any]] = {
    "operator": OperatorConfig,
    "database": DatabaseConfig,
    "paths": PathsConfig,
    "pki": PkiConfig,
    "dkim": DkimConfig,
    "smtp": SmtpConfig,
    "auth": AuthConfig,
    "delivery": DeliveryConfig,
    "archive": ArchiveConfig,
}


def find_config_file(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Path:
    """Find the configuration file: ``--config``, then ``$MSSECURE_CONFIG``, then ``./mssecure.toml``."""
    environ = os.environ if environ is None else environ
    if explicit:
        path, origin = Path(explicit), "--config"
    elif environ.get(CONFIG_ENV):
        path, origin = Path(environ[CONFIG_ENV]), f"${CONFIG_ENV}"
    else:
        path = Path(CONFIG_FILENAME)
        if not path.is_file():
            raise ConfigError(
                f"no configuration: --config was not given, ${CONFIG_ENV} is not set and ./{CONFIG_FILENAME} "
                "does not exist (create one with `mssecure init DIR --domain DOMAIN`)"
            )
        return path.resolve()
    if not path.is_file():
        raise ConfigError(f"configuration file {path} (from {origin}) does not exist")
    return path.resolve()


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate ``path``; every problem is a ConfigError naming the file and the key."""
    environ = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"configuration file {path} is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    for name in raw:
        if name not in _SECTIONS:
            raise ConfigError(f"{path}: unknown section [{name}] (known: {', '.join(_SECTIONS)})")
    sections = {name: _load_section(path, name, cls, raw.get(name, {}), environ) for name, cls in _SECTIONS.items()}
    return Config(source=path.resolve(), **sections)


def _load_section(path: Path, name: str, cls: type[Any], raw: Any, environ: Mapping[str, str]) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {name} must be a table ([{name}])")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{path}: unknown key {name}.{key} (known: {', '.join(fields)})")
    values: dict[str, Any] = {}
    for key, f in fields.items():
        env = f.metadata["env"]
        if env and environ.get(env):
            value, where = environ[env], f"${env}"
        elif key in raw:
            value, where = raw[key], f"{name}.{key}"
        elif f.default is not dataclasses.MISSING:
            continue
        else:
            raise ConfigError(f"{path}: missing required key {name}.{key} ({f.metadata['doc']})")
        values[key] = _convert(path, where, f, value)
    return cls(**values)


def _convert(path: Path, where: str, f: dataclasses.Field[Any], value: Any) -> Any:
    expected = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if expected.startswith("tuple[int"):
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{path}: {where} must be a list of integers")
        value = tuple(value)
    elif expected.startswith("tuple"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: {where} must be a list of strings")
        value = tuple(value)
    elif expected == "str" and not isinstance(value, str):
        raise ConfigError(f"{path}: {where} must be a string")
    elif expected == "int" and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{path}: {where} must be an integer")
    elif expected == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{path}: {where} must be true or false")
    check = f.metadata["check"]
    if check is not None:
        try:
            value = check(value)
        except ValueError as exc:
            raise ConfigError(f"{path}: {where}: {exc}") from None
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def render_config(values: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The commented TOML configuration: every key, its documentation, and ``values`` or the examples."""
    values = values or {}
    lines = [
        "# mssecure configuration. Every key is documented; a key left out takes the default shown here.",
        "# Relative paths are relative to this file. Secrets can come from the environment variable named.",
        "",
    ]
    for name, cls in _SECTIONS.items():
        lines.append(f"[{name}]")
        lines.append(f"# {cls.__doc__}")
        for f in dataclasses.fields(cls):
            lines.append("")
            lines.extend(f"# {line}" for line in _wrap(f.metadata["doc"]))
            if f.metadata["env"]:
                lines.append(f"# Environment override: {f.metadata['env']}")
            if f.default is dataclasses.MISSING:
                lines.append("# Required.")
            value = values.get(name, {}).get(f.name, f.metadata["example"])
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _wrap(text: str, width: int = 100) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        lines.append(current)
    return lines

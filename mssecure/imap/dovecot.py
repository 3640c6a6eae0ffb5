"""A complete Dovecot 2.3 configuration for the operator: IMAP over TLS on the Maildirs the relay delivers to,
logins checked against the directory and the mailbox passwords in mssecure's own database.

What the files say, and why:

- ``dovecot.conf``: IMAP only, on 143 (STARTTLS) and 993 (implicit TLS, RFC 8314); ``ssl = required`` so that no
  password ever crosses the network in clear; the operator's TLS certificate; ``mail_location`` on
  ``<delivery.maildir>/<domain>/<local part>`` (where ``smtp.maildir.Maildirs`` writes); Dovecot's mail processes
  run as the account that owns the Maildirs, and only as it (``first_valid_uid = last_valid_uid``).
- ``dovecot-sql.conf.ext``: the passdb and userdb queries. A login is an address whose directory entry is **active**
  and in one of our domains, with a password set (``directory set-password``); the password hash is the argon2id
  PHC string mssecure stores, which Dovecot checks as ``{ARGON2ID}<hash>``. Suspended and revoked entries fail both
  the passdb and the userdb, so an open session cannot be re-established either.
- ``dovecot-sql-master.conf.ext``: delegations of organizational mailboxes (BAL organisationnelle) as Dovecot master
  users: the delegate logs in as ``<organizational address>*<own address>`` with their own password; the query only
  answers when the delegation exists and both entries are active.
- ``tls.crt`` / ``tls.key``: the operator's relay certificate and its key **decrypted** (mode 0600). Dovecot's
  alternative, ``ssl_key_password``, would need the master secret in a configuration file, and the master secret
  unlocks every operator key (the CA's among them): a decrypted TLS key exposes only what Dovecot must hold anyway.

The renderers (``render_dovecot_conf``, ``render_sql_conf``) are pure functions of ``DovecotSettings``;
``write_dovecot_config`` resolves the settings from the mssecure configuration and writes the files.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from mssecure.config import Config
from mssecure.crypto.authority import OperatorMaterial
from mssecure.crypto.keys import write_private_file
from mssecure.errors import ConfigError

__all__ = [
    "DEFAULT_IMAPS_PORT",
    "DEFAULT_IMAP_PORT",
    "MASTER_SEPARATOR",
    "Account",
    "DovecotFiles",
    "DovecotSettings",
    "dovecot_listen",
    "render_dovecot_conf",
    "render_sql_conf",
    "sql_connection",
    "write_dovecot_config",
]

DEFAULT_IMAP_PORT = 143  # RFC 9051 §2.1, with STARTTLS (RFC 9051 §6.2.1)
DEFAULT_IMAPS_PORT = 993  # RFC 8314 §3.3, implicit TLS
MASTER_SEPARATOR = "*"  # "<mailbox>*<delegate>", the separator UW-IMAP uses and Dovecot's documentation suggests
DH_PARAMETERS = Path("/usr/share/dovecot/dh.pem")  # shipped by Debian's dovecot-core

CONF_NAME = "dovecot.conf"
SQL_NAME = "dovecot-sql.conf.ext"
MASTER_SQL_NAME = "dovecot-sql-master.conf.ext"
CERT_NAME = "tls.crt"
KEY_NAME = "tls.key"

# Characters a path may hold in Dovecot's configuration without quoting (no whitespace, quotes, comments, "%"
# variables, "$" settings references, "<" file reads, "{" sections, ":" which separates mail_location's options,
# "," which separates lists): a path outside this set is refused, never half-escaped.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._+@/-]*")
_LIBPQ_KEYWORD = re.compile(r"[a-z_]+")


@dataclass(frozen=True)
class Account:
    """A system account Dovecot's processes run as."""

    name: str
    uid: int
    group: str
    gid: int

    @classmethod
    def of_uid(cls, uid: int, gid: int) -> Account:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            raise ConfigError(f"uid {uid} has no account name: Dovecot needs one") from None
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            raise ConfigError(f"gid {gid} has no group name: Dovecot needs one") from None
        return cls(name, uid, group, gid)

    @classmethod
    def named(cls, name: str) -> Account:
        """The account called ``name``, with its primary group."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ConfigError(f"no system account is called {name!r}") from None
        return cls.of_uid(entry.pw_uid, entry.pw_gid)

    @classmethod
    def current(cls) -> Account:
        return cls.of_uid(os.geteuid(), os.getegid())

    @classmethod
    def owner_of(cls, path: Path) -> Account:
        info = path.stat()
        return cls.of_uid(info.st_uid, info.st_gid)


@dataclass(frozen=True)
class DovecotSettings:
    """Everything the generated files say, resolved and checked."""

    out_dir: Path
    hostname: str
    domains: tuple[str, ...]
    listen: str  # Dovecot's syntax: "*", "*, ::", or addresses
    imap_port: int  # 0: no STARTTLS listener
    imaps_port: int  # 0: no implicit TLS listener
    maildir_root: Path
    mail_account: Account  # owns the Maildirs: the account the relay runs as (never root: Dovecot refuses it)
    worker_account: Account  # runs the SQL lookups: for SQLite, the owner of the database file
    unprivileged: bool
    run_account: Account  # unprivileged mode: every Dovecot process runs as this account
    sql_driver: str  # sqlite | pgsql
    sql_connect: str
    dh_parameters: Path | None = None

    @property
    def base_dir(self) -> Path:
        return self.out_dir / "run" if self.unprivileged else Path("/run/dovecot-mssecure")

    @property
    def log_path(self) -> Path | None:
        return self.out_dir / "dovecot.log" if self.unprivileged else None


@dataclass(frozen=True)
class DovecotFiles:
    """What ``write_dovecot_config`` wrote."""

    conf: Path
    sql: Path
    master_sql: Path
    cert: Path
    key: Path
    settings: DovecotSettings


def _safe_path(path: Path, what: str) -> Path:
    if not _SAFE_PATH.fullmatch(str(path)):
        raise ConfigError(
            f"{what} {str(path)!r} cannot be written in a Dovecot configuration (spaces, quotes, '#', '%', '$' and "
            "the like are refused): choose a path of letters, digits and . _ - + @ / only"
        )
    return path


def dovecot_listen(listen: str) -> str:
    """``smtp.listen`` in Dovecot's terms: ``0.0.0.0`` is ``*`` (every IPv4 address), ``::`` is ``*, ::``."""
    if listen == "0.0.0.0":  # noqa: S104 - the operator's choice, read from the configuration
        return "*"
    if listen == "::":
        return "*, ::"
    try:
        ipaddress.ip_address(listen)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]+", listen):
            raise ConfigError(f"smtp.listen {listen!r} is not an address Dovecot can listen on") from None
    return listen


def _libpq_value(value: str) -> str:
    """A libpq connection-string value in single quotes (backslash escapes ``'`` and ``\\``). Dovecot passes the
    string to libpq unchanged, and its own comment scanner honours the same quotes and escapes."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ConfigError("the database URL holds a control character: Dovecot cannot be given it")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_connection(database_url: str) -> tuple[str, str]:
    """Dovecot's ``driver`` and ``connect`` for mssecure's database URL.

    SQLite: the database file's absolute path. PostgreSQL: a libpq key/value string (host, port, dbname, user,
    password, then the URL's query parameters such as ``sslmode``). The result may hold the database password:
    it goes to a 0600 file, never to the terminal.
    """
    try:
        url = make_url(database_url)
    except ArgumentError:
        raise ConfigError("database.url is not a database URL Dovecot can use") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        if not database or database == ":memory:" or database.startswith("file:") or not database.startswith("/"):
            raise ConfigError("database.url: Dovecot needs an SQLite database file, not an in-memory database")
        return "sqlite", str(_safe_path(Path(database), "the SQLite database"))
    if backend == "postgresql":
        pairs: list[tuple[str, str]] = []
        for keyword, value in (("host", url.host), ("port", url.port), ("dbname", url.database),
                               ("user", url.username), ("password", url.password)):  # fmt: skip
            if value not in (None, ""):
                pairs.append((keyword, str(value)))
        for keyword, query_value in sorted(url.query.items()):
            if not _LIBPQ_KEYWORD.fullmatch(keyword):
                raise ConfigError(f"database.url: query parameter {keyword!r} is not a libpq connection keyword")
            last = query_value[-1] if isinstance(query_value, tuple) else query_value
            pairs.append((keyword, last))
        if not any(k == "dbname" for k, _ in pairs):
            raise ConfigError("database.url names no PostgreSQL database")
        return "pgsql", " ".join(f"{k}={_libpq_value(v)}" for k, v in pairs)
    raise ConfigError(f"database.url: Dovecot cannot read a {backend} database (SQLite or PostgreSQL only)")


def _domain_list(domains: tuple[str, ...]) -> str:
    # Domains were validated by the configuration (DNS labels only), so quoting them is safe.
    return ", ".join(f"'{d}'" for d in sorted(domains))


# The queries, on mssecure's tables as they are (``directory_entries``, ``mailboxes``, ``delegations``); Dovecot
# quotes the ``%`` values it substitutes with the driver's own escaping. LOCAL_DOMAINS becomes the operator's domains.
_LOGIN_QUERY = (
    "SELECT e.address AS user, '{ARGON2ID}' || m.password_hash AS password"
    " FROM mailboxes m JOIN directory_entries e ON e.address = m.address"
    " WHERE m.address = '%Lu' AND m.password_hash IS NOT NULL"
    " AND e.status = 'active' AND e.domain IN (LOCAL_DOMAINS)"
)
_USER_QUERY = (
    "SELECT e.address AS user FROM directory_entries e"
    " WHERE e.address = '%Lu' AND e.status = 'active' AND e.domain IN (LOCAL_DOMAINS)"
)
_ITERATE_QUERY = (
    "SELECT e.address AS user FROM directory_entries e"
    " WHERE e.status = 'active' AND e.domain IN (LOCAL_DOMAINS) ORDER BY e.address"
)
# In the master passdb, %u is the master user (the delegate) and %{login_user} the mailbox they open.
_DELEGATE_LOGIN_QUERY = (
    "SELECT '{ARGON2ID}' || m.password_hash AS password"
    " FROM delegations g"
    " JOIN mailboxes m ON m.address = g.delegate"
    " JOIN directory_entries d ON d.address = g.delegate"
    " JOIN directory_entries o ON o.address = g.organization"
    " WHERE g.delegate = '%Lu' AND g.organization = '%L{login_user}'"
    " AND m.password_hash IS NOT NULL"
    " AND d.status = 'active' AND o.status = 'active' AND o.kind = 'organizational'"
    " AND d.domain IN (LOCAL_DOMAINS) AND o.domain IN (LOCAL_DOMAINS)"
)


def render_sql_conf(settings: DovecotSettings, *, master: bool) -> str:
    """``dovecot-sql.conf.ext`` (``master=False``: logins and users) or ``dovecot-sql-master.conf.ext``
    (delegations). A login needs an active entry of ours with a password; a delegation needs both entries
    active, the mailbox organizational, and the delegation recorded (``directory delegate``)."""
    local = _domain_list(settings.domains)
    queries = (
        {"password_query": _DELEGATE_LOGIN_QUERY}
        if master
        else {"password_query": _LOGIN_QUERY, "user_query": _USER_QUERY, "iterate_query": _ITERATE_QUERY}
    )
    lines = [
        "# Generated by `mssecure dovecot config`: re-run it rather than editing this file.",
        "# It may hold the database password: keep it 0600.",
        f"driver = {settings.sql_driver}",
        f"connect = {settings.sql_connect}",
        *(f"{name} = {query.replace('LOCAL_DOMAINS', local)}" for name, query in queries.items()),
    ]
    return "\n".join(lines) + "\n"


def render_dovecot_conf(settings: DovecotSettings) -> str:
    """``dovecot.conf``: the whole configuration (no include of the system's ``conf.d``)."""
    s = settings
    out, mail, run = s.out_dir, s.mail_account, s.run_account
    lines = [
        f"# Dovecot 2.3 configuration for the mssecure operator {s.hostname} ({', '.join(sorted(s.domains))}).",
        "# Generated by `mssecure dovecot config`: re-run it rather than editing this file.",
        f"# Check: doveconf -c {out / CONF_NAME} -n    Run: dovecot -c {out / CONF_NAME} -F",
        "",
        "protocols = imap",
        f"listen = {s.listen}",
        "instance_name = mssecure",
        f"base_dir = {s.base_dir}",
    ]
    if s.unprivileged:
        lines += [
            "",
            f"# Unprivileged mode: state and log under {out}, no chroot, ports above 1023 possible.",
            f"state_dir = {out / 'state'}",
            f"log_path = {s.log_path}",
        ]
        if run.uid != 0:  # Dovecot refuses login processes as root: started by root, it keeps its own accounts
            lines += [
                f"# Every process runs as {run.name}.",
                f"default_login_user = {run.name}",
                f"default_internal_user = {run.name}",
                f"default_internal_group = {run.group}",
            ]
    lines += [
        "",
        "# TLS is required before any login (RFC 8314): 143 offers STARTTLS, 993 is TLS from the first byte.",
        "ssl = required",
        f"ssl_cert = <{out / CERT_NAME}",
        f"ssl_key = <{out / KEY_NAME}",
        "ssl_min_protocol = TLSv1.2",
        "ssl_prefer_server_ciphers = yes",
    ]
    if s.dh_parameters is not None:
        lines.append(f"ssl_dh = <{s.dh_parameters}")
    lines += [
        "disable_plaintext_auth = yes",
        "",
        "# Logins: the address and its password, checked against mssecure's directory (see dovecot-sql.conf.ext).",
        "auth_mechanisms = plain login",
        "auth_username_format = %Lu",
        "auth_verbose = yes",
        f"auth_master_user_separator = {MASTER_SEPARATOR}",
        "",
        f"# The Maildirs mssecure delivers to; mail processes run as {mail.name}, who owns them, and as no one else.",
        f"mail_location = maildir:{s.maildir_root}/%d/%n",
        f"mail_uid = {mail.uid}",
        f"mail_gid = {mail.gid}",
        f"first_valid_uid = {mail.uid}",
        f"last_valid_uid = {mail.uid}",
        f"first_valid_gid = {mail.gid}",
        f"last_valid_gid = {mail.gid}",
        "",
        "namespace inbox {",
        "  inbox = yes",
        "  separator = /",
        "  mailbox Drafts {",
        "    auto = subscribe",
        "    special_use = \\Drafts",
        "  }",
        "  mailbox Sent {",
        "    auto = subscribe",
        "    special_use = \\Sent",
        "  }",
        "  mailbox Trash {",
        "    auto = subscribe",
        "    special_use = \\Trash",
        "  }",
        "}",
        "",
        f"# Delegations of organizational mailboxes: log in as <mailbox>{MASTER_SEPARATOR}<delegate> with the",
        "# delegate's own password.",
        "passdb {",
        "  driver = sql",
        f"  args = {out / MASTER_SQL_NAME}",
        "  master = yes",
        "}",
        "passdb {",
        "  driver = sql",
        f"  args = {out / SQL_NAME}",
        "}",
        "userdb {",
        "  driver = sql",
        f"  args = {out / SQL_NAME}",
        "}",
        "",
        "service imap-login {",
    ]
    if s.unprivileged:
        lines.append("  chroot =")
    lines += [
        "  inet_listener imap {",
        f"    port = {s.imap_port}",
        "  }",
        "  inet_listener imaps {",
        f"    port = {s.imaps_port}",
        "    ssl = yes",
        "  }",
        "}",
        "",
        f"# The SQL lookups run here, as {s.worker_account.name}, who can read (and, for SQLite, lock) the database.",
        "service auth-worker {",
        f"  user = {s.worker_account.name}",
        "}",
    ]
    if s.unprivileged:
        lines += ["service anvil {", "  chroot =", "}"]  # its default chroot needs root, as imap-login's does
    lines += [
        "# User lookups are for the mail processes only (the default, 0666, would tell any local account who exists).",
        "service auth {",
        "  unix_listener auth-userdb {",
        f"    user = {mail.name}",
        "    mode = 0600",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _check_port(value: int, what: str) -> int:
    if not 0 <= value <= 65535:
        raise ConfigError(f"{what} must be a TCP port (0-65535; 0 disables the listener)")
    return value


def write_dovecot_config(
    config: Config,
    material: OperatorMaterial,
    out_dir: Path,
    *,
    imap_port: int = DEFAULT_IMAP_PORT,
    imaps_port: int = DEFAULT_IMAPS_PORT,
    unprivileged: bool = False,
    mail_account: Account | None = None,
) -> DovecotFiles:
    """Write the configuration into ``out_dir`` (created 0700 if missing; files there are replaced).

    ``mail_account`` defaults to the owner of the Maildir root (the account the relay delivers as), or the
    current account when nothing has been delivered yet; it cannot be root.
    """
    _check_port(imap_port, "the IMAP port")
    _check_port(imaps_port, "the IMAPS port")
    if imap_port == 0 and imaps_port == 0:
        raise ConfigError("both IMAP listeners are disabled: give --imap-port or --imaps-port a port")
    if imap_port and imap_port == imaps_port:
        raise ConfigError("the IMAP and IMAPS ports must differ")
    out_dir = _safe_path(out_dir.absolute(), "the output directory")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} exists and is not a directory")
    maildir_root = _safe_path(config.maildir.absolute(), "delivery.maildir")
    driver, connect = sql_connection(config.database_url)
    if not material.tls_cert_path.exists():
        raise ConfigError(f"no TLS certificate at {material.tls_cert_path}: run `mssecure init` first")
    if mail_account is None:
        mail_account = Account.owner_of(maildir_root) if maildir_root.is_dir() else Account.current()
    if mail_account.uid == 0:
        raise ConfigError(
            f"the Maildirs under {maildir_root} would be opened as root, which Dovecot refuses: run the relay "
            "(mssecure serve) as its own account, chown the Maildirs to it, or give --mail-user"
        )
    database = Path(make_url(config.database_url).database or "")
    worker_account = Account.owner_of(database) if driver == "sqlite" and database.exists() else mail_account
    settings = DovecotSettings(
        out_dir=out_dir,
        hostname=config.operator.hostname,
        domains=tuple(sorted(config.operator.domains)),
        listen=dovecot_listen(config.smtp.listen),
        imap_port=imap_port,
        imaps_port=imaps_port,
        maildir_root=maildir_root,
        mail_account=mail_account,
        worker_account=worker_account,
        unprivileged=unprivileged,
        run_account=Account.current(),
        sql_driver=driver,
        sql_connect=connect,
        dh_parameters=DH_PARAMETERS if DH_PARAMETERS.is_file() else None,
    )
    key = material.keystore.load("tls")  # raises KeyStoreError (one line) when the master secret is wrong
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = DovecotFiles(
        conf=out_dir / CONF_NAME,
        sql=out_dir / SQL_NAME,
        master_sql=out_dir / MASTER_SQL_NAME,
        cert=out_dir / CERT_NAME,
        key=out_dir / KEY_NAME,
        settings=settings,
    )
    write_private_file(files.key, key_pem)
    write_private_file(files.cert, material.tls_cert_path.read_bytes(), 0o644)
    write_private_file(files.sql, render_sql_conf(settings, master=False).encode())
    write_private_file(files.master_sql, render_sql_conf(settings, master=True).encode())
    write_private_file(files.conf, render_dovecot_conf(settings).encode(), 0o644)
    if unprivileged:
        (out_dir / "run").mkdir(mode=0o755, exist_ok=True)  # Dovecot wants its base_dir world-readable
        (out_dir / "state").mkdir(mode=0o700, exist_ok=True)
        if settings.run_account.uid == 0:
            # Started by root, the login processes run as Dovecot's accounts and reach their sockets in run/
            # through here: let them traverse, not list (the secrets inside stay 0600).
            out_dir.chmod(0o711)
    return files

"""The Dovecot configuration renderer: what each file says, the database connection strings, and what is refused."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from mssecure.errors import ConfigError
from mssecure.imap.dovecot import (
    Account,
    DovecotSettings,
    dovecot_listen,
    render_dovecot_conf,
    render_sql_conf,
    sql_connection,
)

MAIL = Account("mssecure", 1001, "mssecure", 1001)


def settings(**changes: object) -> DovecotSettings:
    base = DovecotSettings(
        out_dir=Path("/etc/mssecure/dovecot"),
        hostname="mail.chu-nord.mssante.test",
        domains=("chu-nord.mssante.test", "ehpad-nord.mssante.test"),
        listen="*",
        imap_port=143,
        imaps_port=993,
        maildir_root=Path("/var/lib/mssecure/mail"),
        mail_account=MAIL,
        worker_account=MAIL,
        unprivileged=False,
        run_account=Account("root", 0, "root", 0),
        sql_driver="sqlite",
        sql_connect="/var/lib/mssecure/mssecure.db",
        dh_parameters=None,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def setting(text: str, name: str, *, nested: bool = False) -> list[str]:
    """Values of ``name`` at the top level (``nested``: inside sections too)."""
    indent = r"[ \t]*" if nested else ""
    return [v.strip() for v in re.findall(rf"^{indent}{re.escape(name)} =(.*)$", text, re.MULTILINE)]


def test_the_configuration_requires_tls_and_serves_our_maildirs() -> None:
    text = render_dovecot_conf(settings())
    assert setting(text, "protocols") == ["imap"]
    assert setting(text, "ssl") == ["required"]
    assert setting(text, "disable_plaintext_auth") == ["yes"]
    assert setting(text, "ssl_cert") == ["</etc/mssecure/dovecot/tls.crt"]
    assert setting(text, "ssl_key") == ["</etc/mssecure/dovecot/tls.key"]
    assert setting(text, "ssl_min_protocol") == ["TLSv1.2"]
    assert setting(text, "mail_location") == ["maildir:/var/lib/mssecure/mail/%d/%n"]
    assert setting(text, "port", nested=True) == ["143", "993"]
    assert "inet_listener imaps {\n    port = 993\n    ssl = yes" in text
    # Mail is opened as the account owning the Maildirs, and as no other.
    for name in ("mail_uid", "first_valid_uid", "last_valid_uid", "mail_gid", "first_valid_gid", "last_valid_gid"):
        assert setting(text, name) == ["1001"]
    assert setting(text, "auth_username_format") == ["%Lu"]


def test_logins_go_to_the_directory_and_delegations_to_a_master_passdb() -> None:
    text = render_dovecot_conf(settings())
    assert setting(text, "auth_master_user_separator") == ["*"]
    assert setting(text, "args", nested=True) == [
        "/etc/mssecure/dovecot/dovecot-sql-master.conf.ext",
        "/etc/mssecure/dovecot/dovecot-sql.conf.ext",
        "/etc/mssecure/dovecot/dovecot-sql.conf.ext",
    ]
    master_block = text[text.index("passdb {") : text.index("}", text.index("passdb {"))]
    assert "master = yes" in master_block
    assert "dovecot-sql-master.conf.ext" in master_block


def test_privileged_mode_keeps_dovecot_accounts_and_chroot() -> None:
    text = render_dovecot_conf(settings())
    assert "default_login_user" not in text
    assert "chroot" not in text
    assert "log_path" not in text
    assert setting(text, "base_dir") == ["/run/dovecot-mssecure"]  # beside, not over, a system Dovecot


def test_unprivileged_mode_keeps_everything_in_the_output_directory() -> None:
    me = Account("alice", 1500, "staff", 50)
    text = render_dovecot_conf(settings(unprivileged=True, run_account=me, imap_port=10143, imaps_port=10993))
    assert setting(text, "base_dir") == ["/etc/mssecure/dovecot/run"]
    assert setting(text, "state_dir") == ["/etc/mssecure/dovecot/state"]
    assert setting(text, "log_path") == ["/etc/mssecure/dovecot/dovecot.log"]
    assert setting(text, "default_login_user") == ["alice"]
    assert setting(text, "default_internal_user") == ["alice"]
    assert setting(text, "default_internal_group") == ["staff"]
    assert setting(text, "chroot", nested=True) == ["", ""]  # imap-login and anvil: chroot needs root
    assert setting(text, "port", nested=True) == ["10143", "10993"]


def test_unprivileged_mode_started_by_root_leaves_the_login_accounts_to_dovecot() -> None:
    """Dovecot refuses to run its login processes as root."""
    text = render_dovecot_conf(settings(unprivileged=True))
    assert "default_login_user" not in text
    assert setting(text, "log_path") == ["/etc/mssecure/dovecot/dovecot.log"]


def test_sql_queries_read_mssecure_tables_for_active_local_entries_only() -> None:
    text = render_sql_conf(settings(), master=False)
    assert setting(text, "driver") == ["sqlite"]
    assert setting(text, "connect") == ["/var/lib/mssecure/mssecure.db"]
    (password,) = setting(text, "password_query")
    assert "'{ARGON2ID}' || m.password_hash AS password" in password
    assert "FROM mailboxes m JOIN directory_entries e" in password
    assert "e.status = 'active'" in password
    assert "m.password_hash IS NOT NULL" in password
    assert "e.domain IN ('chu-nord.mssante.test', 'ehpad-nord.mssante.test')" in password
    (user,) = setting(text, "user_query")
    assert "e.status = 'active'" in user
    assert setting(text, "iterate_query")
    assert "password_query" in render_sql_conf(settings(), master=True)


def test_the_delegation_query_checks_the_delegation_and_both_entries() -> None:
    (query,) = setting(render_sql_conf(settings(), master=True), "password_query")
    assert "FROM delegations g" in query
    assert "g.delegate = '%Lu'" in query
    assert "g.organization = '%L{login_user}'" in query
    assert "d.status = 'active' AND o.status = 'active'" in query
    assert "o.kind = 'organizational'" in query
    assert "user_query" not in render_sql_conf(settings(), master=True)


def test_sqlite_url_becomes_the_database_path() -> None:
    assert sql_connection("sqlite:////srv/mssecure/mssecure.db") == ("sqlite", "/srv/mssecure/mssecure.db")


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///:memory:", "sqlite:///relative.db", "sqlite:////srv/with space/x.db",
     "sqlite:////srv/100%/x.db", "sqlite:////srv/a:b/x.db", "mysql://u:p@h/db", "postgresql://u@h",
     "not a url"],
)  # fmt: skip
def test_urls_dovecot_cannot_use_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        sql_connection(url)
    assert "\n" not in str(refused.value)


def test_postgresql_url_becomes_a_libpq_string() -> None:
    driver, connect = sql_connection("postgresql+psycopg://mss:s3cr%27t@db.internal:5433/mssecure?sslmode=verify-full")
    assert driver == "pgsql"
    assert conninfo_to_dict(connect) == {
        "host": "db.internal",
        "port": "5433",
        "dbname": "mssecure",
        "user": "mss",
        "password": "s3cr't",
        "sslmode": "verify-full",
    }


def test_a_password_with_a_control_character_is_refused_and_not_shown() -> None:
    with pytest.raises(ConfigError) as refused:
        sql_connection("postgresql://mss:abc%0Adef@h/db")
    assert "abc" not in str(refused.value)


def test_an_unknown_query_keyword_is_refused() -> None:
    with pytest.raises(ConfigError, match="libpq"):
        sql_connection("postgresql://mss@h/db?x%20y=1")


@given(st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40))
def test_any_password_reaches_libpq_intact(password: str) -> None:
    """libpq's own parser (through psycopg) reads back exactly the password that was quoted."""
    from urllib.parse import quote

    _, connect = sql_connection(f"postgresql://mss:{quote(password, safe='')}@127.0.0.1/mssecure")
    assert conninfo_to_dict(connect)["password"] == password
    assert "\n" not in connect


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("0.0.0.0", "*"), ("::", "*, ::"), ("127.0.0.1", "127.0.0.1"), ("::1", "::1")],  # noqa: S104 - rendered, not bound
)
def test_listen_addresses_in_dovecot_terms(listen: str, expected: str) -> None:
    assert dovecot_listen(listen) == expected


def test_a_listen_value_that_is_not_an_address_is_refused() -> None:
    with pytest.raises(ConfigError):
        dovecot_listen("127.0.0.1 # x")

"""IMAP for mail clients: a Dovecot configuration that serves mssecure's Maildirs and checks mssecure's directory.

mssecure does not speak IMAP itself (DESIGN.md: "IMAP is served by Dovecot authenticating against the directory"):
this package renders the configuration that makes a stock Dovecot 2.3 do it.
"""

from mssecure.imap.client import ClientSettings, Server, autoconfig_xml
from mssecure.imap.dovecot import (
    DEFAULT_IMAP_PORT,
    DEFAULT_IMAPS_PORT,
    MASTER_SEPARATOR,
    Account,
    DovecotFiles,
    DovecotSettings,
    dovecot_listen,
    render_dovecot_conf,
    render_sql_conf,
    sql_connection,
    write_dovecot_config,
)

__all__ = [
    "DEFAULT_IMAPS_PORT",
    "DEFAULT_IMAP_PORT",
    "MASTER_SEPARATOR",
    "Account",
    "ClientSettings",
    "DovecotFiles",
    "DovecotSettings",
    "Server",
    "autoconfig_xml",
    "dovecot_listen",
    "render_dovecot_conf",
    "render_sql_conf",
    "sql_connection",
    "write_dovecot_config",
]

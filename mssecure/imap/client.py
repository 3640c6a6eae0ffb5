"""What a professional types into a mail client, and the same as a Thunderbird autoconfig file.

Incoming mail is IMAP (Dovecot, ``imap.dovecot``), outgoing mail the relay's submission ports; both on the operator's
host name, both over TLS, both with the address as user name and its password (``directory set-password``).

The autoconfig file follows Mozilla's ISPDB format (``clientConfig version="1.1"``): Thunderbird fetches it from
``https://autoconfig.<domain>/mail/config-v1.1.xml`` (or ``/.well-known/autoconfig/mail/config-v1.1.xml`` on the
domain) and fills in every field. Servers are listed best first: implicit TLS (RFC 8314 §3) before STARTTLS.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ClientSettings", "Server", "autoconfig_xml"]

# ISPDB values: "SSL" is TLS from the first byte, "STARTTLS" the mandatory upgrade on the plain port.
SECURITY_LABELS = {"SSL": "SSL/TLS", "STARTTLS": "STARTTLS"}


@dataclass(frozen=True)
class Server:
    protocol: str  # imap | smtp
    hostname: str
    port: int
    socket_type: str  # SSL | STARTTLS

    @property
    def security(self) -> str:
        return SECURITY_LABELS[self.socket_type]


@dataclass(frozen=True)
class ClientSettings:
    """The settings of one address: servers best first, the user name, and the mailboxes it may open as delegate."""

    address: str
    display_name: str
    domain: str
    domains: tuple[str, ...]  # every domain of the operator, the address's first
    incoming: tuple[Server, ...]
    outgoing: tuple[Server, ...]
    kind: str
    has_password: bool
    delegated_mailboxes: tuple[str, ...] = ()  # organizational mailboxes this person may open
    delegates: tuple[str, ...] = ()  # for an organizational mailbox: who may open it

    @property
    def username(self) -> str:
        return self.address

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["username"] = self.username
        data["authentication"] = "normal password"
        for side in ("incoming", "outgoing"):
            data[side] = [{**server, "security": SECURITY_LABELS[server["socket_type"]]} for server in data[side]]
        return data


def _server(parent: ET.Element, tag: str, server: Server) -> None:
    element = ET.SubElement(parent, tag, type=server.protocol)
    ET.SubElement(element, "hostname").text = server.hostname
    ET.SubElement(element, "port").text = str(server.port)
    ET.SubElement(element, "socketType").text = server.socket_type
    ET.SubElement(element, "authentication").text = "password-cleartext"  # inside TLS only: both ports require it
    ET.SubElement(element, "username").text = "%EMAILADDRESS%"


def autoconfig_xml(settings: ClientSettings, *, provider_name: str) -> bytes:
    """``config-v1.1.xml`` for the address's domain: one file serves every address of it (``%EMAILADDRESS%``)."""
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=settings.domain)
    for domain in settings.domains:
        ET.SubElement(provider, "domain").text = domain
    ET.SubElement(provider, "displayName").text = provider_name
    ET.SubElement(provider, "displayShortName").text = settings.domain
    for server in settings.incoming:
        _server(provider, "incomingServer", server)
    for server in settings.outgoing:
        _server(provider, "outgoingServer", server)
    ET.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + (ET.tostring(root, encoding="unicode") + "\n").encode()

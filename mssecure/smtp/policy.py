"""The relay's policy: pure decisions over the envelope, the message header and the directory — no sockets, no
database. Each check returns nothing when it accepts and raises ``Refused`` (the reply for the client or peer, the
precise reason for the log) when it refuses.

What the trust space requires (MSSanté rules, Direct Project): a sender is an active certified address, and
authenticated as itself or as an organizational mailbox it is a delegate of; every recipient is an active certified
address in a trust-space domain; a peer operator speaks only for its own domains and only to our own addresses.
"""

from __future__ import annotations

import re
from collections.abc import Set
from dataclasses import dataclass
from typing import Protocol

from mssecure.crypto.smime import is_canonical
from mssecure.errors import Refused
from mssecure.smtp import replies

__all__ = [
    "EntryView",
    "PolicyView",
    "check_bare_line_endings",
    "check_header_from",
    "check_header_size",
    "check_inbound_recipient",
    "check_inbound_sender",
    "check_submission_recipient",
    "check_submission_sender",
    "domain_of",
]


@dataclass(frozen=True)
class EntryView:
    """What the policy needs to know of a directory entry."""

    address: str
    kind: str
    status: str
    local: bool


class PolicyView(Protocol):
    """The directory and the trust space, as the policy sees them."""

    local_domains: Set[str]

    def entry(self, address: str) -> EntryView | None: ...

    def is_delegate(self, organization: str, person: str) -> bool: ...

    def trusted_domains(self) -> Set[str]: ...


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def check_submission_sender(authenticated: str, mail_from: str, view: PolicyView) -> EntryView:
    """MAIL FROM at submission: the authenticated address, or an organizational mailbox it is a delegate of, and
    an active local entry either way."""
    sender = mail_from.lower()
    if not sender:
        raise Refused(replies.SENDER_NOT_AUTHENTICATED, "empty MAIL FROM at submission")
    if sender != authenticated.lower():
        entry = view.entry(sender)
        if entry is None or entry.kind != "organizational" or not view.is_delegate(sender, authenticated.lower()):
            raise Refused(
                replies.SENDER_NOT_AUTHENTICATED, f"MAIL FROM {sender} by {authenticated}, who is not its delegate"
            )
    entry = view.entry(sender)
    if entry is None or not entry.local:
        raise Refused(replies.SENDER_NOT_ACTIVE, f"sender {sender} is not a local directory entry")
    if entry.status != "active":
        raise Refused(replies.SENDER_NOT_ACTIVE, f"sender {sender} is {entry.status}")
    return entry


def check_submission_recipient(recipient: str, view: PolicyView) -> EntryView:
    """RCPT TO at submission: an active certified address, local or of a trusted peer."""
    address = recipient.lower()
    domain = domain_of(address)
    if domain not in view.local_domains and domain not in view.trusted_domains():
        raise Refused(replies.RECIPIENT_OUTSIDE_TRUST_SPACE, f"recipient domain {domain} is not in the trust space")
    entry = view.entry(address)
    if entry is None:
        raise Refused(replies.RECIPIENT_UNKNOWN, f"recipient {address} is not in the directory")
    if entry.status != "active":
        raise Refused(replies.RECIPIENT_NOT_ACTIVE, f"recipient {address} is {entry.status}")
    return entry


def check_inbound_sender(mail_from: str, peer_domains: Set[str]) -> None:
    """MAIL FROM from a peer operator: an address in one of the domains its trust bundle lists."""
    sender = mail_from.lower()
    if not sender:
        return  # a null reverse-path (a peer's DSN) is allowed; its content is checked like any other
    if domain_of(sender) not in peer_domains:
        raise Refused(
            replies.SENDER_OUTSIDE_TRUST_SPACE,
            f"MAIL FROM {sender} is not in the domains of the connected operator ({', '.join(sorted(peer_domains))})",
        )


def check_inbound_recipient(recipient: str, view: PolicyView) -> EntryView:
    """RCPT TO from a peer operator: one of our active entries (we relay for nobody)."""
    address = recipient.lower()
    if domain_of(address) not in view.local_domains:
        raise Refused(replies.RECIPIENT_NOT_LOCAL, f"relaying to {address} refused")
    entry = view.entry(address)
    if entry is None or not entry.local:
        raise Refused(replies.RECIPIENT_UNKNOWN, f"recipient {address} is not in the directory")
    if entry.status != "active":
        raise Refused(replies.RECIPIENT_NOT_ACTIVE, f"recipient {address} is {entry.status}")
    return entry


_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def check_bare_line_endings(data: bytes) -> None:
    """RFC 5321 §2.3.8: CR and LF only as a CRLF pair. A bare one is how SMTP smuggling (CVE-2023-51764 class)
    hides a second message; refuse it rather than repair it."""
    if is_canonical(data):
        return  # every CR and every LF is in a CRLF pair (linear scans in C: large messages stay cheap)
    found = _BARE.search(data)
    if found is not None:
        which = "CR" if data[found.start() : found.start() + 1] == b"\r" else "LF"
        raise Refused(replies.BARE_LINE_ENDING, f"bare {which} at offset {found.start()}")


def check_header_size(data: bytes, limit: int) -> int:
    """The length of the header (up to the blank line); refused when larger than ``limit`` or without an end."""
    end = data.find(b"\r\n\r\n", 0, limit + 4)
    if end < 0:
        if len(data) <= limit and data.endswith(b"\r\n"):
            return len(data)  # a message with a header and no body
        raise Refused(replies.HEADER_TOO_BIG, f"header larger than {limit} bytes or not terminated")
    return end + 2


def check_header_from(header_from: str | None, mail_from: str) -> None:
    """The header From is the envelope sender (one mailbox, compared case-insensitively)."""
    if header_from is None:
        raise Refused(replies.HEADER_FROM_MISMATCH, "the message has not exactly one From with one address")
    if header_from.lower() != mail_from.lower():
        raise Refused(replies.HEADER_FROM_MISMATCH, f"header From {header_from} differs from MAIL FROM {mail_from}")

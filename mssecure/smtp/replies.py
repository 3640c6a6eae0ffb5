"""SMTP replies as values: every reply the relay sends is one of these constants (or built by one of them).

RFC 5321 §4.2 (reply codes) with RFC 3463 enhanced status codes (RFC 2034). Texts sent to a client or a peer name the
problem but never carry patient data, nor the detail of a cryptographic failure (that goes to the log and the
archive). Tests assert against these same constants.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Reply"]


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)


# 2xx
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "recipient OK")
QUEUED = Reply(250, "2.0.0", "queued")  # the text gets " as <queue id>"
AUTH_OK = Reply(235, "2.7.0", "authentication successful")

# 4xx: try again later
TEMPORARY_FAILURE = Reply(451, "4.3.0", "temporary failure, try again later")
TOO_MANY_AUTH_FAILURES = Reply(454, "4.7.0", "too many authentication failures, try again later")
TOO_MANY_COMMANDS = Reply(421, "4.7.0", "too many commands, closing connection")
TRUST_UNAVAILABLE = Reply(451, "4.7.5", "cannot check the sender's operator now, try again later")

# 5xx: refused
AUTH_REQUIRED = Reply(530, "5.7.0", "authentication required")
TLS_REQUIRED = Reply(530, "5.7.0", "must issue a STARTTLS command first")
AUTH_INVALID = Reply(535, "5.7.8", "authentication credentials invalid")
CLIENT_CERT_REQUIRED = Reply(530, "5.7.14", "a client certificate issued by this operator is required")
CLIENT_CERT_MISMATCH = Reply(535, "5.7.8", "the client certificate does not belong to this login")
SENDER_NOT_AUTHENTICATED = Reply(550, "5.7.1", "sender address is not the authenticated address")
SENDER_NOT_ACTIVE = Reply(550, "5.7.1", "sender is not an active certified health address")
SENDER_OUTSIDE_TRUST_SPACE = Reply(550, "5.7.1", "sender domain is not served by the connected operator")
PEER_CERT_REQUIRED = Reply(550, "5.7.1", "a client certificate of a trusted operator is required")
PEER_CERT_UNTRUSTED = Reply(550, "5.7.1", "the client certificate is not that of a trusted operator's relay")
RECIPIENT_UNKNOWN = Reply(550, "5.1.1", "recipient is not a certified health address")
RECIPIENT_NOT_ACTIVE = Reply(550, "5.7.1", "recipient is not an active certified health address")
RECIPIENT_OUTSIDE_TRUST_SPACE = Reply(550, "5.7.1", "recipient domain is not in the health trust space")
RECIPIENT_NOT_LOCAL = Reply(550, "5.7.1", "recipient is not served by this operator")
RECIPIENT_NO_CERTIFICATE = Reply(550, "5.7.1", "recipient has no valid encryption certificate")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "too many recipients")
HEADER_FROM_MISMATCH = Reply(550, "5.7.1", "header From is not the envelope sender")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "message size exceeds the fixed limit")
HEADER_TOO_BIG = Reply(552, "5.3.4", "message header exceeds the fixed limit")
BARE_LINE_ENDING = Reply(550, "5.6.11", "bare CR or LF in message content (RFC 5321 section 2.3.8)")
MALFORMED_MESSAGE = Reply(550, "5.6.0", "malformed message")
BAD_ADDRESS = Reply(501, "5.1.3", "bad address syntax")
NOT_SIGNED = Reply(550, "5.7.1", "message is not S/MIME signed by a certified sender")
NOT_ENCRYPTED = Reply(550, "5.7.1", "message is not S/MIME encrypted")
VERIFICATION_FAILED = Reply(550, "5.7.1", "verification failed")  # one generic reply: the detail goes to the log
DECRYPTION_FAILED = Reply(550, "5.7.5", "cannot decrypt the message for this recipient")
SIGNING_FAILED = Reply(554, "5.7.1", "sender has no valid signing certificate")
XDM_INVALID = Reply(550, "5.6.0", "invalid XDM package")  # the text gets ": <reason>" (no patient data in it)
PRESCRIPTION_CONFLICT = Reply(550, "5.6.0", "the message names more than one prescription identifier")
PRESCRIPTION_DUPLICATE = Reply(550, "5.7.1", "this prescription was already delivered to another mailbox")

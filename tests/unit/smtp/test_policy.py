"""The relay's policy, without sockets: every refusal carries its reply constant and a reason for the log."""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssecure.errors import Refused
from mssecure.smtp import replies
from mssecure.smtp.policy import (
    EntryView,
    check_bare_line_endings,
    check_header_from,
    check_header_size,
    check_inbound_recipient,
    check_inbound_sender,
    check_submission_recipient,
    check_submission_sender,
)

A = "chu-nord.mssante.test"
B = "pharma-sud.mssante.test"


@dataclass
class View:
    entries: dict[str, EntryView]
    delegations: set[tuple[str, str]] = field(default_factory=set)
    local_domains: Set[str] = frozenset({A})
    trusted: Set[str] = frozenset({B})

    def entry(self, address: str) -> EntryView | None:
        return self.entries.get(address)

    def is_delegate(self, organization: str, person: str) -> bool:
        return (organization, person) in self.delegations

    def trusted_domains(self) -> Set[str]:
        return self.trusted


def entry(address: str, kind: str = "personal", status: str = "active") -> EntryView:
    return EntryView(address, kind, status, address.endswith("@" + A))


DOCTOR, NURSE, SERVICE = f"dr@{A}", f"nurse@{A}", f"cardio@{A}"
PHARMACY, GONE = f"pharmacie@{B}", f"ancien@{B}"
VIEW = View(
    {
        DOCTOR: entry(DOCTOR),
        NURSE: entry(NURSE, status="suspended"),
        SERVICE: entry(SERVICE, "organizational"),
        PHARMACY: entry(PHARMACY, "organizational"),
        GONE: entry(GONE, status="revoked"),
    },
    {(SERVICE, DOCTOR)},
)


def refused(call: object, *args: object) -> Refused:
    with pytest.raises(Refused) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


def test_the_authenticated_sender_and_its_organizational_mailbox_are_accepted() -> None:
    assert check_submission_sender(DOCTOR, DOCTOR.upper(), VIEW).address == DOCTOR
    assert check_submission_sender(DOCTOR, SERVICE, VIEW).address == SERVICE


def test_a_sender_other_than_the_login_is_refused() -> None:
    error = refused(check_submission_sender, DOCTOR, f"other@{A}", VIEW)
    assert error.reply == replies.SENDER_NOT_AUTHENTICATED
    assert DOCTOR in error.reason
    assert refused(check_submission_sender, NURSE, SERVICE, VIEW).reply == replies.SENDER_NOT_AUTHENTICATED
    assert refused(check_submission_sender, DOCTOR, "", VIEW).reply == replies.SENDER_NOT_AUTHENTICATED


def test_a_suspended_sender_is_refused() -> None:
    error = refused(check_submission_sender, NURSE, NURSE, VIEW)
    assert error.reply == replies.SENDER_NOT_ACTIVE
    assert "suspended" in error.reason


@pytest.mark.parametrize(
    ("recipient", "reply"),
    [
        (f"unknown@{B}", replies.RECIPIENT_UNKNOWN),
        (GONE, replies.RECIPIENT_NOT_ACTIVE),
        (NURSE, replies.RECIPIENT_NOT_ACTIVE),
        ("someone@gmail.com", replies.RECIPIENT_OUTSIDE_TRUST_SPACE),
    ],
)
def test_recipient_refusals(recipient: str, reply: replies.Reply) -> None:
    assert refused(check_submission_recipient, recipient, VIEW).reply == reply


def test_active_recipients_local_and_remote_are_accepted() -> None:
    assert check_submission_recipient(PHARMACY, VIEW).local is False
    assert check_submission_recipient(DOCTOR, VIEW).local is True


def test_inbound_sender_must_be_in_the_peer_domains() -> None:
    check_inbound_sender(PHARMACY, frozenset({B}))
    check_inbound_sender("", frozenset({B}))
    assert refused(check_inbound_sender, DOCTOR, frozenset({B})).reply == replies.SENDER_OUTSIDE_TRUST_SPACE


def test_inbound_recipient_must_be_one_of_ours_and_active() -> None:
    assert check_inbound_recipient(DOCTOR, VIEW).address == DOCTOR
    assert refused(check_inbound_recipient, PHARMACY, VIEW).reply == replies.RECIPIENT_NOT_LOCAL
    assert refused(check_inbound_recipient, f"x@{A}", VIEW).reply == replies.RECIPIENT_UNKNOWN
    assert refused(check_inbound_recipient, NURSE, VIEW).reply == replies.RECIPIENT_NOT_ACTIVE


@pytest.mark.parametrize("data", [b"a\nb\r\n", b"a\rb\r\n", b"a\r\r\n", b"\n", b"x\r\n\n"])
def test_bare_line_endings_are_refused(data: bytes) -> None:
    assert refused(check_bare_line_endings, data).reply == replies.BARE_LINE_ENDING


@given(st.lists(st.binary().map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))))
def test_crlf_only_text_is_accepted(lines: list[bytes]) -> None:
    check_bare_line_endings(b"\r\n".join(lines))


@given(st.binary(max_size=200))
def test_bare_line_ending_check_never_crashes(data: bytes) -> None:
    bare = b"\r" in data.replace(b"\r\n", b"") or b"\n" in data.replace(b"\r\n", b"")
    if bare:
        assert refused(check_bare_line_endings, data).reply == replies.BARE_LINE_ENDING
    else:
        check_bare_line_endings(data)


def test_header_size_limit() -> None:
    assert check_header_size(b"Subject: x\r\n\r\nbody", 100) == 12
    assert refused(check_header_size, b"X: " + b"a" * 200 + b"\r\n\r\n", 100).reply == replies.HEADER_TOO_BIG


def test_header_from_must_be_the_envelope_sender() -> None:
    check_header_from(DOCTOR.upper(), DOCTOR)
    assert refused(check_header_from, NURSE, DOCTOR).reply == replies.HEADER_FROM_MISMATCH
    assert refused(check_header_from, None, DOCTOR).reply == replies.HEADER_FROM_MISMATCH


def test_replies_are_ascii_with_enhanced_codes() -> None:
    for value in vars(replies).values():
        if isinstance(value, replies.Reply):
            str(value).encode("ascii")
            assert value.enhanced[0] == str(value.code)[0]

"""``mssecure queue``: what waits for delivery, and the operator's hands on it."""

from __future__ import annotations

from typing import Any

import click

from mssecure.cli._context import CliContext
from mssecure.cli._output import echo_json, echo_table
from mssecure.db import make_sessionmaker
from mssecure.smtp.events import Event
from mssecure.smtp.models import QUEUE_STATES, QueuedMessage
from mssecure.smtp.queue import Queue, Spool

__all__ = ["queue"]

pass_cli = click.make_pass_decorator(CliContext)


def _queue(cli: CliContext) -> Queue:
    config = cli.config
    return Queue(make_sessionmaker(cli.engine), Spool(config.data_dir / "spool"),
                 retry_schedule=config.delivery.retry_schedule, max_lifetime=config.delivery.max_lifetime,
                 journal=cli.journal)  # fmt: skip


def _json(message: QueuedMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "origin": message.origin,
        "kind": message.kind,
        "destination": message.destination,
        "sender": message.sender,
        "message_id": message.message_id,
        "sha256": message.sha256,
        "size": message.size,
        "created_at": message.created_at,
        "expires_at": message.expires_at,
        "recipients": [
            {
                "address": r.address,
                "state": r.state,
                "attempts": r.attempts,
                "next_attempt_at": r.next_attempt_at,
                "last_error": r.last_error,
            }
            for r in message.recipients
        ],
    }


@click.group()
def queue() -> None:
    """The delivery queue: list, show, retry, delete."""


@queue.command("list")
@click.option("--state", type=click.Choice(QUEUE_STATES), help="Only messages with a recipient in this state.")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def list_(cli: CliContext, state: str | None, as_json: bool) -> None:
    """List the queued messages."""
    messages = _queue(cli).messages(state=state)
    if as_json:
        echo_json([_json(m) for m in messages])
        return
    rows = [
        (m.id, f"{m.created_at:%Y-%m-%d %H:%M:%S}", m.destination, m.sender or "<>",
         ", ".join(f"{r.address} ({r.state}, {r.attempts})" for r in m.recipients))
        for m in messages
    ]  # fmt: skip
    echo_table(("ID", "QUEUED", "DESTINATION", "SENDER", "RECIPIENTS (STATE, ATTEMPTS)"), rows)
    click.echo(f"{len(messages)} message(s)", err=True)


@queue.command("show")
@click.argument("queue_id")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def show(cli: CliContext, queue_id: str, as_json: bool) -> None:
    """Show one queued message: envelope, size, hash and every recipient's state and last error."""
    message = _queue(cli).get(queue_id)
    data = _json(message)
    if as_json:
        echo_json(data)
        return
    for key in ("id", "origin", "kind", "destination", "sender", "message_id", "sha256", "size", "created_at",
                "expires_at"):  # fmt: skip
        click.echo(f"{key:<12} {data[key]}")
    for recipient in data["recipients"]:
        click.echo(f"recipient    {recipient['address']}: {recipient['state']}, {recipient['attempts']} attempt(s), "
                   f"next {recipient['next_attempt_at']:%Y-%m-%d %H:%M:%S}")  # fmt: skip
        if recipient["last_error"]:
            click.echo(f"             last error: {recipient['last_error']}")


@queue.command("retry")
@click.argument("queue_id", required=False)
@click.option("--all", "everything", is_flag=True, help="Retry every deferred message now.")
@pass_cli
def retry(cli: CliContext, queue_id: str | None, everything: bool) -> None:
    """Make a deferred message (or --all) due now; a running relay picks it up within a second."""
    if bool(queue_id) == everything:
        raise click.UsageError("give a queue id or --all")

    def made_due(count: int) -> list[Event]:
        return [Event("queue.retry", "ok", actor=cli.operator_account, queue_id=queue_id, reason=f"{count} due now")]

    count = _queue(cli).retry(None if everything else queue_id, made_due)
    click.echo(f"{count} recipient(s) due now")


@queue.command("delete")
@click.argument("queue_id")
@pass_cli
def delete(cli: CliContext, queue_id: str) -> None:
    """Delete a queued message without delivering it (no notice is sent; the deletion is recorded)."""
    message = _queue(cli).delete(queue_id, lambda message: [
        Event("queue.delete", "ok", actor=cli.operator_account, queue_id=message.id, message_id=message.message_id,
              sha256=message.sha256, sender=message.sender, recipients=tuple(r.address for r in message.recipients),
              reason="deleted by the operator; no notice sent")])  # fmt: skip
    click.echo(f"Deleted {message.id} ({len(message.recipients)} recipient(s))")

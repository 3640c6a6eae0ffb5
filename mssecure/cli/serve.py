"""``mssecure serve``: run the relay until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import click

from mssecure.cli._context import CliContext

__all__ = ["serve"]

pass_cli = click.make_pass_decorator(CliContext)


@click.command()
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info", show_default=True)
@pass_cli
def serve(cli: CliContext, log_level: str) -> None:
    """Run the relay: submission (587, 465), inbound from peers (25) and delivery, until stopped.

    Logs one JSON line per decision on standard error (no message body, no secret).
    """
    from mssecure.smtp.relay import Relay

    logging.basicConfig(stream=sys.stderr, level=getattr(logging, log_level.upper()),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")  # fmt: skip
    for noisy in ("mail.log", "aiosmtpd", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    relay = Relay(cli.config)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await relay.start()
        ports = ", ".join(f"{name} {port}" for name, port in relay.ports.items())
        logging.getLogger("mssecure.relay").info("relay %s listening on %s: %s", cli.config.operator.hostname,
                                                 cli.config.smtp.listen, ports)  # fmt: skip
        click.echo(f"mssecure relay {cli.config.operator.hostname} ready ({ports})", err=True)
        try:
            await stop.wait()
        finally:
            await relay.stop()

    asyncio.run(main())

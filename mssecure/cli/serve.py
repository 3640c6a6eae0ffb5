"""``mssecure serve``: run the relay until SIGTERM or SIGINT — one process, or a parent and its workers.

With ``[smtp] workers`` above 1, the parent prepares what must happen once (the spool, the DSN identity, the CRL),
opens the listening sockets, then forks the workers: each runs its own event loop on the shared sockets (the kernel
hands each new connection to one of them) and claims from the shared queue. The parent holds no database
connection and no thread when it forks; it forwards SIGTERM/SIGINT and restarts a worker that dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time

import click

from mssecure.cli._context import CliContext
from mssecure.config import Config

__all__ = ["serve"]

pass_cli = click.make_pass_decorator(CliContext)

log = logging.getLogger("mssecure.relay")


@click.command()
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info", show_default=True)
@click.option("--workers", type=click.IntRange(min=0), help="Relay processes (default: [smtp] workers; 0: one per "
              "core).")  # fmt: skip
@pass_cli
def serve(cli: CliContext, log_level: str, workers: int | None) -> None:
    """Run the relay: submission (587, 465), inbound from peers (25) and delivery, until stopped.

    Logs one JSON line per decision on standard error (no message body, no secret).
    """
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, log_level.upper()),
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")  # fmt: skip
    for noisy in ("mail.log", "aiosmtpd", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = cli.config
    count = config.smtp.workers if workers is None else workers
    count = count or os.cpu_count() or 1
    if count == 1:
        asyncio.run(_run_worker(config, worker=0, sockets=None, announce=True))
    else:
        _supervise(config, count)


async def _run_worker(config: Config, *, worker: int, sockets: dict[str, socket.socket] | None,
                      announce: bool) -> None:  # fmt: skip
    from mssecure.smtp.relay import Relay

    relay = Relay(config, worker=worker, sockets=sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await relay.start(prepare=sockets is None)
    ports = ", ".join(f"{name} {port}" for name, port in relay.ports.items())
    if announce:
        log.info("relay %s listening on %s: %s", config.operator.hostname, config.smtp.listen, ports)
        click.echo(f"mssecure relay {config.operator.hostname} ready ({ports})", err=True)
    else:
        log.info("worker %d started", worker)
    try:
        await stop.wait()
    finally:
        await relay.stop()


def _listen(config: Config) -> dict[str, socket.socket]:
    ports = {"submission": config.smtp.submission_port, "submissions": config.smtp.submissions_port,
             "inbound": config.smtp.inbound_port}  # fmt: skip
    family = socket.AF_INET6 if ":" in config.smtp.listen else socket.AF_INET
    opened: dict[str, socket.socket] = {}
    for name, port in ports.items():
        if port:
            sock = socket.create_server((config.smtp.listen, port), family=family, backlog=512)
            sock.setblocking(False)
            opened[name] = sock
    return opened


def _supervise(config: Config, count: int) -> None:
    """The parent of ``count`` workers: prepare, listen, fork, then restart any worker that dies until stopped."""
    from mssecure.smtp.relay import Relay

    asyncio.run(Relay(config).prepare())  # before any fork: no connection, no thread left behind
    sockets = _listen(config)
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    children: dict[int, int] = {}  # pid → worker number
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)

    def fork(worker: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                asyncio.run(_run_worker(config, worker=worker, sockets=sockets, announce=False))
            except BaseException:
                log.exception("worker %d failed", worker)
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = worker

    for worker in range(count):
        fork(worker)
    ports = ", ".join(f"{name} {sock.getsockname()[1]}" for name, sock in sockets.items())
    log.info("relay %s listening on %s: %s (%d workers)", config.operator.hostname, config.smtp.listen, ports, count)
    click.echo(f"mssecure relay {config.operator.hostname} ready ({ports}; {count} workers)", err=True)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children or stopping:
            children.pop(pid, None)
            continue
        worker = children.pop(pid)
        log.error("worker %d (pid %d) ended with status %d: starting another", worker, pid, status)
        time.sleep(1)
        if not stopping:
            fork(worker)
    for sock in sockets.values():
        sock.close()

"""Placeholder: commands are being written (issue 6)."""

from __future__ import annotations

import click

__all__ = ["COMMANDS"]

COMMANDS: tuple[click.Command, ...] = ()

"""Terminal output: aligned tables, JSON, and the entry detail view."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from itertools import islice
from typing import Any

import click

__all__ = ["echo_json", "echo_json_lines", "echo_table", "to_jsonable"]

_MAX_WIDTH = 48
_SAMPLE = 1000  # rows used to size the columns; later rows are cut to fit


def to_jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def echo_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), ensure_ascii=False, indent=2))


def echo_json_lines(values: Iterable[Any]) -> int:
    """A JSON array written one element per line, streamed; returns the number of elements."""
    count = 0
    for value in values:
        click.echo(("[" if count == 0 else ",") + "\n" + json.dumps(to_jsonable(value), ensure_ascii=False), nl=False)
        count += 1
    click.echo("[]" if count == 0 else "\n]")
    return count


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = " ".join(str(value).split())
    return text


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def echo_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """Print rows under headers, columns aligned; returns the number of rows."""
    iterator = iter(rows)
    first = [[_cell(v) for v in row] for row in islice(iterator, _SAMPLE)]
    widths = [min(_MAX_WIDTH, max([len(h), *(len(r[i]) for r in first)])) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(_fit(c, w).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    click.echo(line([h.upper() for h in headers]))
    count = 0
    for row in first:
        click.echo(line(row))
        count += 1
    for rest in iterator:
        click.echo(line([_cell(v) for v in rest]))
        count += 1
    return count

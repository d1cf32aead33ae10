"""Output conventions shared by every command: tables for people, JSON for machines,
and a progress indicator that only appears on a terminal (quiet in CI and pipes)."""

import json
import os
import sys
import textwrap
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def print_json(value, stream=None) -> None:
    """Print ``value`` as indented JSON followed by a newline."""
    stream = stream or sys.stdout
    json.dump(value, stream, indent=2, sort_keys=False, default=str)
    stream.write("\n")


def table_width(stream=None) -> int | None:
    """How wide a table may be: ``$COLUMNS`` when set, else the terminal's width when
    ``stream`` is a terminal, else unlimited (a pipe or a log file keeps whole lines)."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    stream = stream or sys.stdout
    try:
        if stream.isatty():
            return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        pass
    return None


#: The narrowest a column is squeezed to before its cells wrap.
MIN_COLUMN = 8


def _fit(widths: list[int], limit: int) -> list[int]:
    """Narrow the widest columns, evenly, until the row (with 2-space gaps) fits ``limit``:
    the widest gives way first, down to the next widest, then both together."""
    widths = list(widths)
    gaps = 2 * (len(widths) - 1)
    while (excess := sum(widths) + gaps - limit) > 0:
        widest = max(range(len(widths)), key=widths.__getitem__)
        if widths[widest] <= MIN_COLUMN:
            break
        others = [w for i, w in enumerate(widths) if i != widest]
        floor = max(max(others, default=MIN_COLUMN), MIN_COLUMN)
        step = min(excess, widths[widest] - floor) or 1
        widths[widest] -= step
    return widths


def _wrap(cell: str, width: int) -> list[str]:
    if len(cell) <= width:
        return [cell]
    return textwrap.wrap(cell, width, break_long_words=True, break_on_hyphens=False) or [""]


def format_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    title: str | None = None,
    width: int | None = None,
) -> str:
    """Render rows as a plain aligned text table (no colours: safe in logs and pipes).

    With ``width``, the widest columns are narrowed to fit and their cells wrap onto
    continuation lines: no line is longer than ``width`` (``--json`` keeps every cell
    whole)."""
    rows = [["" if c is None else str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    if width is not None:
        widths = _fit(widths, width)
    lines = []
    if title:
        lines.append(title)

    def emit(cells: Sequence[str]) -> None:
        wrapped = [_wrap(c, w) for c, w in zip(cells, widths, strict=True)]
        for k in range(max(len(w) for w in wrapped)):
            parts = [
                (w[k] if k < len(w) else "").ljust(cw)
                for w, cw in zip(wrapped, widths, strict=True)
            ]
            lines.append("  ".join(parts).rstrip())

    emit(list(headers))
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        emit(row)
    return "\n".join(lines)


def print_table(headers, rows, title=None, stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(format_table(headers, rows, title, width=table_width(stream)) + "\n")


def show_progress() -> bool:
    """Progress bars only on an interactive terminal, never under CI."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress(items: Sequence[T], label: str) -> Iterator[T]:
    """Yield ``items``, drawing a one-line progress bar on stderr when on a terminal."""
    if not show_progress() or len(items) < 2:
        yield from items
        return
    total = len(items)
    start = last = time.monotonic()
    for i, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last > 0.1 or i == total:
            last = now
            filled = int(30 * i / total)
            sys.stderr.write(
                f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {i}/{total} {now - start:.1f}s"
            )
            sys.stderr.flush()
    sys.stderr.write("\n")

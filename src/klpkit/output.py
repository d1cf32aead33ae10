"""Output conventions shared by every command: tables for people, JSON for machines,
and a progress indicator that only appears on a terminal (quiet in CI and pipes)."""

import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def print_json(value, stream=None) -> None:
    """Print ``value`` as indented JSON followed by a newline."""
    stream = stream or sys.stdout
    json.dump(value, stream, indent=2, sort_keys=False, default=str)
    stream.write("\n")


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]], title: str | None = None) -> str:
    """Render rows as a plain aligned text table (no colours: safe in logs and pipes)."""
    rows = [["" if c is None else str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def print_table(headers, rows, title=None, stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(format_table(headers, rows, title) + "\n")


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

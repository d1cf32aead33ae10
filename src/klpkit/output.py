"""Output conventions shared by every command: tables for people, JSON for machines,
and a progress indicator that only appears on a terminal (quiet in CI and pipes).

Names come from the files as bytes and are decoded UTF-8 with ``surrogateescape``: a
byte that is not UTF-8 becomes a lone surrogate, which no strict encoder (a UTF-8
locale's stdout, ``PYTHONIOENCODING=utf-8``, a JSON consumer) accepts.  Everything
printed therefore passes :func:`printable`, which shows such a byte as ``\\xNN``: in
tables and JSON alike, and (through :data:`ESCAPE`, the error handler the CLI gives
stdout and stderr) in every other line a command prints.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import json
import os
import sys
import textwrap
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, TypeVar

from klpkit.errors import InputError
from klpkit.numbers import parse_decimal

T = TypeVar("T")

#: The codec error handler that writes what an encoding cannot hold as an escape: a
#: byte kept by ``surrogateescape`` as ``\\xNN`` (the byte the file had), any other
#: character as ``backslashreplace`` writes it.
ESCAPE = "klpkit-escape"


def _escape(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeEncodeError):
        raise err
    out = []
    for ch in err.object[err.start : err.end]:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out), err.end


codecs.register_error(ESCAPE, _escape)


def printable(text: str) -> str:
    """``text`` as valid UTF-8 for any output: each byte of a name that was not UTF-8
    (a lone surrogate of ``surrogateescape``) written ``\\xNN``."""
    if text.isascii():
        return text
    return text.encode("utf-8", ESCAPE).decode("utf-8")


def printable_json(value: object) -> object:
    """``value`` with every string (keys included) made :func:`printable`: what
    :func:`print_json` writes."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {
            printable(k) if isinstance(k, str) else k: printable_json(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [printable_json(v) for v in value]
    return value


def _json_default(value: object) -> str:
    return printable(str(value))


def print_json(value: object, stream: IO[str] | None = None) -> None:
    """Print ``value`` as indented JSON followed by a newline."""
    stream = stream or sys.stdout
    json.dump(printable_json(value), stream, indent=2, sort_keys=False, default=_json_default)
    stream.write("\n")


@contextlib.contextmanager
def escaping(*streams: IO[str]) -> Iterator[None]:
    """While the block runs, give each text stream the :data:`ESCAPE` error handler, so
    that no line a command prints (a path from the command line, a name in a message)
    fails to encode; the streams' own handlers are restored afterwards.  A stream that
    cannot be reconfigured (a ``StringIO``) holds any text anyway."""
    restore = []
    for stream in streams:
        old = getattr(stream, "errors", None)
        if isinstance(stream, io.TextIOWrapper) and old != ESCAPE:
            with contextlib.suppress(ValueError, OSError):  # closed: nothing is printed
                stream.reconfigure(errors=ESCAPE)
                restore.append((stream, old))
    try:
        yield
    finally:
        for stream, old in restore:
            with contextlib.suppress(ValueError, OSError):  # closed, or its pipe gone
                stream.reconfigure(errors=old)


def _columns_from_env() -> int | None:
    env = os.environ.get("COLUMNS", "")
    try:
        columns = parse_decimal(env, "$COLUMNS", limit=1 << 20)
    except InputError:
        return None
    return columns or None


def table_width(stream: IO[str] | None = None) -> int | None:
    """How wide a table may be: ``$COLUMNS`` when set, else the terminal's width when
    ``stream`` is a terminal, else unlimited (a pipe or a log file keeps whole lines)."""
    columns = _columns_from_env()
    if columns is not None:
        return columns
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
    heads = [printable(h) for h in headers]
    cells = [["" if c is None else printable(str(c)) for c in row] for row in rows]
    widths = [len(h) for h in heads]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    if width is not None:
        widths = _fit(widths, width)
    lines = []
    if title:
        lines.append(printable(title))

    def emit(cells: Sequence[str]) -> None:
        wrapped = [_wrap(c, w) for c, w in zip(cells, widths, strict=True)]
        for k in range(max(len(w) for w in wrapped)):
            parts = [
                (w[k] if k < len(w) else "").ljust(cw)
                for w, cw in zip(wrapped, widths, strict=True)
            ]
            lines.append("  ".join(parts).rstrip())

    emit(heads)
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        emit(row)
    return "\n".join(lines)


def print_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    title: str | None = None,
    stream: IO[str] | None = None,
) -> None:
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

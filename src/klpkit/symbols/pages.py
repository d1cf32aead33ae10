"""Symbol records and pages: how the database stores ~700,000 symbols cheaply.

Each symbol occurrence is one *record*, a bytes string::

    name NUL oid(4 hex) pos(6 hex) flags(3 hex)

Fixed-width lower-case hex sorts like the numbers, and the NUL sorts before any
name byte, so plain ``bytes`` order of the records *is* (name, object, kernel
position) order: the whole kernel is sorted with one ``list.sort()`` and no key
function, tuple or per-row Python call. (On this class of machine the build is
bound by memory latency: every extra pass over 700,000 scattered objects costs
~0.2 s, so the records are made once, in the module reader's hot loop, and touched
only by the sort and by the join that writes them.)

The sorted records are cut into pages of about :data:`PAGE_ROWS` that never split one
name's records; a page is one SQLite row ``(first name, records joined by NUL)``, so
``blob.split(b"\\0")`` gives names and payloads alternately. Writing ~18,000 pages
costs a fraction of 700,000 single-symbol rows (SQLite and its Python binding pay
per row and per bound value), and a lookup is one B-tree descent and a C-level search
of the page (:func:`payloads_of`). 32 records a page: fewer pages cost a lookup more
than they save a build (16: +0.07 s to build; 48: +2 us a lookup).

Names are UTF-8 ``bytes`` throughout (module string tables are never decoded while
building); the page keys compare as SQLite compares BLOBs, byte by byte.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import NamedTuple

from klpkit.errors import KlpkitError

PAGE_ROWS = 32  # records per page (more when one name has more)
MAX_OBJECTS = 0x10000  # object ids: 4 hex digits
MAX_POS = 0x1000000  # kernel positions / symbol indexes: 6 hex digits
MAX_FLAGS = 0x1000  # flags: 3 hex digits
PAYLOAD = 13  # hex digits after the NUL

_POS_HEX: list[bytes] = []
FLAGS_HEX = [b"%03x" % f for f in range(MAX_FLAGS)]  # flags -> their 3 hex digits


def pos_hex(count: int, where: str | None = None) -> list[bytes]:
    """``%06x`` of 0..count-1, from a shared table (formatting each position in the
    hot loop would cost more than the lookup)."""
    if count > len(_POS_HEX):
        if count > MAX_POS:
            raise KlpkitError(
                f"{count} symbols in one object: the symbol database "
                f"stores positions below {MAX_POS}",
                path=where,
            )
        _POS_HEX.extend(b"%06x" % i for i in range(len(_POS_HEX), count))
    return _POS_HEX


def oid_prefix(oid: int, where: str | None = None) -> bytes:
    """The NUL and object id that follow a name in each of the object's records."""
    if not 0 <= oid < MAX_OBJECTS:
        raise KlpkitError(
            f"object {oid + 1}: the symbol database holds at most {MAX_OBJECTS} objects",
            path=where,
        )
    return b"\0%04x" % oid


def encode_name(name: str | bytes, where: str | None = None) -> bytes:
    """A name as the database stores it: UTF-8 bytes, bytes that were not UTF-8 (read
    with ``surrogateescape``) restored as they were.  Every name, path and string the
    database stores or looks up goes through here (or :func:`lookup_key`)."""
    if isinstance(name, bytes):
        return name
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise KlpkitError(
            f"name {name!r} holds a character no file can (a lone surrogate)", path=where
        ) from None


def lookup_key(name: str | bytes) -> bytes | None:
    """The stored form of a name to look up, or None for a name no kernel can have
    (empty, a NUL in it, a lone surrogate that no byte decodes to): such a lookup
    simply finds nothing."""
    if isinstance(name, str):
        try:
            name = name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return None
    if not name or b"\0" in name:
        return None
    return name


def decode_name(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def make_records(oid: int, pairs, where: str | None = None) -> list[bytes]:
    """Records of one object from its (name, flags) pairs in kernel order."""
    pairs = list(pairs)
    return column_records(oid, [name for name, _f in pairs], [f for _n, f in pairs], where)


def column_records(oid: int, names: list, flags, where: str | None = None) -> list[bytes]:
    """Records of one object from its names (str or bytes) and flags in kernel order;
    ``where`` names the input in errors."""
    if not names:
        return []
    prefix, ph, fh = oid_prefix(oid, where), pos_hex(len(names), where), FLAGS_HEX
    given = names
    if set(map(type, names)) == {str}:
        # encode them all in one C-level call
        try:
            names = "\0".join(names).encode("utf-8", "surrogateescape").split(b"\0")
        except UnicodeEncodeError:
            names = [encode_name(n, where) for n in names]
    else:
        names = [encode_name(n, where) for n in names]
    if len(names) != len(given) or not all(names):
        raise KlpkitError(_bad_name(given), path=where)
    # (ph is a shared table, longer than the object: zip stops at the object's end)
    return [name + prefix + h + fh[f] for name, h, f in zip(names, ph, flags, strict=False)]


def _bad_name(names: list) -> str:
    """Why a record cannot hold one of ``names``: the database separates fields by NUL."""
    for i, name in enumerate(names, 1):
        if not name:
            return f"symbol {i} has an empty name"
        if "\0" in name if isinstance(name, str) else b"\0" in name:
            shown = name if isinstance(name, str) else decode_name(name)
            return f"symbol {i} ({shown[:60]!r}) has a NUL character in its name"
    return "a symbol name cannot be stored"


def parse_payload(payload: bytes) -> tuple[int, int, int]:
    """(oid, pos, flags) of a record's payload (the hex digits after its NUL)."""
    return int(payload[:4], 16), int(payload[4:10], 16), int(payload[10:], 16)


def parse_record(record: bytes) -> tuple[bytes, int, int, int]:
    """(name, oid, pos, flags) of one record."""
    return record[: -PAYLOAD - 1], *parse_payload(record[-PAYLOAD:])


def record_oid(record: bytes) -> int:
    return int(record[-PAYLOAD : -PAYLOAD + 4], 16)


def make_pages(records: list[bytes], page_rows: int = PAGE_ROWS) -> list[tuple[bytes, bytes]]:
    """``(first name, page)`` rows from sorted ``records``."""
    join = b"\0".join
    cut = -PAYLOAD - 1
    pages = []
    n = len(records)
    i = 0
    while i < n:
        j = i + page_rows
        if j >= n:
            j = n
        else:  # extend the page to the end of its last name's records
            last = records[j - 1][:cut]
            while j < n and records[j][:cut] == last:
                j += 1
        pages.append((records[i][:cut], join(records[i:j])))
        i = j
    return pages


def payloads_of(blob: bytes, name: bytes) -> list[bytes]:
    """The payloads of ``name``'s records in one page, without splitting the page
    (a lookup's hot path: splitting a page allocates ~40 objects).

    A record starts at 0 or after a NUL; a hit is a record start, not a payload that
    happens to read like ``name``, exactly when an even number of NULs precede it
    (each record before it holds two: its name's and its separator)."""
    head = name + b"\0"
    if blob.startswith(head):
        at = 0
    else:
        at = blob.find(b"\0" + head) + 1
        while at and blob.count(b"\0", 0, at) % 2:
            at = blob.find(b"\0" + head, at) + 1
        if not at:
            return []
    step = len(head) + PAYLOAD + 1
    out = []
    while blob.startswith(head, at):
        out.append(blob[at + len(head) : at + step - 1])
        at += step
    return out


class Page(NamedTuple):
    """One decoded page: names (sorted) and their payloads, in parallel."""

    names: list[bytes]
    payloads: list[bytes]

    @classmethod
    def decode(cls, blob: bytes) -> Page:
        parts = blob.split(b"\0")
        if len(parts) % 2:  # (a bad payload fails when it is parsed)
            raise ValueError("odd number of fields")
        return cls(parts[0::2], parts[1::2])

    def start(self, name: bytes) -> int:
        """Index of the first record whose name sorts at or after ``name``."""
        return bisect_left(self.names, name)

    def rows(self, lo: int = 0, hi: int | None = None):
        """(name, oid, pos, flags) of the records [lo, hi)."""
        hi = len(self.names) if hi is None else hi
        return [
            (n, *parse_payload(p))
            for n, p in zip(self.names[lo:hi], self.payloads[lo:hi], strict=True)
        ]

    def records(self) -> list[bytes]:
        return [n + b"\0" + p for n, p in zip(self.names, self.payloads, strict=True)]

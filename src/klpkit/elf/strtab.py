"""String tables (.strtab, .shstrtab): reading names and appending new ones.

Existing strings are never moved: unchanged names keep their offsets, so an
untouched string table stays byte-identical; new names are appended (old,
unused strings are left in place, as libelf-based tools do).
"""

from klpkit.errors import ElfError


def string_at(table: bytes, offset: int) -> str | None:
    """The NUL-terminated string at ``offset``; None when out of range or unterminated."""
    if offset >= len(table):
        return None
    end = table.find(b"\0", offset)
    if end < 0:
        return None
    return table[offset:end].decode("utf-8", "surrogateescape")


def string_index(table: bytes) -> dict[int, str]:
    """Offset → string for every string starting right after a NUL (fast bulk lookup).

    Names that point into the middle of another string (suffix sharing) are not in
    the map; callers fall back to :func:`string_at` for those.
    """
    result = {}
    offset = 0
    for raw in table.split(b"\0"):
        result[offset] = raw.decode("utf-8", "surrogateescape")
        offset += len(raw) + 1
    return result


class StringTableBuilder:
    """Appends names to an existing table's bytes, reusing offsets of names already there."""

    def __init__(self, data: bytes):
        self.data = bytearray(data)
        self._known = {name: off for off, name in string_index(bytes(data)).items()}
        if not self.data:
            # Index 0 of a string table is the empty string.
            self.data += b"\0"
            self._known[""] = 0

    def offset_of(self, name: str) -> int:
        off = self._known.get(name)
        if off is None:
            off = len(self.data)
            self.data += name.encode("utf-8", "surrogateescape") + b"\0"
            self._known[name] = off
        return off


def names_at(table: bytes, offsets: list[int], path, what: str) -> list[str]:
    """The name at every offset of ``offsets`` into ``table`` (``what``: "section" or
    "symbol", for the message); ElfError when one lies outside the table or the table is
    not NUL-terminated.

    Names are ASCII in practice: one latin-1 decode of the whole table, then C-level
    find/slice per name; a non-ASCII table is decoded per name (UTF-8, undecodable bytes
    kept as lone surrogates)."""
    if not offsets:
        return []
    check_name_offsets(table, offsets, path, what)
    return decode_names(table, offsets)


def decode_names(table: bytes, offsets: list[int]) -> list[str]:
    """:func:`names_at` for offsets :func:`check_name_offsets` accepted."""
    if not table.isascii():
        return [table[o : table.index(0, o)].decode("utf-8", "surrogateescape") for o in offsets]
    text = table.decode("latin-1")
    find = text.find
    return [text[o : find("\0", o)] for o in offsets]


def check_name_offsets(table: bytes, offsets: list[int], path, what: str) -> None:
    """Every offset of ``offsets`` (not empty) lies in ``table``, which ends with a NUL:
    then every name is NUL-terminated."""
    size = len(table)
    if max(offsets) >= size:
        i = next(i for i, o in enumerate(offsets) if o >= size)
        raise ElfError(
            f"{what} {i}: name offset {offsets[i]:#x} is outside its string table", path=path
        )
    if table[-1] != 0:
        raise ElfError(f"the {what} string table is not NUL-terminated", path=path)

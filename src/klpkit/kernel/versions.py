"""The ``__versions`` section of a kernel module (CONFIG_MODVERSIONS).

An array of ``struct modversion_info { unsigned long crc; char name[64 - sizeof(unsigned
long)]; }`` (include/linux/module.h): 64 bytes an entry on both classes — an 8-byte
CRC and 56-byte name on 64-bit, a 4-byte CRC and 60-byte name on 32-bit — in the
object's byte order.  The CRC occupies a whole ``unsigned long`` but only its low 32
bits are used.  Names are NUL-padded; a name must leave room for its NUL.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from klpkit.errors import KlpkitError

ENTRY_SIZE = 64


class VersionsError(KlpkitError):
    """A ``__versions`` section that does not hold whole modversion_info entries."""


@dataclass(frozen=True)
class ModVersion:
    name: str
    crc: int


def _layout(elfclass: int, little_endian: bool) -> tuple[struct.Struct, int]:
    if elfclass not in (32, 64):
        raise VersionsError(f"ELF class must be 32 or 64, not {elfclass}")
    bo = "<" if little_endian else ">"
    word = "Q" if elfclass == 64 else "I"
    namelen = ENTRY_SIZE - elfclass // 8
    return struct.Struct(f"{bo}{word}{namelen}s"), namelen


def parse_versions(
    data: bytes, elfclass: int = 64, little_endian: bool = True, *, path: str | None = None
) -> list[ModVersion]:
    """Decode a ``__versions`` section into (name, crc) entries, in order."""
    st, _namelen = _layout(elfclass, little_endian)
    if len(data) % ENTRY_SIZE:
        raise VersionsError(
            f"__versions size {len(data)} is not a multiple of {ENTRY_SIZE}", path=path
        )
    out = []
    for crc, raw in st.iter_unpack(data):
        end = raw.find(b"\0")
        if end < 0:
            raise VersionsError("__versions entry name is not NUL-terminated", path=path)
        out.append(ModVersion(raw[:end].decode("utf-8", "surrogateescape"), crc & 0xFFFFFFFF))
    return out


def serialize_versions(
    entries: list[ModVersion] | list[tuple[str, int]],
    elfclass: int = 64,
    little_endian: bool = True,
) -> bytes:
    """Encode entries back into section bytes (NUL-padded names)."""
    st, namelen = _layout(elfclass, little_endian)
    out = bytearray()
    for e in entries:
        name, crc = (e.name, e.crc) if isinstance(e, ModVersion) else e
        raw = name.encode("utf-8", "surrogateescape")
        if len(raw) >= namelen:
            raise VersionsError(
                f"symbol name '{name}' too long for __versions ({len(raw)} >= {namelen} bytes)"
            )
        out += st.pack(crc & 0xFFFFFFFF, raw)
    return bytes(out)


def remove_versions(data: bytes, names, elfclass: int = 64, little_endian: bool = True) -> bytes:
    """Section bytes without the entries whose names are in ``names``."""
    drop = set(names)
    keep = [e for e in parse_versions(data, elfclass, little_endian) if e.name not in drop]
    return serialize_versions(keep, elfclass, little_endian)

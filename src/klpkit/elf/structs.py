"""Binary layouts of the ELF records, per class (32/64) and byte order.

One :class:`Layout` per (class, endianness) holds precompiled ``struct.Struct``
objects; reader and writer both use it, which is what makes a no-op round trip
byte-identical by construction.
"""

import struct
from functools import cache

from klpkit.elf.constants import ELFCLASS32, ELFCLASS64, ELFDATA2LSB, ELFDATA2MSB

EI_NIDENT = 16


class Layout:
    """Record formats for one ELF class and byte order."""

    def __init__(self, elfclass: int, little_endian: bool):
        self.elfclass = elfclass
        self.little_endian = little_endian
        bo = "<" if little_endian else ">"
        self.byteorder = "little" if little_endian else "big"
        if elfclass == 64:
            # e_ident, type, machine, version, entry, phoff, shoff, flags,
            # ehsize, phentsize, phnum, shentsize, shnum, shstrndx
            self.ehdr = struct.Struct(bo + "16sHHIQQQIHHHHHH")
            # name, type, flags, addr, offset, size, link, info, addralign, entsize
            self.shdr = struct.Struct(bo + "IIQQQQIIQQ")
            # name, info, other, shndx, value, size
            self.sym = struct.Struct(bo + "IBBHQQ")
            self.rel = struct.Struct(bo + "QQ")
            self.rela = struct.Struct(bo + "QQq")
            self.word = struct.Struct(bo + "Q")
        else:
            self.ehdr = struct.Struct(bo + "16sHHIIIIIHHHHHH")
            self.shdr = struct.Struct(bo + "IIIIIIIIII")
            # name, value, size, info, other, shndx
            self.sym = struct.Struct(bo + "IIIBBH")
            self.rel = struct.Struct(bo + "II")
            self.rela = struct.Struct(bo + "IIi")
            self.word = struct.Struct(bo + "I")
        self.u32 = struct.Struct(bo + "I")
        self.addr_size = elfclass // 8

    # r_info packing differs between the classes (gABI).
    def r_sym(self, info: int) -> int:
        return info >> 32 if self.elfclass == 64 else info >> 8

    def r_type(self, info: int) -> int:
        return info & 0xFFFFFFFF if self.elfclass == 64 else info & 0xFF

    def r_info(self, sym: int, rtype: int) -> int:
        if self.elfclass == 64:
            return (sym << 32) | (rtype & 0xFFFFFFFF)
        return (sym << 8) | (rtype & 0xFF)

    def pack_sym(self, name, value, size, info, other, shndx) -> bytes:
        if self.elfclass == 64:
            return self.sym.pack(name, info, other, shndx, value, size)
        return self.sym.pack(name, value, size, info, other, shndx)

    def iter_syms(self, buf):
        """Yield (name, value, size, info, other, shndx) for every record in ``buf``."""
        if self.elfclass == 64:
            for name, info, other, shndx, value, size in self.sym.iter_unpack(buf):
                yield name, value, size, info, other, shndx
        else:
            yield from ((n, v, s, i, o, x) for n, v, s, i, o, x in self.sym.iter_unpack(buf))


@cache
def layout_for(elfclass: int, little_endian: bool) -> Layout:
    return Layout(elfclass, little_endian)


def ident_layout(ident: bytes) -> Layout | None:
    """The layout named by ``e_ident``, or None when class/data are not valid."""
    cls = {ELFCLASS32: 32, ELFCLASS64: 64}.get(ident[4])
    data = {ELFDATA2LSB: True, ELFDATA2MSB: False}.get(ident[5])
    if cls is None or data is None:
        return None
    return layout_for(cls, data)

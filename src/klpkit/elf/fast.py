"""Symbol tables of many objects, fast: no model objects, only the bytes needed.

Scanning a whole kernel (vmlinux + ~4,000 modules) must take about as long as
``readelf -sW``. This reads the ELF header, the section headers, the section
name table, the symbol table and its string table with ``pread`` (a module's
other contents are never read), and returns plain tuples. It validates what it
reads like the full reader and raises the same one-line ElfError.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from klpkit.elf import constants as C
from klpkit.elf.strtab import string_at
from klpkit.elf.structs import EI_NIDENT, ident_layout
from klpkit.errors import ElfError, InputError


@dataclass(slots=True)
class SymbolScan:
    """What :func:`read_symbols` returns: the section list and the symbol table as
    columns (one list per field, index = symbol index, the null symbol included).

    Columns, not a tuple per symbol, because building ~800,000 tuples for a whole
    kernel costs more than reading it; ``symbols`` zips them when rows are wanted.
    ``shndxs`` has SHN_XINDEX already resolved.
    """

    machine: int
    elfclass: int
    little_endian: bool
    sections: list[tuple[str, int, int, int]]  # (name, sh_type, sh_flags, sh_size)
    names: list[str]
    values: list[int]
    sizes: list[int]
    infos: list[int]
    others: list[int]
    shndxs: list[int]

    @property
    def symbols(self) -> list[tuple]:
        """Rows of (name, value, size, info, other, shndx)."""
        return list(zip(self.names, self.values, self.sizes, self.infos, self.others,
                        self.shndxs, strict=True))


class _Source:
    """pread over an open file, or slicing over bytes already in memory."""

    def __init__(self, target, path):
        self.path = path
        if isinstance(target, (bytes, bytearray, memoryview)):
            self.data, self.fd, self.size = target, None, len(target)
        else:
            try:
                self.fd = os.open(target, os.O_RDONLY)
            except FileNotFoundError:
                raise InputError("no such file", path=path) from None
            except OSError as e:
                raise InputError(f"cannot read: {e.strerror}", path=path) from None
            self.data = None
            self.size = os.fstat(self.fd).st_size

    def read(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ElfError(f"{what} ({length} bytes at {offset:#x}) extends past the end of the "
                           f"file ({self.size} bytes)", path=self.path)
        if self.fd is None:
            return bytes(self.data[offset:offset + length])
        return os.pread(self.fd, length, offset)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


def read_symbols(target, path: str | None = None) -> SymbolScan:
    """Read the section list and the (first) SHT_SYMTAB of ``target`` (path or bytes)."""
    if path is None and not isinstance(target, (bytes, bytearray, memoryview)):
        path = os.fspath(target)
    src = _Source(target, path)
    try:
        return _scan(src)
    finally:
        src.close()


def _scan(src: _Source) -> SymbolScan:
    path = src.path
    ident = src.read(0, min(src.size, 64), "ELF header")
    if len(ident) < EI_NIDENT or ident[:4] != C.ELFMAG:
        raise ElfError("not an ELF file (bad magic)", path=path)
    lay = ident_layout(ident)
    if lay is None:
        raise ElfError(f"unsupported ELF class {ident[4]} or data encoding {ident[5]}", path=path)
    if len(ident) < lay.ehdr.size:
        raise ElfError(f"truncated ELF header ({len(ident)} bytes)", path=path)
    fields = lay.ehdr.unpack_from(ident, 0)
    machine, shoff, shentsize, shnum, shstrndx = (fields[2], fields[6], fields[11], fields[12],
                                                 fields[13])
    if shoff == 0:
        return SymbolScan(machine, lay.elfclass, lay.little_endian, [], [], [], [], [], [], [])
    if shentsize != lay.shdr.size:
        raise ElfError(f"e_shentsize is {shentsize}, expected {lay.shdr.size}", path=path)
    first = lay.shdr.unpack(src.read(shoff, lay.shdr.size, "section header 0"))
    count = shnum or first[5]
    if shstrndx == C.SHN_XINDEX:
        shstrndx = first[6]
    if count > (src.size - shoff) // lay.shdr.size:
        raise ElfError(f"section header table ({count} entries at {shoff:#x}) extends past the "
                       f"end of the file ({src.size} bytes)", path=path)
    raw_headers = src.read(shoff, count * lay.shdr.size, "section header table")
    headers = _header_columns(lay, raw_headers)
    name_offs, types, flags, offsets, sizes, links, entsizes = headers
    names: list[str] = [""] * count
    if 0 < shstrndx < count:
        table = src.read(offsets[shstrndx], sizes[shstrndx], "section name table")
        names = _names(table, name_offs, path, "section")
    sections = list(zip(names, types, flags, sizes, strict=True))
    symtab_i = types.index(C.SHT_SYMTAB) if C.SHT_SYMTAB in types else None
    columns = ([], [], [], [], [], [])
    if symtab_i is not None:
        columns = _symbols(src, headers, symtab_i, lay)
    return SymbolScan(machine, lay.elfclass, lay.little_endian, sections, *columns)


def _header_columns(lay, raw: bytes) -> tuple[list, ...]:
    """(name, type, flags, offset, size, link, entsize) columns of the section headers."""
    if lay.byteorder == sys.byteorder and lay.elfclass == 64:
        mv = memoryview(raw)
        w, q = mv.cast("I"), mv.cast("Q")
        return (w[0::16].tolist(), w[1::16].tolist(), q[1::8].tolist(), q[3::8].tolist(),
                q[4::8].tolist(), w[10::16].tolist(), q[7::8].tolist())
    rows = list(lay.shdr.iter_unpack(raw))
    return ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
            [r[4] for r in rows], [r[5] for r in rows], [r[6] for r in rows],
            [r[9] for r in rows])


def _symbols(src, headers, symtab_i, lay) -> tuple[list, ...]:
    path = src.path
    _, _, _, offsets, sizes, links, entsizes = headers
    count = len(offsets)
    if entsizes[symtab_i] != lay.sym.size or sizes[symtab_i] % lay.sym.size:
        raise ElfError(f"section {symtab_i}: symbol table entry size {entsizes[symtab_i]} or "
                       f"size {sizes[symtab_i]} is invalid", path=path)
    link = links[symtab_i]
    if not 0 < link < count:
        raise ElfError(f"section {symtab_i}: string table link {link} is out of range", path=path)
    raw = src.read(offsets[symtab_i], sizes[symtab_i], "symbol table")
    strtab = src.read(offsets[link], sizes[link], "symbol string table")
    name_offs, values, sizes, infos, others, shndxs = _columns(lay, raw)
    names = _names(strtab, name_offs, path, "symbol")
    nsec = count
    used = set(shndxs)
    bad = [x for x in used if nsec <= x < C.SHN_LORESERVE]
    if bad:
        i = shndxs.index(bad[0])
        raise ElfError(f"symbol {i} ({names[i]}): section index {bad[0]} is out of range",
                       path=path)
    if C.SHN_XINDEX in used:
        xindex = _xindex(src, lay, headers, symtab_i)
        for i, x in enumerate(shndxs):
            if x == C.SHN_XINDEX:
                real = xindex[i] if i < len(xindex) else 0
                if not 0 < real < nsec:
                    raise ElfError(f"symbol {i} ({names[i]}): extended section index is "
                                   "invalid", path=path)
                shndxs[i] = real
    return names, values, sizes, infos, others, shndxs


def _columns(lay, raw: bytes) -> tuple[list, ...]:
    """Split symbol records into per-field lists.

    On a host of the same byte order, memoryview casts and strided slices do it in C;
    otherwise struct does it record by record.
    """
    if lay.byteorder == sys.byteorder and lay.elfclass == 64:
        mv = memoryview(raw)
        words = mv.cast("Q")
        return (mv.cast("I")[0::6].tolist(), words[1::3].tolist(), words[2::3].tolist(),
                list(raw[4::24]), list(raw[5::24]), mv.cast("H")[3::12].tolist())
    if lay.byteorder == sys.byteorder:
        mv = memoryview(raw).cast("I")
        return (mv[0::4].tolist(), mv[1::4].tolist(), mv[2::4].tolist(), list(raw[12::16]),
                list(raw[13::16]), memoryview(raw).cast("H")[7::8].tolist())
    rows = list(lay.iter_syms(raw))
    if not rows:
        return [], [], [], [], [], []
    return tuple(list(col) for col in zip(*rows, strict=True))


def _names(strtab: bytes, offsets: list[int], path, what: str) -> list[str]:
    """Every symbol's name. Names are ASCII in practice: one latin-1 decode of the whole
    table, then C-level find/slice per name; a non-ASCII table is decoded per name."""
    size = len(strtab)
    if offsets and max(offsets) >= size:
        i = next(i for i, o in enumerate(offsets) if o >= size)
        raise ElfError(f"{what} {i}: name offset {offsets[i]:#x} is outside its string table",
                       path=path)
    if not strtab.isascii():
        names = [string_at(strtab, o) for o in offsets]
        if None in names:
            raise ElfError(f"a {what} name is not NUL-terminated", path=path)
        return names
    text = strtab.decode("latin-1")
    if not text.endswith("\0"):
        raise ElfError(f"the {what} string table is not NUL-terminated", path=path)
    find = text.find
    return [text[o:find("\0", o)] for o in offsets]


def _xindex(src, lay, headers, symtab_i) -> list[int]:
    _, types, _, offsets, sizes, links, _ = headers
    for i, stype in enumerate(types):
        if stype == C.SHT_SYMTAB_SHNDX and links[i] == symtab_i:
            raw = src.read(offsets[i], sizes[i], "extended section index table")
            return [v[0] for v in lay.u32.iter_unpack(raw[: len(raw) // 4 * 4])]
    raise ElfError("a symbol uses SHN_XINDEX but there is no SHT_SYMTAB_SHNDX section",
                   path=src.path)

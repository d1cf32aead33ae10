"""Symbol tables of many objects, fast: no model objects, only the bytes needed.

Scanning a whole kernel (vmlinux + ~4,000 modules) must take about as long as
``readelf -sW``. :func:`open_scan` reads the ELF header, the section headers, the
section name table, the symbol table and its string table (``pread`` on a path,
slices of bytes already in memory, e.g. a decompressed module); any other section is
read on demand with :meth:`ElfScan.section_data`. Everything is kept as columns (one
list per field), never one object per symbol or section: building ~800,000 tuples
for a whole kernel costs more than reading it.

This is the one fast reader of the project (the symbol database builds on it). It
validates what it reads at least as strictly as the full reader (:mod:`klpkit.elf`)
and every defect is one :class:`klpkit.errors.ElfError` naming the file.
"""

from __future__ import annotations

import os
import struct
import sys

from klpkit.elf import constants as C
from klpkit.elf.strtab import string_at
from klpkit.elf.structs import EI_NIDENT, ident_layout
from klpkit.errors import ElfError, InputError

_BYTES = (bytes, bytearray, memoryview)


class SectionHeader(tuple):
    """(name, type, flags, addr, offset, size, link, info, addralign, entsize)."""

    __slots__ = ()
    name = property(lambda s: s[0])
    type = property(lambda s: s[1])
    flags = property(lambda s: s[2])
    addr = property(lambda s: s[3])
    offset = property(lambda s: s[4])
    size = property(lambda s: s[5])
    link = property(lambda s: s[6])
    info = property(lambda s: s[7])
    addralign = property(lambda s: s[8])
    entsize = property(lambda s: s[9])


class ElfScan:
    """One ELF file read for its symbols: header fields, section header columns, the
    (first) ``SHT_SYMTAB`` as columns, and on-demand section contents.

    Section columns (index = section index): ``sh_names`` (str), ``sh_types``,
    ``sh_flags``, ``sh_addrs``, ``sh_offsets``, ``sh_sizes``, ``sh_links``,
    ``sh_infos``, ``sh_entsizes``; :attr:`sections` zips them into
    :class:`SectionHeader` rows.

    Symbol columns (index = symbol index, the null symbol included): ``st_names``
    (string table offsets), ``values``, ``sizes``, ``infos`` and ``others`` (bytes),
    ``shndxs`` (``SHN_XINDEX`` already resolved); :attr:`names` decodes the names
    once, :meth:`name_at` one name; :attr:`symbols` zips rows.
    ``symtab_index`` is 0 when the file has no symbol table.

    Use as a context manager (or call :meth:`close`) when it was opened on a path:
    the file stays open for :meth:`section_data`.
    """

    def __init__(self, target, path: str | None = None):
        if path is None and not isinstance(target, _BYTES):
            path = os.fspath(target)
        self.path = path
        self._fd = -1
        self._data = None
        if isinstance(target, _BYTES):
            self._data = target if isinstance(target, bytes) else bytes(target)
            self.file_size = len(self._data)
        else:
            try:
                self._fd = os.open(target, os.O_RDONLY)
                self.file_size = os.fstat(self._fd).st_size
            except FileNotFoundError:
                raise InputError("no such file", path=path) from None
            except IsADirectoryError:
                raise InputError("is a directory, expected a file", path=path) from None
            except OSError as e:
                self.close()
                raise InputError(f"cannot read: {e.strerror}", path=path) from None
        self.machine = self.type = 0
        self.elfclass, self.little_endian = 64, True
        self.shstrndx = 0
        self.sh_names: list[str] = []
        self.sh_types = self.sh_flags = self.sh_addrs = self.sh_offsets = self.sh_sizes = []
        self.sh_links = self.sh_infos = self.sh_entsizes = []
        self.symtab_index = 0
        self.st_names: list[int] = []
        self.values: list[int] = []
        self.sizes: list[int] = []
        self.infos: bytes = b""
        self.others: bytes = b""
        self.shndxs: list[int] = []
        self.strtab: bytes = b""
        self._names: list[str] | None = None
        self._text: str | None = None
        self._sections: list[SectionHeader] | None = None

    # --- life cycle -------------------------------------------------------------
    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ElfScan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fail(self, reason: str):
        raise ElfError(reason, path=self.path)

    def read(self, offset: int, length: int, what: str = "data") -> bytes:
        """``length`` bytes at ``offset``; ElfError when they are not all in the file."""
        if offset < 0 or length < 0 or offset + length > self.file_size:
            self._fail(f"{what} ({length} bytes at {offset:#x}) extends past the end of the "
                       f"file ({self.file_size} bytes)")
        if self._data is not None:
            return self._data[offset:offset + length]
        if self._fd < 0:
            raise ValueError(f"{self.path}: the scan is closed")
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            self._fail(f"short read of {what} ({len(data)} of {length} bytes at {offset:#x})")
        return data

    # --- sections ---------------------------------------------------------------
    @property
    def sections(self) -> list[SectionHeader]:
        if self._sections is None:
            self._sections = list(map(SectionHeader, zip(
                self.sh_names, self.sh_types, self.sh_flags, self.sh_addrs, self.sh_offsets,
                self.sh_sizes, self.sh_links, self.sh_infos, self._aligns, self.sh_entsizes,
                strict=True)))
        return self._sections

    def section_index(self, name: str) -> int:
        """Index of the first section called ``name``; 0 when there is none."""
        try:
            return self.sh_names.index(name, 1)
        except ValueError:
            return 0

    def section(self, name: str) -> SectionHeader | None:
        i = self.section_index(name)
        return self.sections[i] if i else None

    def section_data(self, sec: SectionHeader | int | str) -> bytes:
        """Contents of a section (by index, name or header); b"" for NOBITS, an empty or
        a missing (by name) section. Bounds are checked: ElfError past the end."""
        if isinstance(sec, str):
            sec = self.section_index(sec)
            if not sec:
                return b""
        if isinstance(sec, int):
            if not 0 <= sec < len(self.sh_types):
                raise IndexError(f"section index {sec} out of range")
            i = sec
            stype, offset, size = self.sh_types[i], self.sh_offsets[i], self.sh_sizes[i]
        else:
            i = self.sections.index(sec) if sec in self.sections else "?"
            stype, offset, size = sec.type, sec.offset, sec.size
        if stype == C.SHT_NOBITS or size == 0 or i == 0:
            return b""
        return self.read(offset, size, f"section {i} contents")

    # --- symbols ----------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Every symbol's name (decoded once)."""
        if self._names is None:
            self._names = _names(self.strtab, self.st_names, self.path, "symbol")
        return self._names

    def name_at(self, offset: int) -> str:
        """The symbol name at string table ``offset`` (offsets were validated)."""
        text = self._text
        if text is None:
            text = self._text = self.strtab.decode("latin-1")
        name = text[offset:text.find("\0", offset)]
        return name if name.isascii() else name.encode("latin-1").decode(
            "utf-8", "surrogateescape")

    @property
    def strtab_ascii(self) -> bool:
        return self.strtab.isascii()

    @property
    def symbols(self) -> list[tuple]:
        """Rows of (name, value, size, info, other, shndx)."""
        return list(zip(self.names, self.values, self.sizes, self.infos, self.others,
                        self.shndxs, strict=True))

    # --- parsing ----------------------------------------------------------------
    def _parse(self, symbols: bool) -> None:
        ident = self.read(0, min(self.file_size, 64), "ELF header")
        if len(ident) < EI_NIDENT or ident[:4] != C.ELFMAG:
            self._fail("not an ELF file (bad magic)")
        lay = ident_layout(ident)
        if lay is None:
            self._fail(f"unsupported ELF class {ident[4]} or data encoding {ident[5]}")
        if len(ident) < lay.ehdr.size:
            self._fail(f"truncated ELF header ({len(ident)} bytes)")
        self._lay = lay
        self.elfclass, self.little_endian = lay.elfclass, lay.little_endian
        f = lay.ehdr.unpack_from(ident, 0)
        self.type, self.machine = f[1], f[2]
        shoff, shentsize, shnum, shstrndx = f[6], f[11], f[12], f[13]
        self._aligns = []
        if shoff == 0:
            if shnum:
                self._fail(f"e_shnum is {shnum} but e_shoff is 0")
            return
        if shentsize != lay.shdr.size:
            self._fail(f"e_shentsize is {shentsize}, expected {lay.shdr.size}")
        first = lay.shdr.unpack(self.read(shoff, lay.shdr.size, "section header 0"))
        count = shnum or first[5]
        if count == 0:
            self._fail("e_shnum is 0 and section header 0 gives no count")
        if shstrndx == C.SHN_XINDEX:
            shstrndx = first[6]
        if count > (self.file_size - shoff) // lay.shdr.size:
            self._fail(f"section header table ({count} entries at {shoff:#x}) extends past "
                       f"the end of the file ({self.file_size} bytes)")
        raw = self.read(shoff, count * lay.shdr.size, "section header table")
        (name_offs, self.sh_types, self.sh_flags, self.sh_addrs, self.sh_offsets,
         self.sh_sizes, self.sh_links, self.sh_infos, self._aligns,
         self.sh_entsizes) = _header_columns(lay, raw)
        self.shstrndx = shstrndx
        if shstrndx == C.SHN_UNDEF:
            self.sh_names = [""] * count
        else:
            if shstrndx >= count or self.sh_types[shstrndx] != C.SHT_STRTAB:
                self._fail(f"e_shstrndx {shstrndx} does not name a string table section")
            table = self.section_data(shstrndx)
            self.sh_names = _names(table, name_offs, self.path, "section")
        if symbols and C.SHT_SYMTAB in self.sh_types:
            self._parse_symtab(self.sh_types.index(C.SHT_SYMTAB))

    def _parse_symtab(self, i: int) -> None:
        lay = self._lay
        entsize, size, link = self.sh_entsizes[i], self.sh_sizes[i], self.sh_links[i]
        if entsize != lay.sym.size or size % lay.sym.size:
            self._fail(f"section {i}: symbol table entry size {entsize} or size {size} is "
                       "invalid")
        nsec = len(self.sh_types)
        if not 0 < link < nsec:
            self._fail(f"section {i}: string table link {link} is out of range")
        self.symtab_index = i
        raw = self.read(self.sh_offsets[i], size, "symbol table")
        strtab = self.section_data(link)
        (self.st_names, self.values, self.sizes, self.infos, self.others,
         shndxs) = _columns(lay, raw)
        offs = self.st_names
        if offs:
            top = max(offs)
            if top >= len(strtab):
                k = next(k for k, o in enumerate(offs) if o >= len(strtab))
                self._fail(f"symbol {k}: name offset {offs[k]:#x} is outside its string table")
            if strtab[-1] != 0:
                self._fail("the symbol string table is not NUL-terminated")
        self.strtab = strtab
        used = set(shndxs)
        bad = [x for x in used if nsec <= x < C.SHN_LORESERVE]
        if bad:
            k = shndxs.index(min(bad))
            self._fail(f"symbol {k} ({self.names[k]}): section index {shndxs[k]} is out of "
                       "range")
        if C.SHN_XINDEX in used:
            xindex = self._xindex(i)
            for k, x in enumerate(shndxs):
                if x == C.SHN_XINDEX:
                    real = xindex[k] if k < len(xindex) else 0
                    if not 0 < real < nsec:
                        self._fail(f"symbol {k} ({self.names[k]}): extended section index is "
                                   "invalid")
                    shndxs[k] = real
        self.shndxs = shndxs

    def _xindex(self, symtab_i: int) -> list[int]:
        for i, stype in enumerate(self.sh_types):
            if stype == C.SHT_SYMTAB_SHNDX and self.sh_links[i] == symtab_i:
                raw = self.section_data(i)
                return [v[0] for v in self._lay.u32.iter_unpack(raw[: len(raw) // 4 * 4])]
        self._fail("a symbol uses SHN_XINDEX but there is no SHT_SYMTAB_SHNDX section")


# Kept for callers of the former column-only reader: the same object.
SymbolScan = ElfScan


def open_scan(target, path: str | None = None, *, symbols: bool = True) -> ElfScan:
    """Scan ``target`` (a path, or the bytes of a file with ``path`` naming it in
    errors): ``with open_scan(p) as scan: ...``. ``symbols=False`` reads only the
    headers."""
    scan = ElfScan(target, path)
    try:
        scan._parse(symbols)
    except (struct.error, IndexError, ValueError, OverflowError) as e:
        scan.close()
        raise ElfError(f"malformed ELF: {e}", path=scan.path) from None
    except BaseException:
        scan.close()
        raise
    return scan


def read_symbols(target, path: str | None = None) -> ElfScan:
    """Section headers and the (first) SHT_SYMTAB of ``target`` (path or bytes); the file
    is closed again (use :func:`open_scan` to read other sections later)."""
    scan = open_scan(target, path)
    scan.close()
    return scan


def _header_columns(lay, raw: bytes) -> tuple[list, ...]:
    """(name, type, flags, addr, offset, size, link, info, addralign, entsize) columns."""
    if lay.byteorder == sys.byteorder and lay.elfclass == 64:
        mv = memoryview(raw)
        w, q = mv.cast("I"), mv.cast("Q")
        return (w[0::16].tolist(), w[1::16].tolist(), q[1::8].tolist(), q[2::8].tolist(),
                q[3::8].tolist(), q[4::8].tolist(), w[10::16].tolist(), w[11::16].tolist(),
                q[6::8].tolist(), q[7::8].tolist())
    rows = list(lay.shdr.iter_unpack(raw))
    return tuple(list(col) for col in zip(*rows, strict=True))


def _columns(lay, raw: bytes) -> tuple:
    """Split symbol records into (name, value, size, info, other, shndx) columns.

    On a host of the same byte order, memoryview casts and strided slices do it in C;
    otherwise struct does it record by record.
    """
    if lay.byteorder == sys.byteorder and lay.elfclass == 64:
        mv = memoryview(raw)
        words = mv.cast("Q")
        return (mv.cast("I")[0::6].tolist(), words[1::3].tolist(), words[2::3].tolist(),
                raw[4::24], raw[5::24], mv.cast("H")[3::12].tolist())
    if lay.byteorder == sys.byteorder:
        mv = memoryview(raw).cast("I")
        return (mv[0::4].tolist(), mv[1::4].tolist(), mv[2::4].tolist(), raw[12::16],
                raw[13::16], memoryview(raw).cast("H")[7::8].tolist())
    rows = list(lay.iter_syms(raw))
    if not rows:
        return [], [], [], b"", b"", []
    n, v, s, i, o, x = zip(*rows, strict=True)
    return list(n), list(v), list(s), bytes(i), bytes(o), list(x)


def _names(strtab: bytes, offsets: list[int], path, what: str) -> list[str]:
    """Every name. Names are ASCII in practice: one latin-1 decode of the whole table,
    then C-level find/slice per name; a non-ASCII table is decoded per name (UTF-8,
    undecodable bytes kept as surrogates)."""
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
    if offsets and not text.endswith("\0"):
        raise ElfError(f"the {what} string table is not NUL-terminated", path=path)
    find = text.find
    return [text[o:find("\0", o)] for o in offsets]

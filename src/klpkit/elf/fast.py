"""Symbol tables of many objects, fast: no model objects, only the bytes needed.

Scanning a whole kernel (vmlinux + ~4,000 modules) must take about as long as
``readelf -sW``. :func:`open_scan` reads the ELF header, the section headers, the
section name table, the symbol table and its string table (``pread`` on a path,
slices of bytes already in memory, e.g. a decompressed module); any other section is
read on demand with :meth:`ElfScan.section_data`. Everything is kept as columns (one
list per field), never one object per symbol or section: building ~800,000 tuples
for a whole kernel costs more than reading it.

A compressed file (``.ko.xz``, as Debian's 6.12 modules are) is decompressed whole in
memory first (:mod:`klpkit.elf.compressed`): the tables a scan needs are at the end of
a module, after everything else in the stream.

Per file, the work is kept to what a symbol database needs: three reads in the usual
layout (the ELF header; the section header table with the bytes just before it, where
the section name table usually is; the symbol table with its string table right after
it), and only the columns it and the checks use are built when the file is opened. The
others (``sh_addrs``, ``sh_infos``, ``sh_entsizes``; ``values``, ``sizes``, ``others``)
are built from the kept raw tables on first access, then stored like the rest.

This is the one fast reader of the project (the symbol database builds on it). The ELF
header and the section header table are parsed and checked by
:mod:`klpkit.elf.headers`, as the full reader (:mod:`klpkit.elf`) does, so it refuses
at least what the full reader refuses of what both read; every defect is one
:class:`klpkit.errors.ElfError` naming the file.
"""

from __future__ import annotations

import os
import stat
import struct
import sys
from array import array
from typing import NoReturn

from klpkit.elf import constants as C
from klpkit.elf.compressed import MAX_INFLATED, format_named, format_of, inflate
from klpkit.elf.headers import (
    check_sections,
    check_string_table_link,
    check_symtab_shape,
    extended_index_error,
    past_end,
    read_header,
    symbol_index_error,
)
from klpkit.elf.strtab import check_name_offsets, decode_names, names_at
from klpkit.errors import ElfError, InputError

_BYTES = (bytes, bytearray, memoryview)

# Bytes before the section header table read together with it: the section name
# table is usually there (ld puts .shstrtab last, right before the headers).
_LOOKBEHIND = 2048
# The symbol and string tables are read at once when at most this far apart.
_MAX_GAP = 4096

# Where each field of a record lies once a table is cast to one unsigned type:
# (typecode, index of the first record's field, stride).
# Section headers: name, type, flags, addr, offset, size, link, info, addralign, entsize.
_SHDR_FIELDS = {
    64: (
        ("I", 0, 16),
        ("I", 1, 16),
        ("Q", 1, 8),
        ("Q", 2, 8),
        ("Q", 3, 8),
        ("Q", 4, 8),
        ("I", 10, 16),
        ("I", 11, 16),
        ("Q", 6, 8),
        ("Q", 7, 8),
    ),
    32: tuple(("I", k, 10) for k in range(10)),
}
(
    _SH_NAME,
    _SH_TYPE,
    _SH_FLAGS,
    _SH_ADDR,
    _SH_OFFSET,
    _SH_SIZE,
    _SH_LINK,
    _SH_INFO,
    _SH_ALIGN,
    _SH_ENTSIZE,
) = range(10)
# Symbols: (name, value, size, shndx) fields, then the byte offsets of st_info and
# st_other in a record and the record size.
_SYM_FIELDS = {
    64: (("I", 0, 6), ("Q", 1, 3), ("Q", 2, 3), ("H", 3, 12), 4, 5, 24),
    32: (("I", 0, 4), ("I", 1, 4), ("I", 2, 4), ("H", 7, 8), 12, 13, 16),
}
# The section indexes of all symbols are checked at once when there are at most 256
# sections: each byte of st_shndx is mapped to flags, and a symbol needs a closer look
# when the flags of its high byte and of its low byte share a bit. High byte: 1 for 0
# (an index below 256), 2 for 0xff (a reserved index), 4 otherwise (out of range).
# Low byte (_lo_flags): 1 when out of range (>= nsec), 2 for 0xff (SHN_XINDEX), 4 always.
_HI_FLAGS = b"\1" + b"\4" * 254 + b"\2"
_lo_flags_cache: dict[int, bytes] = {}


def _lo_flags(nsec: int) -> bytes:
    table = _lo_flags_cache.get(nsec)
    if table is None:
        table = _lo_flags_cache[nsec] = bytes(
            4 | (b >= nsec) | (b == 0xFF) << 1 for b in range(256)
        )
    return table


def _indexes_fine(raw: bytes, lay, nsec: int) -> bool:
    """Whether the section index of every symbol of ``raw`` (a symbol table) is below
    ``nsec`` or reserved, and none is SHN_XINDEX: a few C-level operations on the bytes
    of all of them, when nsec <= 256. False: look closer (the exact check)."""
    if nsec > 256:
        return False
    f = _SYM_FIELDS[lay.elfclass]
    first, step = f[3][1] * 2, f[6]
    lo, hi = raw[first::step], raw[first + 1 :: step]
    if not lay.little_endian:
        lo, hi = hi, lo
    return not (
        int.from_bytes(lo.translate(_lo_flags(nsec)), "little")
        & int.from_bytes(hi.translate(_HI_FLAGS), "little")
    )


def _column(raw: bytes, field: tuple, swap: bool) -> list[int]:
    """One field of every record of ``raw`` (``swap``: the file's byte order is not the
    host's). C-level casts and strided slices: no per-record Python code."""
    code, start, step = field
    if swap:
        items = array(code, raw)
        items.byteswap()
        return items[start::step].tolist()
    return memoryview(raw).cast(code)[start::step].tolist()


class _Lazy:
    """A column built on first access, then stored in the instance (a plain attribute
    from then on, like :class:`functools.cached_property` without its lock)."""

    __slots__ = ("build", "name")

    def __init__(self, build):
        self.build = build
        self.name = build.__name__

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.build(obj)
        return value


def _shdr_column(field: int):
    def build(self) -> list[int]:
        return _column(self._shraw, _SHDR_FIELDS[self.elfclass][field], self._swap)

    return _Lazy(build)


def _sym_column(field: int):
    def build(self) -> list[int]:
        spec = _SYM_FIELDS[self.elfclass][field]
        assert isinstance(spec, tuple)
        return _column(self._symraw, spec, self._swap)

    return _Lazy(build)


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

    ``sh_addrs``, ``sh_infos``, ``sh_entsizes``, ``values``, ``sizes`` and ``others``
    are built on first access (the symbol database does not use them).

    Use as a context manager (or call :meth:`close`) when it was opened on a path:
    the file stays open for :meth:`section_data`.
    """

    # Defaults of a file without sections / symbols (set per file by the parser).
    machine = type = 0
    elfclass, little_endian = 64, True
    shstrndx = 0
    symtab_index = 0
    strtab: bytes = b""
    infos: bytes = b""
    _names: list[str] | None = None
    _text: str | None = None
    _sections: list[SectionHeader] | None = None
    _shraw: bytes = b""  # the section header table, for the columns built on demand
    _symraw: bytes = b""  # the symbol table, likewise
    _swap = False  # the file's byte order is not the host's
    compression: str | None = None  # "xz", "zstd", "gzip": read through decompression

    sh_addrs = _shdr_column(_SH_ADDR)
    sh_links = _shdr_column(_SH_LINK)
    sh_infos = _shdr_column(_SH_INFO)
    sh_entsizes = _shdr_column(_SH_ENTSIZE)
    _aligns = _shdr_column(_SH_ALIGN)
    values = _sym_column(1)
    sizes = _sym_column(2)

    @_Lazy
    def others(self) -> bytes:
        f = _SYM_FIELDS[self.elfclass]
        return self._symraw[f[5] :: f[6]]

    def __init__(self, target, path: str | None = None):
        if isinstance(target, _BYTES):
            self.path = path
            self._fd = -1
            self._data: bytes | None = target if isinstance(target, bytes) else bytes(target)
            self.file_size = len(self._data)
        else:
            self.path = os.fspath(target) if path is None else path
            self._fd = -1
            self._data = None
            try:
                # O_NONBLOCK: opening a FIFO must not wait for a writer
                self._fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
                st = os.fstat(self._fd)
                if stat.S_ISDIR(st.st_mode):  # (opening a directory read-only succeeds)
                    raise IsADirectoryError
                if not stat.S_ISREG(st.st_mode):  # a FIFO hangs, /dev/zero never ends
                    self.close()
                    raise InputError("not a regular file (an input must be one)", path=self.path)
                self.file_size = st.st_size
            except FileNotFoundError:
                raise InputError("no such file", path=self.path) from None
            except IsADirectoryError:
                self.close()
                raise InputError("is a directory, expected a file", path=self.path) from None
            except OSError as e:
                self.close()
                raise InputError(f"cannot read: {e.strerror}", path=self.path) from None
        self.sh_names: list[str] = []
        self.sh_types: list[int] = []
        self.sh_flags: list[int] = []
        self.sh_offsets: list[int] = []
        self.sh_sizes: list[int] = []
        self.st_names: list[int] = []
        self.shndxs: list[int] = []

    # --- life cycle -------------------------------------------------------------
    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ElfScan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fail(self, reason: str) -> NoReturn:
        raise ElfError(reason, path=self.path)

    def read(self, offset: int, length: int, what: str = "data") -> bytes:
        """``length`` bytes at ``offset``; ElfError when they are not all in the file."""
        if offset < 0 or length < 0 or offset + length > self.file_size:
            self._fail(past_end(what, length, offset, self.file_size))
        if self._data is not None:
            return self._data[offset : offset + length]
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
            self._sections = list(
                map(
                    SectionHeader,
                    zip(
                        self.sh_names,
                        self.sh_types,
                        self.sh_flags,
                        self.sh_addrs,
                        self.sh_offsets,
                        self.sh_sizes,
                        self.sh_links,
                        self.sh_infos,
                        self._aligns,
                        self.sh_entsizes,
                        strict=True,
                    ),
                )
            )
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
            i = self.sections.index(sec) if sec in self.sections else -1
            stype, offset, size = sec.type, sec.offset, sec.size
        if stype == C.SHT_NOBITS or size == 0 or i == 0:
            return b""
        return self.read(offset, size, f"section {i} contents")

    # --- symbols ----------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Every symbol's name (decoded once)."""
        if self._names is None:
            # (the offsets were checked when the file was opened)
            self._names = decode_names(self.strtab, self.st_names)
        return self._names

    def name_at(self, offset: int) -> str:
        """The symbol name at string table ``offset`` (offsets were validated)."""
        text = self._text
        if text is None:
            text = self._text = self.strtab.decode("latin-1")
        name = text[offset : text.find("\0", offset)]
        return name if name.isascii() else name.encode("latin-1").decode("utf-8", "surrogateescape")

    @property
    def symbols(self) -> list[tuple]:
        """Rows of (name, value, size, info, other, shndx)."""
        return list(
            zip(
                self.names,
                self.values,
                self.sizes,
                self.infos,
                self.others,
                self.shndxs,
                strict=True,
            )
        )

    # --- parsing ----------------------------------------------------------------
    def _inflate(self) -> None:
        """Continue on the decompressed bytes of a compressed file (``.ko.xz``: Debian's
        6.12 modules, CONFIG_MODULE_COMPRESS_XZ). All of it is read: the section headers
        and symbol table sit at the end of a module, past everything a stream holds."""
        if self.file_size > MAX_INFLATED:
            self._fail(f"{self.file_size >> 20} MiB of compressed data: not a kernel module")
        if self._data is None:
            data = self.read(0, self.file_size, "compressed file")
            self.close()
        else:
            data = self._data
        self._data, self.compression = inflate(data, self.path)
        self.file_size = len(self._data)

    def _parse(self, symbols: bool) -> None:
        ident = self.read(0, min(self.file_size, 64), "ELF header")
        if ident[:4] != C.ELFMAG and (format_of(ident) or format_named(self.path)):
            self._inflate()
            ident = self.read(0, min(self.file_size, 64), "ELF header")
        file_size = self.file_size
        header = read_header(ident, file_size, self.read, self.path)
        lay = self._lay = header.layout
        elfclass = self.elfclass = lay.elfclass
        self.little_endian = lay.little_endian
        swap = self._swap = lay.byteorder != sys.byteorder
        self.type, self.machine = header.fields[1], header.fields[2]
        shoff, count, shstrndx = header.shoff, header.shnum, header.shstrndx
        if not count:
            return
        entsize = lay.shdr.size
        # The table, and the bytes just before it (the section name table, usually).
        behind = min(shoff, _LOOKBEHIND)
        start = shoff - behind
        buf = self.read(start, behind + count * entsize, "section header table")
        raw = self._shraw = buf[behind:]
        if elfclass == 64 and not swap:
            mv = memoryview(raw)
            w, q = mv.cast("I"), mv.cast("Q")
            name_offs, types = w[0::16].tolist(), w[1::16].tolist()
            self.sh_flags, offsets, sizes = q[1::8].tolist(), q[3::8].tolist(), q[4::8].tolist()
            self.sh_links = w[10::16].tolist()
        else:
            fields = _SHDR_FIELDS[elfclass]
            name_offs, types, self.sh_flags, offsets, sizes = (
                _column(raw, fields[k], swap)
                for k in (_SH_NAME, _SH_TYPE, _SH_FLAGS, _SH_OFFSET, _SH_SIZE)
            )
        self.sh_types, self.sh_offsets, self.sh_sizes = types, offsets, sizes
        check_sections(
            header,
            file_size,
            types,
            self.sh_flags,
            offsets,
            sizes,
            self.sh_links,
            self.path,
        )
        self.shstrndx = shstrndx
        if shstrndx == C.SHN_UNDEF:
            self.sh_names = [""] * count
        else:
            off, size = offsets[shstrndx], sizes[shstrndx]
            if start <= off and off + size <= shoff:
                table = buf[off - start : off - start + size]
            else:
                table = self.read(off, size, f"section {shstrndx} contents")
            self.sh_names = names_at(table, name_offs, self.path, "section")
        if symbols:
            try:
                i = types.index(C.SHT_SYMTAB)
            except ValueError:
                return
            self._parse_symtab(i)

    def _parse_symtab(self, i: int) -> None:
        lay = self._lay
        row = lay.shdr.unpack_from(self._shraw, i * lay.shdr.size)
        entsize, link = row[_SH_ENTSIZE], row[_SH_LINK]
        types, offsets, sizes = self.sh_types, self.sh_offsets, self.sh_sizes
        off, size = offsets[i], sizes[i]
        check_symtab_shape(i, entsize, size, lay, self.path)
        check_string_table_link(i, link, types[link], self.path)
        nsec = len(types)
        self.symtab_index = i
        # The symbol table, then its string table (section_data's rules), in one read
        # when they are close together (ld puts .strtab right after .symtab).
        soff, ssize = offsets[link], sizes[link]  # (sh_link names a SHT_STRTAB)
        end, send = off + size, soff + ssize
        lo = off if off < soff else soff
        hi = end if end > send else send
        if size and ssize and hi <= self.file_size and hi - lo <= size + ssize + _MAX_GAP:
            buf = self.read(lo, hi - lo, "symbol and string tables")
            raw = buf[off - lo : end - lo]
            strtab = buf[soff - lo : send - lo]
        else:
            raw = self.read(off, size, "symbol table")
            strtab = self.read(soff, ssize, f"section {link} contents") if ssize else b""
        self._symraw = raw
        swap = self._swap
        if lay.elfclass == 64 and not swap:
            mv = memoryview(raw)
            offs, shndxs = mv.cast("I")[0::6].tolist(), mv.cast("H")[3::12].tolist()
            self.infos = raw[4::24]
        else:
            fields = _SYM_FIELDS[lay.elfclass]
            offs, shndxs = _column(raw, fields[0], swap), _column(raw, fields[3], swap)
            self.infos = raw[fields[4] :: fields[6]]
        self.st_names = offs
        if offs:
            check_name_offsets(strtab, offs, self.path, "symbol")
        self.strtab = strtab
        if _indexes_fine(raw, lay, nsec):
            self.shndxs = shndxs
            return
        used = set(shndxs)
        bad = [x for x in used if nsec <= x < C.SHN_LORESERVE]
        if bad:
            k = shndxs.index(min(bad))
            raise symbol_index_error(k, self.names[k], shndxs[k], self.path)
        if C.SHN_XINDEX in used:
            xindex = self._xindex(i)
            for k, x in enumerate(shndxs):
                if x == C.SHN_XINDEX:
                    real = xindex[k] if k < len(xindex) else 0
                    if not 0 < real < nsec:
                        raise extended_index_error(k, self.names[k], self.path)
                    shndxs[k] = real
        self.shndxs = shndxs

    def _xindex(self, symtab_i: int) -> list[int]:
        for i, stype in enumerate(self.sh_types):
            if stype == C.SHT_SYMTAB_SHNDX and self.sh_links[i] == symtab_i:
                raw = self.section_data(i)
                return [v[0] for v in self._lay.u32.iter_unpack(raw[: len(raw) // 4 * 4])]
        self._fail("a symbol uses SHN_XINDEX but there is no SHT_SYMTAB_SHNDX section")


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

"""Read just the symbol table of a kernel object, fast, with section headers attached.

Building a symbol database reads ~4,000 modules and a ~600 MB unstripped vmlinux,
so this reader never loads a whole file: it ``pread``s the ELF header, the section
headers, ``.shstrtab``, ``.symtab`` and its string table, and any other section
on demand.  It returns plain tuples, no model objects (the full object model is
:mod:`klpkit.elf`; this module only needs what kallsyms needs: names, bindings,
types, section indexes and the flags/names of those sections).

It copes with ELF32/ELF64, either byte order and ``SHN_XINDEX``.  Anything
malformed raises :class:`klpkit.errors.ElfError` naming the file and the reason.
"""

from __future__ import annotations

import os
import struct
import sys

from klpkit.elf import constants as C
from klpkit.errors import ElfError

_IDENT = struct.Struct("4sBBB")
_EHDR = {
    (64, True): struct.Struct("<16xHHIQQQIHHHHHH"),
    (64, False): struct.Struct(">16xHHIQQQIHHHHHH"),
    (32, True): struct.Struct("<16xHHIIIIIHHHHHH"),
    (32, False): struct.Struct(">16xHHIIIIIHHHHHH"),
}
_SHDR = {
    (64, True): struct.Struct("<IIQQQQIIQQ"),
    (64, False): struct.Struct(">IIQQQQIIQQ"),
    (32, True): struct.Struct("<IIIIIIIIII"),
    (32, False): struct.Struct(">IIIIIIIIII"),
}
# Only the fields we use: (st_name, st_info, st_shndx, st_value).
_SYM64 = {True: struct.Struct("<IBxHQ8x"), False: struct.Struct(">IBxHQ8x")}
_SYM32 = {True: struct.Struct("<II4xBxH"), False: struct.Struct(">II4xBxH")}


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


class ObjectScan:
    """The symbol table of one ELF file plus lazy access to other sections.

    The symbol table is kept as columns (``st_names`` offsets, ``st_infos``,
    ``st_shndxs`` with ``SHN_XINDEX`` resolved, ``st_values``) so hot loops touch only
    what they need; ``symbols`` is the row view ``(name, info, shndx, value)`` with
    index 0 (the null symbol) included, so ``symbols[i]`` is symbol index ``i``.
    """

    def __init__(self, path: str, fd: int, size: int):
        self.path = path
        self._fd = fd
        self.file_size = size
        self.elfclass = 64
        self.little_endian = True
        self.machine = 0
        self.type = 0
        self.sections: list[SectionHeader] = []
        self.symtab_index = 0
        self._symbols: list[tuple[str, int, int, int]] | None = None
        self._native = False
        self._ascii = True
        self.strtab_text = ""
        self.st_names: list[int] = []
        self.st_infos: bytes = b""
        self.st_shndxs: list[int] = []
        self.st_values: list[int] = []

    # --- helpers -------------------------------------------------------
    def _fail(self, reason: str):
        raise ElfError(reason, path=self.path)

    def _pread(self, size: int, offset: int) -> bytes:
        if offset + size > self.file_size:
            self._fail(f"truncated: needs bytes {offset}..{offset + size}, "
                       f"file has {self.file_size}")
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            self._fail("short read")
        return data

    def section_data(self, sec: SectionHeader | int | str) -> bytes:
        if isinstance(sec, int):
            sec = self.sections[sec]
        elif isinstance(sec, str):
            found = self.section(sec)
            if found is None:
                return b""
            sec = found
        if sec.type == C.SHT_NOBITS or sec.size == 0:
            return b""
        return self._pread(sec.size, sec.offset)

    def section(self, name: str) -> SectionHeader | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None

    # --- parsing -------------------------------------------------------
    def _parse(self) -> None:
        if self.file_size < 64:
            self._fail("not an ELF file (too short)")
        head = self._pread(64, 0)
        magic, eclass, edata, _ver = _IDENT.unpack_from(head)
        if magic != C.ELFMAG:
            self._fail("not an ELF file (bad magic)")
        cls = {C.ELFCLASS32: 32, C.ELFCLASS64: 64}.get(eclass)
        le = {C.ELFDATA2LSB: True, C.ELFDATA2MSB: False}.get(edata)
        if cls is None or le is None:
            self._fail(f"unsupported ELF class/data {eclass}/{edata}")
        self.elfclass, self.little_endian = cls, le
        self._native = le == (sys.byteorder == "little") and cls == 64
        eh = _EHDR[cls, le]
        (etype, machine, _v, _entry, _phoff, shoff, _flags, _ehsize, _phentsize, _phnum,
         shentsize, shnum, shstrndx) = eh.unpack_from(head)
        self.type, self.machine = etype, machine
        sh = _SHDR[cls, le]
        if shoff == 0:
            self._fail("no section header table")
        if shentsize != sh.size:
            self._fail(f"bad e_shentsize {shentsize}")
        if shnum == 0 or shstrndx == C.SHN_XINDEX:
            first = sh.unpack(self._pread(sh.size, shoff))
            if shnum == 0:
                shnum = first[5]
            if shstrndx == C.SHN_XINDEX:
                shstrndx = first[6]
        if shnum > (self.file_size - shoff) // sh.size:
            self._fail(f"section header table ({shnum} entries at {shoff:#x}) extends past "
                       f"the end of the file ({self.file_size} bytes)")
        raw = list(sh.iter_unpack(self._pread(shnum * sh.size, shoff)))
        if not 0 < shstrndx < shnum:
            self._fail(f"bad e_shstrndx {shstrndx}")
        s = raw[shstrndx]
        shstr = self._pread(s[5], s[4]).decode("latin-1") if s[1] != C.SHT_NOBITS else ""
        n = len(shstr)
        if n and shstr[-1] != "\0":
            self._fail("section name table is not NUL-terminated")
        find = shstr.find
        secs = []
        for r in raw:
            o = r[0]
            if o >= n and o:
                self._fail(f"section name offset {o} outside .shstrtab")
            secs.append(SectionHeader((shstr[o:find("\0", o)] if o < n else "",) + r[1:]))
        self.sections = secs

    def _parse_symtab(self) -> None:
        secs = self.sections
        symidx = next((i for i, s in enumerate(secs) if s.type == C.SHT_SYMTAB), 0)
        if not symidx:
            self._fail("no symbol table (stripped?)")
        self.symtab_index = symidx
        symsec = secs[symidx]
        if not 0 < symsec.link < len(secs):
            self._fail(f"symbol table links to bad string table index {symsec.link}")
        entsize = 24 if self.elfclass == 64 else 16
        if symsec.size % entsize:
            self._fail(f"symbol table size {symsec.size} is not a multiple of {entsize}")
        raw = self.section_data(symsec)
        strtab = self.section_data(symsec.link)
        if self._native:
            # C-level column split: no per-symbol Python work
            mv = memoryview(raw)
            self.st_names = mv.cast("I")[0::6].tolist()
            self.st_infos = raw[4::24]
            self.st_shndxs = mv.cast("H")[3::12].tolist()
            self.st_values = mv.cast("Q")[1::3].tolist()
        else:
            if self.elfclass == 64:
                recs = list(_SYM64[self.little_endian].iter_unpack(raw))
                cols = list(zip(*recs, strict=True)) if recs else [(), (), (), ()]
                names, infos, shndxs, values = cols
            else:
                recs = list(_SYM32[self.little_endian].iter_unpack(raw))
                cols = list(zip(*recs, strict=True)) if recs else [(), (), (), ()]
                names, values, infos, shndxs = cols
            self.st_names, self.st_infos = list(names), bytes(infos)
            self.st_shndxs, self.st_values = list(shndxs), list(values)
        if self.st_names and max(self.st_names) >= len(strtab):
            self._fail(f"symbol name offset {max(self.st_names)} beyond string table "
                       f"({len(strtab)} bytes)")
        self._ascii = strtab.isascii()
        text = strtab.decode("latin-1")
        if text and text[-1] != "\0":
            self._fail("string table is not NUL-terminated")
        self.strtab_text = text
        if len(secs) >= C.SHN_LORESERVE and C.SHN_XINDEX in self.st_shndxs:
            xsec = next((s for s in secs if s.type == C.SHT_SYMTAB_SHNDX
                         and s.link == symidx), None)
            if xsec is None:
                self._fail("SHN_XINDEX symbol without SHT_SYMTAB_SHNDX section")
            fmt = "<" if self.little_endian else ">"
            ext = struct.unpack(f"{fmt}{xsec.size // 4}I", self.section_data(xsec))
            self.st_shndxs = [ext[k] if x == C.SHN_XINDEX else x
                              for k, x in enumerate(self.st_shndxs)]

    def name_at(self, offset: int) -> str:
        text = self.strtab_text
        name = text[offset:text.find("\0", offset)]
        return name if self._ascii else name.encode("latin-1").decode("utf-8",
                                                                      "surrogateescape")

    @property
    def symbols(self) -> list[tuple[str, int, int, int]]:
        """(name, info, shndx, value) per symbol index (computed once)."""
        if self._symbols is None:
            text = self.strtab_text
            find = text.find
            names = [text[o:find("\0", o)] for o in self.st_names]
            if not self._ascii:
                names = [n.encode("latin-1").decode("utf-8", "surrogateescape") for n in names]
            self._symbols = list(zip(names, self.st_infos, self.st_shndxs, self.st_values,
                                     strict=True))
        return self._symbols


class open_scan:  # noqa: N801 - used as a context manager, reads like a function
    """``with open_scan(path) as scan:`` → an :class:`ObjectScan` with symbols read."""

    def __init__(self, path: str | os.PathLike, *, symbols: bool = True):
        self.path = os.fspath(path)
        self.symbols = symbols
        self.fd = -1

    def __enter__(self) -> ObjectScan:
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
            size = os.fstat(self.fd).st_size
        except FileNotFoundError:
            raise ElfError("no such file", path=self.path) from None
        except IsADirectoryError:
            raise ElfError("is a directory", path=self.path) from None
        except OSError as e:
            raise ElfError(f"cannot read: {e.strerror}", path=self.path) from None
        try:
            scan = ObjectScan(self.path, self.fd, size)
            scan._parse()
            if self.symbols:
                scan._parse_symtab()
            return scan
        except (struct.error, IndexError, ValueError, OverflowError) as e:
            os.close(self.fd)
            raise ElfError(f"malformed ELF: {e}", path=self.path) from None
        except BaseException:
            os.close(self.fd)
            raise

    def __exit__(self, *exc) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

"""One compiled kernel object, indexed for the object diff and the extraction.

An object compiled with ``-ffunction-sections -fdata-sections`` gives nearly every
function and variable a section of its own, but not all: functions with an explicit
section (``__sched``, ``noinstr``, ``__init``), string literals and mergeable constants
share sections, and GCC often refers to a local through its section symbol plus an
offset.  So everything here works on *ranges* — (section, start, size) of a symbol —
and resolves a section-symbol reference to the symbol that covers the offset.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from klpkit.elf import ElfFile, Relocation, Section, Symbol
from klpkit.elf import constants as C
from klpkit.errors import ElfError
from klpkit.kernel.relocs import X86_64_PC_RELATIVE, X86_64_RELOC_SIZES

_CLONE_RE = re.compile(r"\.(constprop|isra|part|cold|lto_priv|localalias)(\.\d+)?")
_NUMBERED_RE = re.compile(r"^(.+)\.\d+$")
_UNIQUE_ID_RE = re.compile(r"^(__UNIQUE_ID_.*?)\d+$")


def base_name(name: str) -> str:
    """The name without GCC's per-translation-unit numbering: ``debug.12`` -> ``debug``,
    ``__UNIQUE_ID_ddebug336.100`` -> ``__UNIQUE_ID_ddebug``.  Clone suffixes
    (``.constprop.0``, ``.isra.0``, ``.part.0``, ``.cold``) are part of the identity."""
    if _CLONE_RE.search(name):
        return name
    m = _NUMBERED_RE.match(name)
    if not m:
        return name
    base = m[1]
    u = _UNIQUE_ID_RE.match(base)
    return u[1] if u else base


def cold_parent(name: str) -> str | None:
    """``foo.cold`` / ``foo.constprop.0.cold`` -> the function it was split from."""
    if name.endswith(".cold"):
        return name[: -len(".cold")]
    m = re.match(r"^(.+)\.cold\.\d+$", name)
    return m[1] if m else None


def reloc_width(rel: Relocation, path: str | None) -> int:
    width = X86_64_RELOC_SIZES.get(rel.type)
    if width is None:
        raise ElfError(
            f"relocation type {rel.type} at {rel.offset:#x} is not one klpkit "
            "knows for x86_64 kernel code",
            path=path,
        )
    return width


@dataclass(frozen=True)
class Place:
    """Where a relocation points: a symbol plus an offset into it, or a section offset
    when no symbol covers the place (string literals, constants, alternatives)."""

    symbol: Symbol | None
    section: Section | None
    offset: int  # into the symbol (or the section): the relocation's addend
    external: bool = False  # undefined in this object
    bias: int = 0  # add to ``offset`` for the byte the reference means (PC-relative: 4)


def home(sym: Symbol) -> Section:
    """The section a defined symbol lives in: every symbol the differ and the extractor
    handle comes from :meth:`ObjectView.defined`, which guarantees one."""
    if sym.section is None:
        raise ValueError(f"{sym.name}: not defined in a section")
    return sym.section


class ObjectView:
    """Symbols and relocations of one relocatable object, by section and offset."""

    def __init__(self, elf: ElfFile):
        if elf.machine != C.EM_X86_64 or elf.elfclass != 64:
            raise ElfError(
                f"e_machine {elf.machine} (ELF{elf.elfclass}): klpkit build "
                "supports x86_64 kernel objects",
                path=elf.path,
            )
        if elf.type != C.ET_REL:
            raise ElfError("not a relocatable object (ET_REL)", path=elf.path)
        self.elf = elf
        self.path = elf.path
        symtab = elf.symtab
        if symtab is None:
            raise ElfError("no symbol table", path=elf.path)
        self.symbols: list[Symbol] = symtab.symbols[1:]
        self._index_relocations()
        self._index_symbols()

    def _index_relocations(self) -> None:
        """Relocations by the section they apply to, sorted by offset for range lookups."""
        self._relocs: dict[int, list[Relocation]] = {}
        self._offsets: dict[int, list[int]] = {}
        self._in_code: set[int] = set()  # id() of relocations applied to code
        for rs in self.elf.relocation_sections():
            if rs.target is None or not rs.is_rela:
                continue
            self._relocs.setdefault(id(rs.target), []).extend(rs.relocations)
            if rs.target.flags & C.SHF_EXECINSTR:
                self._in_code.update(id(r) for r in rs.relocations)
        for key, rels in self._relocs.items():
            rels.sort(key=lambda r: r.offset)
            self._offsets[key] = [r.offset for r in rels]

    def _index_symbols(self) -> None:
        """Symbols by section (sorted by address, for :meth:`covering`) and by name."""
        self._by_section: dict[int, list[Symbol]] = {}
        self._starts: dict[int, list[int]] = {}
        self.section_symbol: dict[int, Symbol] = {}
        for sym in self.symbols:
            sec = sym.section
            if sec is None:
                continue
            if sym.type == C.STT_SECTION:
                self.section_symbol.setdefault(id(sec), sym)
            elif sym.type in (C.STT_FUNC, C.STT_OBJECT) or (sym.size and sym.name):
                self._by_section.setdefault(id(sec), []).append(sym)
        for key, syms in self._by_section.items():
            syms.sort(key=lambda s: (s.value, -s.size))
            self._starts[key] = [s.value for s in syms]
        self.by_name: dict[str, list[Symbol]] = {}
        for sym in self.defined():
            self.by_name.setdefault(sym.name, []).append(sym)

    # -- symbols --------------------------------------------------------------
    def defined(self) -> list[Symbol]:
        """Named functions and objects defined in an allocated section."""
        return [
            s
            for s in self.symbols
            if s.name
            and s.type in (C.STT_FUNC, C.STT_OBJECT)
            and s.section is not None
            and s.section.is_alloc
        ]

    def functions(self) -> list[Symbol]:
        return [s for s in self.defined() if s.type == C.STT_FUNC]

    def objects(self) -> list[Symbol]:
        return [s for s in self.defined() if s.type == C.STT_OBJECT]

    def symbols_in(self, sec: Section) -> list[Symbol]:
        return self._by_section.get(id(sec), [])

    def covering(self, sec: Section, offset: int) -> Symbol | None:
        """The function or object of ``sec`` whose range holds ``offset`` (the end of
        a symbol counts too: ``&array[n]`` points just past it)."""
        syms = self._by_section.get(id(sec))
        if not syms:
            return None
        i = bisect.bisect_right(self._starts[id(sec)], offset) - 1
        for j in range(i, max(i - 4, -1), -1):  # symbols rarely overlap: look back a little
            s = syms[j]
            if s.value <= offset < s.value + max(s.size, 1) or (
                s.size and s.value + s.size == offset
            ):
                return s
        return None

    # -- relocations ----------------------------------------------------------
    def relocs_in(self, sec: Section, lo: int = 0, hi: int | None = None) -> list[Relocation]:
        rels = self._relocs.get(id(sec))
        if not rels:
            return []
        offs = self._offsets[id(sec)]
        a = bisect.bisect_left(offs, lo)
        b = len(offs) if hi is None else bisect.bisect_left(offs, hi)
        return rels[a:b]

    def place(self, rel: Relocation) -> Place:
        """What ``rel`` points at, through section symbols to the covering symbol."""
        sym = rel.symbol
        addend = rel.addend or 0
        if sym is None:
            return Place(None, None, addend)
        if sym.is_undefined:
            return Place(sym, None, addend, external=True)
        sec = sym.section
        # in code, a PC-relative displacement is relative to the end of the field (the
        # addend is the target's offset minus 4); in data (``.long x - .``) to its start
        bias = 4 if rel.type in X86_64_PC_RELATIVE and id(rel) in self._in_code else 0
        if sec is not None and sym.type not in (C.STT_FUNC, C.STT_OBJECT):
            # a section symbol, or a label such as GCC's .LC<n> for a string literal
            # (renumbered by every compile): the place is an offset into the section
            addend += sym.value
            target = self._cover(sec, addend, bias)
            if target is not None:
                return Place(target, sec, addend - target.value, bias=bias)
            return Place(None, sec, addend, bias=bias)
        return Place(sym, sec, addend, bias=bias)

    def _cover(self, sec: Section, addend: int, bias: int) -> Symbol | None:
        """The symbol a section-relative reference means.  A PC-relative displacement
        may be followed by an immediate (``cmpb $0,x(%rip)``: addend -5), so the
        target is 0, 1, 2 or 4 bytes past ``addend + 4``; a section holding a single
        symbol (one variable with ``-fdata-sections``) can only mean that one."""
        for extra in (0, 1, 2, 4) if bias else (0,):
            target = self.covering(sec, addend + bias + extra)
            if target is not None:
                return target
        syms = self._by_section.get(id(sec), ())
        return syms[0] if len(syms) == 1 else None

    def masked_bytes(self, sec: Section, lo: int, hi: int) -> tuple[bytes, list[Relocation]]:
        """``sec``'s bytes [lo, hi) with every relocation site zeroed, and those
        relocations: the bytes a relocation fills say nothing until it is applied."""
        data = bytearray(sec.data[lo:hi]) if sec.type != C.SHT_NOBITS else bytearray(hi - lo)
        rels = self.relocs_in(sec, lo, hi)
        for r in rels:
            a = r.offset - lo
            data[a : a + reloc_width(r, self.path)] = bytes(reloc_width(r, self.path))
        return bytes(data[: hi - lo]), rels


def is_string_section(sec: Section) -> bool:
    return bool(sec.flags & C.SHF_MERGE and sec.flags & C.SHF_STRINGS)


def string_at(sec: Section, offset: int) -> bytes:
    data = sec.data
    if not 0 <= offset < len(data):
        return b"<%d>" % offset
    end = data.find(b"\0", offset)
    return data[offset : end if end >= 0 else len(data)]


def is_writable(sec: Section) -> bool:
    return bool(sec.flags & C.SHF_WRITE)

"""Symbols and the symbol table section.

A :class:`Symbol`'s ``shndx`` is the :class:`Section` it is defined in, or an
int for the special indexes (SHN_UNDEF, SHN_ABS, SHN_COMMON, SHN_LIVEPATCH...).
Relocations point at Symbol objects, never at numbers, so reordering the table
(e.g. inserting a local, which must precede every global) renumbers every
relocation on write.
"""

from __future__ import annotations

from klpkit.elf import constants as C
from klpkit.elf.section import Section
from klpkit.errors import ElfError


class Symbol:
    __slots__ = (
        "name",
        "value",
        "size",
        "bind",
        "type",
        "other",
        "shndx",
        "orig_index",
        "orig_name",
        "orig_name_offset",
    )

    def __init__(
        self,
        name: str = "",
        value: int = 0,
        size: int = 0,
        bind: int = C.STB_GLOBAL,
        type: int = C.STT_NOTYPE,
        other: int = 0,
        shndx: Section | int = C.SHN_UNDEF,
    ):
        self.name = name
        self.value = value
        self.size = size
        self.bind = bind
        self.type = type
        self.other = other
        self.shndx = shndx
        self.orig_index: int | None = None
        self.orig_name: str | None = None
        self.orig_name_offset: int | None = None

    @property
    def info(self) -> int:
        return C.st_info(self.bind, self.type)

    @property
    def visibility(self) -> int:
        return self.other & 3

    @property
    def section(self) -> Section | None:
        return self.shndx if isinstance(self.shndx, Section) else None

    @property
    def is_undefined(self) -> bool:
        return self.shndx == C.SHN_UNDEF

    @property
    def is_local(self) -> bool:
        return self.bind == C.STB_LOCAL

    @property
    def is_livepatch(self) -> bool:
        return self.shndx == C.SHN_LIVEPATCH

    def __repr__(self) -> str:
        where = self.shndx.name if isinstance(self.shndx, Section) else hex(self.shndx)
        return (
            f"<Symbol {self.name!r} {C.BIND_NAMES.get(self.bind, self.bind)} "
            f"{C.TYPE_NAMES.get(self.type, self.type)} {where}>"
        )


class SymbolTable(Section):
    """SHT_SYMTAB: decodes into ``symbols`` on first access."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._symbols: list[Symbol] | None = None
        self.orig_symbols: tuple[Symbol, ...] = ()
        self.shndx_section: Section | None = None  # SHT_SYMTAB_SHNDX, if any

    @property
    def symbols(self) -> list[Symbol]:
        if self._symbols is None:
            self._decode()
        return self._symbols

    @symbols.setter
    def symbols(self, value: list[Symbol]) -> None:
        if self._symbols is None:
            self._decode()
        self._symbols = list(value)

    def is_decoded(self) -> bool:
        return self._symbols is not None

    @property
    def strtab(self) -> Section:
        if not isinstance(self.link, Section):
            raise ElfError(
                f"symbol table {self.name} has no valid string table link",
                path=self.elf.path if self.elf else None,
            )
        return self.link

    def _decode(self) -> None:
        from klpkit.elf.strtab import string_at, string_index

        elf = self.elf
        path = elf.path if elf else None
        lay = elf.layout
        data = self._data
        if self.entsize != lay.sym.size or len(data) % lay.sym.size:
            raise ElfError(
                f"section {self.name}: symbol table entry size {self.entsize} "
                f"or size {len(data)} is invalid",
                path=path,
            )
        strtab = self.strtab._data
        names = string_index(strtab)
        xindex = None
        if self.shndx_section is not None:
            raw = self.shndx_section._data
            xindex = [lay.u32.unpack_from(raw, i)[0] for i in range(0, len(raw) - 3, 4)]
        sections = elf.orig_sections
        nsec = len(sections)
        symbols = []
        for i, (name_off, value, size, info, other, shndx) in enumerate(lay.iter_syms(data)):
            name = names.get(name_off)
            if name is None:
                name = string_at(strtab, name_off)
                if name is None:
                    raise ElfError(
                        f"section {self.name}: symbol {i} name offset {name_off:#x} "
                        f"is outside {self.strtab.name}",
                        path=path,
                    )
            if shndx == C.SHN_XINDEX:
                if xindex is None or i >= len(xindex):
                    raise ElfError(
                        f"section {self.name}: symbol {i} ({name}) uses SHN_XINDEX "
                        "but there is no SHT_SYMTAB_SHNDX entry for it",
                        path=path,
                    )
                shndx = xindex[i]
                if not 0 < shndx < nsec:
                    raise ElfError(
                        f"section {self.name}: symbol {i} ({name}) extended section "
                        f"index {shndx} is out of range",
                        path=path,
                    )
                target = sections[shndx]
            elif C.SHN_UNDEF < shndx < C.SHN_LORESERVE:
                if shndx >= nsec:
                    raise ElfError(
                        f"section {self.name}: symbol {i} ({name}) has section index "
                        f"{shndx} but there are only {nsec} sections",
                        path=path,
                    )
                target = sections[shndx]
            else:
                target = shndx
            sym = Symbol(name, value, size, info >> 4, info & 0xF, other, target)
            sym.orig_index = i
            sym.orig_name = name
            sym.orig_name_offset = name_off
            symbols.append(sym)
        self.orig_symbols = tuple(symbols)
        self._symbols = symbols

    def first_nonlocal(self) -> int:
        for i, sym in enumerate(self.symbols):
            if i and sym.bind != C.STB_LOCAL:
                return i
        return len(self.symbols)

    def sort_locals_first(self) -> None:
        """Stable partition: every STB_LOCAL symbol before every other (gABI rule)."""
        syms = self.symbols
        if not syms:
            return
        head, rest = syms[0], syms[1:]
        locals_ = [s for s in rest if s.bind == C.STB_LOCAL]
        if len(locals_) == len(rest) or all(s.bind == C.STB_LOCAL for s in rest[: len(locals_)]):
            return
        self._symbols = [head, *locals_, *(s for s in rest if s.bind != C.STB_LOCAL)]

    def add(self, symbol: Symbol) -> Symbol:
        """Add a symbol: locals go after the last local, others at the end."""
        syms = self.symbols
        if symbol.bind == C.STB_LOCAL:
            syms.insert(self.first_nonlocal(), symbol)
        else:
            syms.append(symbol)
        return symbol

    def get(self, name: str) -> Symbol | None:
        for sym in self.symbols:
            if sym.name == name:
                return sym
        return None

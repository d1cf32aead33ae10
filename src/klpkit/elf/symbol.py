"""Symbols and the symbol table section.

A :class:`Symbol`'s ``shndx`` is the :class:`Section` it is defined in, or an
int for the special indexes (SHN_UNDEF, SHN_ABS, SHN_COMMON, SHN_LIVEPATCH...).
Relocations point at Symbol objects, never at numbers, so reordering the table
(e.g. inserting a local, which must precede every global) renumbers every
relocation on write.
"""

from __future__ import annotations

from klpkit.elf import constants as C
from klpkit.elf.headers import (
    check_string_table_link,
    check_symtab_shape,
    extended_index_error,
    symbol_index_error,
)
from klpkit.elf.section import Section
from klpkit.elf.strtab import names_at


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
    def is_section_symbol(self) -> bool:
        """STT_SECTION: stands for its section (relocations against the section)."""
        return self.type == C.STT_SECTION

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
        assert self._symbols is not None
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
        """The string table (sh_link), a SHT_STRTAB section of the file."""
        link = self.link
        if isinstance(link, Section) and link.type == C.SHT_STRTAB:
            return link
        index = link.orig_index or 0 if isinstance(link, Section) else link
        check_string_table_link(
            self.orig_index or 0, index, None, self.elf.path if self.elf else None
        )
        raise AssertionError("unreachable: check_string_table_link raised")

    def _decode(self) -> None:
        elf = self.elf
        if elf is None:
            raise ValueError(f"symbol table {self.name!r} is not part of an ELF file")
        path = elf.path
        lay = elf.layout
        data = self._data
        i = self.orig_index or 0
        check_symtab_shape(i, self.entsize, len(data), lay, path)
        rows = list(lay.iter_syms(data))
        names = names_at(self.strtab._data, [row[0] for row in rows], path, "symbol")
        xindex: list[int] = []
        if self.shndx_section is not None:
            xindex = [v[0] for v in lay.u32.iter_unpack(self.shndx_section._data)]
        sections = elf.orig_sections
        nsec = len(sections)
        symbols = []
        for k, ((name_off, value, size, info, other, shndx), name) in enumerate(
            zip(rows, names, strict=True)
        ):
            target: Section | int = shndx
            if shndx == C.SHN_XINDEX:
                real = xindex[k] if k < len(xindex) else 0
                if not 0 < real < nsec:
                    raise extended_index_error(k, name, path)
                target = sections[real]
            elif C.SHN_UNDEF < shndx < C.SHN_LORESERVE:
                if shndx >= nsec:
                    raise symbol_index_error(k, name, shndx, path)
                target = sections[shndx]
            sym = Symbol(name, value, size, info >> 4, info & 0xF, other, target)
            sym.orig_index = k
            sym.orig_name = name
            sym.orig_name_offset = name_off
            symbols.append(sym)
        self.orig_symbols = tuple(symbols)
        self._symbols = symbols

    def first_nonlocal(self) -> int:
        for i, sym in enumerate(self.symbols):
            if i and not sym.is_local:
                return i
        return len(self.symbols)

    def sort_locals_first(self) -> None:
        """Stable partition: every STB_LOCAL symbol before every other (gABI rule)."""
        syms = self.symbols
        if not syms:
            return
        head, rest = syms[0], syms[1:]
        locals_ = [s for s in rest if s.is_local]
        if len(locals_) == len(rest) or all(s.is_local for s in rest[: len(locals_)]):
            return
        self._symbols = [head, *locals_, *(s for s in rest if not s.is_local)]

    def add(self, symbol: Symbol) -> Symbol:
        """Add a symbol: locals go after the last local, others at the end."""
        syms = self.symbols
        if symbol.is_local:
            syms.insert(self.first_nonlocal(), symbol)
        else:
            syms.append(symbol)
        return symbol

    def get(self, name: str) -> Symbol | None:
        for sym in self.symbols:
            if sym.name == name:
                return sym
        return None

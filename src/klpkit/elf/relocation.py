"""Relocations (SHT_REL and SHT_RELA) and their sections.

A :class:`Relocation` refers to its :class:`~klpkit.elf.symbol.Symbol` object,
so moving a relocation between sections or renumbering the symbol table needs
no index bookkeeping by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from klpkit.elf import constants as C
from klpkit.elf.section import Section
from klpkit.elf.symbol import Symbol, SymbolTable
from klpkit.errors import ElfError


@dataclass(eq=False, slots=True)
class Relocation:
    offset: int
    type: int
    symbol: Symbol | None  # None for symbol index 0
    addend: int | None = None  # None in SHT_REL sections (implicit addend)


class RelocationSection(Section):
    """SHT_REL / SHT_RELA: ``relocations`` decodes on first access."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._relocations: list[Relocation] | None = None

    @property
    def is_rela(self) -> bool:
        return self.type == C.SHT_RELA

    @property
    def target(self) -> Section | None:
        return self.info if isinstance(self.info, Section) else None

    @property
    def symtab(self) -> SymbolTable | None:
        return self.link if isinstance(self.link, SymbolTable) else None

    @property
    def relocations(self) -> list[Relocation]:
        if self._relocations is None:
            self._decode()
        assert self._relocations is not None
        return self._relocations

    @relocations.setter
    def relocations(self, value: list[Relocation]) -> None:
        if self._relocations is None and self.elf is not None and self.orig_index is not None:
            self._decode()
        self._relocations = list(value)

    def is_decoded(self) -> bool:
        return self._relocations is not None

    def _decode(self) -> None:
        elf = self.elf
        if elf is None:
            raise ValueError(f"relocation section {self.name!r} is not part of an ELF file")
        path = elf.path
        lay = elf.layout
        rec = lay.rela if self.is_rela else lay.rel
        data = self._data
        where = f"section {self.orig_index} ({self.name})"
        if self.entsize != rec.size or len(data) % rec.size:
            raise ElfError(
                f"{where}: entry size {self.entsize} or size {len(data)} is invalid "
                f"(records of {rec.size} bytes)",
                path=path,
            )
        if elf.type == C.ET_REL and self.target is None:
            raise ElfError(
                f"{where}: sh_info {self.info} does not name the section its relocations apply to",
                path=path,
            )
        symtab = self.symtab
        if symtab is None and (data or elf.type == C.ET_REL):
            raise ElfError(f"{where}: sh_link does not name a symbol table", path=path)
        syms: tuple[Symbol, ...] = ()
        if symtab is not None:
            symtab.symbols  # noqa: B018 - decode to fill orig_symbols
            syms = symtab.orig_symbols
        nsyms = len(syms)
        shift, mask = (32, 0xFFFFFFFF) if lay.elfclass == 64 else (8, 0xFF)
        relocs = []
        for i, entry in enumerate(rec.iter_unpack(data)):
            offset, info = entry[0], entry[1]
            symidx = info >> shift
            if symidx >= nsyms:
                raise ElfError(
                    f"{where}: relocation {i} at {offset:#x} uses symbol index {symidx} "
                    f"but the symbol table has {nsyms} symbols",
                    path=path,
                )
            relocs.append(
                Relocation(
                    offset,
                    info & mask,
                    syms[symidx] if symidx else None,
                    entry[2] if self.is_rela else None,
                )
            )
        self._relocations = relocs

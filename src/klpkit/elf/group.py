"""SHT_GROUP sections (COMDAT groups): a flag word, then member section indexes.

Members are kept as Section references and the signature as a Symbol, so both
follow renumbering of the section and symbol tables.
"""

from __future__ import annotations

from klpkit.elf.section import Section
from klpkit.elf.symbol import Symbol, SymbolTable
from klpkit.errors import ElfError


class GroupSection(Section):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._decoded = False
        self.group_flags = 0
        self.members: list[Section] = []
        self.signature: Symbol | None = None

    def is_decoded(self) -> bool:
        return self._decoded

    def decode(self) -> None:
        if self._decoded:
            return
        elf = self.elf
        if elf is None:
            raise ValueError(f"group section {self.name!r} is not part of an ELF file")
        lay = elf.layout
        data = self._data
        path = elf.path
        if len(data) % 4 or not data:
            raise ElfError(f"group section {self.name}: size {len(data)} is invalid", path=path)
        words = [lay.u32.unpack_from(data, i)[0] for i in range(0, len(data), 4)]
        sections = elf.orig_sections
        members = []
        for idx in words[1:]:
            if not 0 < idx < len(sections):
                raise ElfError(
                    f"group section {self.name}: member index {idx} is out of range", path=path
                )
            members.append(sections[idx])
        symtab = self.link if isinstance(self.link, SymbolTable) else None
        if symtab is None:
            raise ElfError(f"group section {self.name}: sh_link is not a symbol table", path=path)
        symtab.symbols  # noqa: B018 - decode so that orig_symbols is filled
        orig = symtab.orig_symbols
        if not isinstance(self.info, int) or self.info >= len(orig):
            raise ElfError(
                f"group section {self.name}: signature symbol {self.info} is out of range",
                path=path,
            )
        self.group_flags = words[0]
        self.members = members
        self.signature = orig[self.info]
        self._decoded = True

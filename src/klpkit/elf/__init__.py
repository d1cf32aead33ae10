"""klpkit's ELF layer: one object model shared by the reader and the writer.

Knows ELF (ELF32/64, LSB/MSB, REL/RELA, SHN_XINDEX escapes), nothing about the
kernel beyond the two OS-specific livepatch constants. See docs/elf-api.md.
"""

from klpkit.elf.file import ElfFile
from klpkit.elf.group import GroupSection
from klpkit.elf.relocation import Relocation, RelocationSection
from klpkit.elf.section import Section
from klpkit.elf.symbol import Symbol, SymbolTable

__all__ = [
    "ElfFile",
    "GroupSection",
    "Relocation",
    "RelocationSection",
    "Section",
    "Symbol",
    "SymbolTable",
]

"""Sections: one object per section header, shared by reader and writer.

Header fields that hold a *section index* (``sh_link`` of symbol and relocation
tables, ``sh_info`` of relocation sections, ...) are stored as references to
:class:`Section` objects, so adding or removing sections renumbers them for
free; the writer turns them back into indexes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from klpkit.elf import constants as C
from klpkit.elf.headers import index_fields

if TYPE_CHECKING:
    from klpkit.elf.file import ElfFile


class Section:
    """A section: header fields plus its bytes.

    Subclasses (symbol table, relocations, group) decode their contents lazily
    and re-encode them on write; a section never decoded is written back from
    its original bytes.
    """

    def __init__(
        self,
        name: str = "",
        type: int = C.SHT_PROGBITS,
        flags: int = 0,
        data: bytes = b"",
        *,
        addr: int = 0,
        addralign: int = 1,
        entsize: int = 0,
        link: Section | int = 0,
        info: Section | int = 0,
        nobits_size: int = 0,
    ):
        self.name = name
        self.type = type
        self.flags = flags
        self.addr = addr
        self.addralign = addralign
        self.entsize = entsize
        self.link = link
        self.info = info
        self._data = data
        self.nobits_size = nobits_size
        self.elf: ElfFile | None = None
        # Where the section came from (None for a new section): used to keep
        # untouched sections and string offsets exactly where they were.
        self.orig_index: int | None = None
        self.orig_offset: int | None = None
        self.orig_name: str | None = None
        self.orig_name_offset: int | None = None

    # -- contents ---------------------------------------------------------
    @property
    def data(self) -> bytes:
        return b"" if self.type == C.SHT_NOBITS else self._data

    @data.setter
    def data(self, value: bytes) -> None:
        self._data = bytes(value)

    @property
    def size(self) -> int:
        if self.type == C.SHT_NOBITS:
            return self.nobits_size
        return len(self.encoded_data())

    def encoded_data(self) -> bytes:
        """The bytes to write; subclasses re-encode decoded contents here."""
        return self.data

    def is_decoded(self) -> bool:
        """True when the contents were decoded into objects (and will be re-encoded)."""
        return False

    # -- identity ---------------------------------------------------------
    @property
    def index(self) -> int:
        if self.elf is None:
            raise ValueError(f"section {self.name!r} is not part of an ELF file")
        return self.elf.section_index(self)

    @property
    def is_alloc(self) -> bool:
        return bool(self.flags & C.SHF_ALLOC)

    @property
    def is_relocation(self) -> bool:
        return self.type in (C.SHT_REL, C.SHT_RELA)

    def link_index_fields(self) -> tuple[bool, bool]:
        """Which of (sh_link, sh_info) hold section indexes, by the gABI rules."""
        return index_fields(self.type, self.flags)

    def __repr__(self) -> str:
        type_name = C.SECTION_TYPE_NAMES.get(self.type, hex(self.type))
        return f"<Section {self.name!r} {type_name}>"

"""An ELF file: the reader and the writer of the one model.

Reading validates every offset, size, count and index before using it, so a
malformed file ends in one :class:`~klpkit.errors.ElfError` naming the file and
the defect, never in an IndexError or an unbounded allocation.

Writing keeps everything that did not change where it was: sections keep their
file offsets while the layout allows, unchanged names keep their string-table
offsets, undecoded sections are written from their original bytes. That is
what makes a no-op write byte-identical, and an edit minimal.
"""

from __future__ import annotations

import os
from typing import NoReturn

from klpkit.elf import constants as C
from klpkit.elf.compressed import inflate, refuse_compressed_output
from klpkit.elf.group import GroupSection
from klpkit.elf.headers import Header, check_sections, past_end, read_header
from klpkit.elf.relocation import Relocation, RelocationSection
from klpkit.elf.section import Section
from klpkit.elf.strtab import StringTableBuilder, names_at
from klpkit.elf.structs import Layout
from klpkit.elf.symbol import Symbol, SymbolTable
from klpkit.errors import ElfError
from klpkit.fileio import read_input, write_atomic

_SECTION_CLASSES = {
    C.SHT_SYMTAB: SymbolTable,
    C.SHT_REL: RelocationSection,
    C.SHT_RELA: RelocationSection,
    C.SHT_GROUP: GroupSection,
}


# Largest section alignment the writer pads to when it must move a section (1 MiB;
# kernel modules use at most a page).
MAX_ALIGN = 1 << 20


def _reader(mv: memoryview, path):
    """``read(offset, length, what)`` over the bytes of a file, bounds checked."""

    def read(offset: int, length: int, what: str) -> bytes:
        if offset + length > len(mv):
            raise ElfError(past_end(what, length, offset, len(mv)), path=path)
        return bytes(mv[offset : offset + length])

    return read


def _align_up(value: int, align: int) -> int:
    return value if align <= 1 else (value + align - 1) // align * align


class ElfFile:
    """One ELF object: header fields, sections, and whatever trails the ELF image
    (for a kernel module, the appended signature)."""

    def __init__(self, layout: Layout, path: str | None = None):
        self.layout = layout
        self.path = path
        self.ident = b""
        self.type = C.ET_REL
        self.machine = 0
        self.version = C.EV_CURRENT
        self.entry = 0
        self.phoff = 0
        self.flags = 0
        self.ehsize = layout.ehdr.size
        self.phentsize = 0
        self.phnum = 0
        self.shentsize = layout.shdr.size
        self.sections: list[Section] = []
        self.shstrtab: Section | None = None
        self.orig_sections: tuple[Section, ...] = ()
        self.program_headers = b""
        self.trailer = b""
        self.orig_image: bytes | memoryview = b""
        self.orig_shoff: int | None = None
        self.trailer_dropped = False
        # the compression the file was read through ("xz", "zstd", "gzip"), or None
        self.compression: str | None = None

    @classmethod
    def new_relocatable(cls, like: ElfFile) -> ElfFile:
        """An empty relocatable object of ``like``'s class, byte order, machine and
        flags: a null section and a section name table, ready for ``add_section``."""
        elf = cls(like.layout)
        elf.ident, elf.type, elf.machine, elf.flags = like.ident, C.ET_REL, like.machine, like.flags
        null = Section("", C.SHT_NULL)
        null.elf = elf
        elf.sections = [null]
        elf.shstrtab = elf.add_section(Section(".shstrtab", C.SHT_STRTAB, data=b"\0"))
        return elf

    # ------------------------------------------------------------------ reading
    @classmethod
    def read(cls, path: str | os.PathLike) -> ElfFile:
        """Read ``path``; a compressed module (``.ko.xz``, ``.ko.zst``, ``.ko.gz``) is
        decompressed in memory first (:mod:`klpkit.elf.compressed`)."""
        return cls.from_bytes(read_input(path), path=os.fspath(path))

    @classmethod
    def from_bytes(cls, data: bytes, path: str | None = None) -> ElfFile:
        """Parse ``data``: an ELF image, or one compressed with xz, zstd or gzip (told by
        its magic; :attr:`compression` says which)."""
        data, compression = inflate(data, path)
        mv = memoryview(data) if not isinstance(data, memoryview) else data
        header = read_header(bytes(mv[:64]), len(mv), _reader(mv, path), path)
        elf = cls(header.layout, path)
        elf.compression = compression
        elf._parse(mv, header)
        return elf

    def _fail(self, message: str) -> NoReturn:
        raise ElfError(message, path=self.path)

    def _parse(self, mv: memoryview, header: Header) -> None:
        """The sections of the file whose ELF header is ``header`` (every rule about the
        header and the section header table is :mod:`klpkit.elf.headers`')."""
        lay = self.layout
        (
            self.ident,
            self.type,
            self.machine,
            self.version,
            self.entry,
            self.phoff,
            _shoff,
            self.flags,
            self.ehsize,
            self.phentsize,
            self.phnum,
            self.shentsize,
            _shnum,
            _shstrndx,
        ) = header.fields
        self.ident = bytes(self.ident)
        end = lay.ehdr.size
        if self.phnum:
            ph_end = self.phoff + self.phnum * self.phentsize
            self.program_headers = bytes(mv[self.phoff : ph_end])
            end = max(end, ph_end)
        shoff, count = header.shoff, header.shnum
        table = mv[shoff : shoff + count * lay.shdr.size]
        headers = list(lay.shdr.iter_unpack(table))
        columns = list(zip(*headers, strict=True)) or [()] * 10
        names, types, flags, _addrs, offsets, sizes, links = columns[:7]
        check_sections(header, len(mv), types, flags, offsets, sizes, links, self.path)
        if count:
            end = max(end, shoff + count * lay.shdr.size)
        self.orig_shoff = shoff if count else None
        sections = []
        for i, (name_off, stype, sflags, addr, off, ssize, link, info, align, entsize) in enumerate(
            headers
        ):
            nobits = stype == C.SHT_NOBITS
            if i and not nobits:
                end = max(end, off + ssize)
                content = bytes(mv[off : off + ssize])
            else:
                content = b""
            cls = _SECTION_CLASSES.get(stype, Section)
            sec = cls(
                "",
                stype,
                sflags,
                content,
                addr=addr,
                addralign=align,
                entsize=entsize,
                link=link,
                info=info,
                nobits_size=ssize if nobits else 0,
            )
            sec.elf = self
            sec.orig_index = i
            sec.orig_offset = off if i else None
            sec.orig_name_offset = name_off
            sections.append(sec)
        self.sections = sections
        self.orig_sections = tuple(sections)
        if count and header.shstrndx:
            self.shstrtab = sections[header.shstrndx]
            for sec, name in zip(
                sections,
                names_at(self.shstrtab.data, list(names), self.path, "section"),
                strict=True,
            ):
                sec.name = sec.orig_name = name
        self._resolve_links()
        self.orig_image = mv[:end]
        self.trailer = bytes(mv[end:])

    def _resolve_links(self) -> None:
        """Section index fields become references to the sections (in range: checked)."""
        sections = self.sections
        for sec in sections[1:]:
            link_is_section, info_is_section = sec.link_index_fields()
            link, info = sec.link, sec.info  # (numbers as read)
            if link_is_section and isinstance(link, int) and link:
                sec.link = sections[link]
            if info_is_section and isinstance(info, int) and 0 < info < len(sections):
                sec.info = sections[info]
            if sec.type == C.SHT_SYMTAB_SHNDX and isinstance(sec.link, SymbolTable):
                sec.link.shndx_section = sec

    def validate(self) -> ElfFile:
        """Decode every symbol table, relocation section and group now, so that a
        defect anywhere in them is one ElfError here rather than wherever a tool first
        looks (what ``inspect`` shows and ``check`` judges is the whole file)."""
        for sec in self.sections:
            if isinstance(sec, SymbolTable):
                sec.symbols  # noqa: B018 - decode
            elif isinstance(sec, RelocationSection):
                sec.relocations  # noqa: B018 - decode
            elif isinstance(sec, GroupSection):
                sec.decode()
        return self

    # ---------------------------------------------------------------- queries
    @property
    def elfclass(self) -> int:
        return self.layout.elfclass

    @property
    def little_endian(self) -> bool:
        return self.layout.little_endian

    def section(self, name: str) -> Section | None:
        for sec in self.sections:
            if sec.name == name:
                return sec
        return None

    def section_index(self, sec: Section) -> int:
        for i, candidate in enumerate(self.sections):
            if candidate is sec:
                return i
        raise ValueError(f"section {sec.name!r} is not in this file")

    @property
    def symtab(self) -> SymbolTable | None:
        for sec in self.sections:
            if isinstance(sec, SymbolTable):
                return sec
        return None

    def relocation_sections(self) -> list[RelocationSection]:
        return [s for s in self.sections if isinstance(s, RelocationSection)]

    def relocations_for(self, target: Section) -> list[RelocationSection]:
        """Every relocation section whose sh_info is ``target``."""
        return [s for s in self.relocation_sections() if s.info is target]

    # ---------------------------------------------------------------- editing
    def add_section(self, sec: Section, after: Section | None = None) -> Section:
        """Add ``sec`` at the end (or right after ``after``); returns it."""
        sec.elf = self
        if after is None:
            self.sections.append(sec)
        else:
            self.sections.insert(self.section_index(after) + 1, sec)
        return sec

    def remove_section(self, sec: Section) -> None:
        """Remove ``sec``, the relocation sections that apply to it, and its section
        symbol (STT_SECTION). Other symbols defined in it stay and make the write fail:
        dropping them silently could break relocations elsewhere."""
        for rel in self.relocations_for(sec):
            self.sections.remove(rel)
        self.sections.remove(sec)
        for symtab in (s for s in self.sections if isinstance(s, SymbolTable)):
            if any(sym.shndx is sec for sym in symtab.symbols):
                symtab.symbols = [
                    sym
                    for sym in symtab.symbols
                    if not (sym.shndx is sec and sym.is_section_symbol)
                ]

    def new_relocation_section(
        self, name: str, target: Section, *, rela: bool = True, flags: int = C.SHF_INFO_LINK
    ) -> RelocationSection:
        """A new, empty relocation section for ``target``, linked to the symbol table."""
        lay = self.layout
        rec = lay.rela if rela else lay.rel
        sec = RelocationSection(
            name,
            C.SHT_RELA if rela else C.SHT_REL,
            flags,
            addralign=lay.addr_size,
            entsize=rec.size,
            link=self.symtab,
            info=target,
        )
        sec._relocations = []
        self.add_section(sec)
        return sec

    # ---------------------------------------------------------------- writing
    def to_bytes(self, keep_trailer: bool | None = None) -> bytes:
        """Serialise. The trailer (module signature) is kept when the ELF image is
        unchanged, or when ``keep_trailer`` is True; otherwise it is dropped and
        ``trailer_dropped`` is set, because a signature over other bytes is invalid."""
        image = _Writer(self).write()
        unchanged = image == self.orig_image
        keep = unchanged if keep_trailer is None else keep_trailer
        self.trailer_dropped = bool(self.trailer) and not keep
        return image + self.trailer if keep else image

    def write(self, path: str | os.PathLike, keep_trailer: bool | None = None) -> None:
        """Write atomically, uncompressed whatever was read: an output named ``.xz``,
        ``.zst`` or ``.gz`` is refused (:func:`~klpkit.elf.compressed.refuse_compressed_output`)."""
        refuse_compressed_output(path)
        write_atomic(path, self.to_bytes(keep_trailer))


class _Writer:
    """Turns the model back into bytes (one use per write)."""

    def __init__(self, elf: ElfFile):
        self.elf = elf
        self.lay = elf.layout
        self.path = elf.path
        self.index: dict[int, int] = {}  # id(section) -> index in the output
        self.builders: dict[int, StringTableBuilder] = {}  # id(string table) -> builder
        self.shndx_contents: dict[int, bytes] = {}  # id(SYMTAB_SHNDX section) -> bytes
        self.symbol_index: dict[int, dict[int, int]] = {}  # id(symtab) -> id(sym) -> index
        self.renumbered = False  # sections were added, removed or moved since reading

    def _fail(self, message: str) -> NoReturn:
        raise ElfError(message, path=self.path)

    def write(self) -> bytes:
        elf = self.elf
        if not elf.sections:
            return self._compose([], None)
        self._decode_what_renumbering_invalidates()
        self._ensure_shndx_sections()
        self.index = {id(s): i for i, s in enumerate(elf.sections)}
        self._check_structure()
        contents = {id(s): self._encode(s) for s in elf.sections[1:]}
        contents.update(self.shndx_contents)
        name_offsets = [self._name_offset(sec) for sec in elf.sections]
        # Encoding symbols and naming sections may have appended to string tables.
        for sec_id, builder in self.builders.items():
            contents[sec_id] = bytes(builder.data)
        headers = self._section_headers(contents, name_offsets)
        return self._compose(headers, contents)

    # -- what must be re-encoded --------------------------------------------
    def _decode_what_renumbering_invalidates(self) -> None:
        elf = self.elf
        sections = elf.sections
        renumbered = self.renumbered = len(
            [s for s in sections if s.orig_index is not None]
        ) != len(elf.orig_sections) or any(
            s.orig_index is not None and s.orig_index != i for i, s in enumerate(sections)
        )
        grown = len(sections) != len(elf.orig_sections)
        for sec in sections:
            if isinstance(sec, SymbolTable) and (renumbered or sec.is_decoded()):
                syms = sec.symbols
                sec.sort_locals_first()
                moved = len(syms) != len(sec.orig_symbols) or any(
                    s.orig_index != i for i, s in enumerate(sec.symbols)
                )
                if moved or renumbered:
                    for other in sections:
                        if isinstance(other, RelocationSection) and other.link is sec:
                            other.relocations  # noqa: B018 - decode before indexes change
                        elif isinstance(other, GroupSection) and other.link is sec:
                            other.decode()
            elif isinstance(sec, GroupSection) and (renumbered or grown):
                # a member index past the last section would name the appended one
                sec.decode()

    def _ensure_shndx_sections(self) -> None:
        """A file with >= SHN_LORESERVE sections needs SHT_SYMTAB_SHNDX for its symbols."""
        elf = self.elf
        if len(elf.sections) + 1 < C.SHN_LORESERVE:
            return
        for symtab in [s for s in elf.sections if isinstance(s, SymbolTable)]:
            symtab.symbols  # noqa: B018 - shndx values must be recomputed
            if symtab.shndx_section is None or symtab.shndx_section not in elf.sections:
                shndx = Section(
                    ".symtab_shndx", C.SHT_SYMTAB_SHNDX, 0, addralign=4, entsize=4, link=symtab
                )
                symtab.shndx_section = elf.add_section(shndx)

    def _check_structure(self) -> None:
        """What the written section header table will say must hold: every section
        reference points at a section still in the file, of the type the gABI demands
        (a symbol table's string table, a relocation section's symbol table and target,
        a group's or an extended-index table's symbol table); a section index kept as a
        number (never resolved) is 0; a section whose contents the writer regenerates
        has that type's entry size. Edits happen between reading and writing: this is
        where they are judged."""
        index = self.index
        relocatable = self.elf.type == C.ET_REL
        for sec in self.elf.sections[1:]:
            link_is_index, info_is_index = sec.link_index_fields()
            for field, is_index in (("link", link_is_index), ("info", info_is_index)):
                ref = getattr(sec, field)
                if isinstance(ref, Section):
                    if id(ref) not in index:
                        self._fail(
                            f"section {sec.name}: sh_{field} refers to section {ref.name}, "
                            "which is no longer in the file"
                        )
                elif is_index and ref:
                    self._fail(f"section {sec.name}: sh_{field} {ref} is not a section")
                elif field == "link" and ref and self.renumbered:
                    # gABI: sh_link of any other type is 0 unless the type says
                    # otherwise; a number klpkit cannot renumber would name another
                    # section after the edit.
                    self._fail(
                        f"section {sec.name}: sh_link {ref} of a section of type "
                        f"{sec.type:#x} would no longer name the same section once the "
                        "sections are renumbered"
                    )
            self._check_typed_links(sec, relocatable)
            self._check_entsize(sec)

    def _check_typed_links(self, sec: Section, relocatable: bool) -> None:
        if isinstance(sec, SymbolTable) and sec.is_decoded():
            sec.strtab  # noqa: B018 - raises unless sh_link names a SHT_STRTAB
        elif isinstance(sec, RelocationSection) and (relocatable or sec.is_decoded()):
            if sec.symtab is None:
                self._fail(f"section {sec.name}: sh_link does not name a symbol table")
            if relocatable and sec.target is None:
                self._fail(f"section {sec.name}: sh_info does not name a section")
        elif isinstance(sec, GroupSection) and not isinstance(sec.link, SymbolTable):
            self._fail(f"group {sec.name}: sh_link does not name a symbol table")
        elif sec.type == C.SHT_SYMTAB_SHNDX:
            symtab = sec.link
            if not isinstance(symtab, SymbolTable) or symtab.shndx_section is not sec:
                self._fail(
                    f"section {sec.name}: SHT_SYMTAB_SHNDX that is not the extended-index "
                    "table of a symbol table"
                )

    def _check_entsize(self, sec: Section) -> None:
        lay = self.lay
        if isinstance(sec, SymbolTable) and sec.is_decoded():
            want = lay.sym.size
        elif isinstance(sec, RelocationSection) and sec.is_decoded():
            want = (lay.rela if sec.is_rela else lay.rel).size
        elif sec.type == C.SHT_SYMTAB_SHNDX or (isinstance(sec, GroupSection) and sec.is_decoded()):
            want = 4
        else:
            return
        if sec.entsize != want:
            self._fail(
                f"section {sec.name}: sh_entsize {sec.entsize}, its records are {want} bytes"
            )

    # -- contents -------------------------------------------------------------
    def _builder(self, table: Section) -> StringTableBuilder:
        builder = self.builders.get(id(table))
        if builder is None:
            builder = self.builders[id(table)] = StringTableBuilder(table.data)
        return builder

    def _encode(self, sec: Section) -> bytes:
        if sec.type == C.SHT_NOBITS:
            return b""
        if isinstance(sec, SymbolTable) and sec.is_decoded():
            return self._encode_symtab(sec)
        if isinstance(sec, RelocationSection) and sec.is_decoded():
            return self._encode_relocations(sec)
        if isinstance(sec, GroupSection) and sec.is_decoded():
            return self._encode_group(sec)
        if (
            sec.type == C.SHT_SYMTAB_SHNDX
            and isinstance(sec.link, SymbolTable)
            and sec.link.is_decoded()
        ):
            return b""  # filled in by the symbol table's encoder
        return sec.data

    def _encode_symtab(self, symtab: SymbolTable) -> bytes:
        lay = self.lay
        strtab = symtab.strtab
        index = self.index
        out = bytearray()
        xindex = bytearray()
        need_x = symtab.shndx_section is not None and id(symtab.shndx_section) in index
        for i, sym in enumerate(symtab.symbols):
            if sym.name == sym.orig_name and sym.orig_name_offset is not None:
                name_off = sym.orig_name_offset
            else:
                name_off = self._builder(strtab).offset_of(sym.name) if sym.name else 0
            shndx = sym.shndx
            x = 0
            if isinstance(shndx, Section):
                idx = index.get(id(shndx))
                if idx is None:
                    self._fail(
                        f"symbol {i} ({sym.name}) is defined in section {shndx.name}, "
                        "which is no longer in the file"
                    )
                if idx >= C.SHN_LORESERVE:
                    shndx, x = C.SHN_XINDEX, idx
                else:
                    shndx = idx
            elif not 0 <= shndx <= 0xFFFF:
                self._fail(f"symbol {i} ({sym.name}) has invalid st_shndx {shndx}")
            out += lay.pack_sym(name_off, sym.value, sym.size, sym.info, sym.other, shndx)
            xindex += lay.u32.pack(x)
        if need_x:
            self.shndx_contents[id(symtab.shndx_section)] = bytes(xindex)
        return bytes(out)

    def _symbol_indexes(self, symtab: SymbolTable) -> dict[int, int]:
        indexes = self.symbol_index.get(id(symtab))
        if indexes is None:
            indexes = self.symbol_index[id(symtab)] = {
                id(s): i for i, s in enumerate(symtab.symbols)
            }
        return indexes

    def _encode_relocations(self, sec: RelocationSection) -> bytes:
        lay = self.lay
        relocs = sec.relocations
        if not relocs:
            return b""
        symtab = sec.symtab
        if symtab is None:
            self._fail(f"section {sec.name}: relocations without a symbol table link")
        symidx = self._symbol_indexes(symtab)
        out = bytearray()
        rela = sec.is_rela
        pack = (lay.rela if rela else lay.rel).pack
        for r in relocs:
            s = 0 if r.symbol is None else symidx.get(id(r.symbol))
            if s is None:
                self._fail(
                    f"section {sec.name}: relocation at {r.offset:#x} uses a symbol "
                    f"that is not in {symtab.name}"
                )
            info = lay.r_info(s, r.type)
            if rela:
                out += pack(r.offset, info, r.addend or 0)
            else:
                if r.addend:
                    self._fail(
                        f"section {sec.name}: SHT_REL cannot hold the explicit addend "
                        f"{r.addend} of the relocation at {r.offset:#x}"
                    )
                out += pack(r.offset, info)
        return bytes(out)

    def _encode_group(self, sec: GroupSection) -> bytes:
        u32 = self.lay.u32
        out = bytearray(u32.pack(sec.group_flags))
        for member in sec.members:
            idx = self.index.get(id(member))
            if idx is None:
                self._fail(f"group {sec.name}: member {member.name} is no longer in the file")
            out += u32.pack(idx)
        return bytes(out)

    # -- headers --------------------------------------------------------------
    def _name_offset(self, sec: Section) -> int:
        """Where the section's name is in .shstrtab: unchanged names keep their offset."""
        elf = self.elf
        if sec is elf.sections[0]:
            return 0
        if (
            sec.name == sec.orig_name
            and sec.orig_name_offset is not None
            and elf.shstrtab is not None
            and elf.shstrtab.orig_index is not None
        ):
            return sec.orig_name_offset
        if elf.shstrtab is None or id(elf.shstrtab) not in self.index:
            self._fail(f"section {sec.name}: no section name table to hold its name")
        return self._builder(elf.shstrtab).offset_of(sec.name)

    def _section_headers(self, contents, name_offsets) -> list[list]:
        """One mutable header row per section (offset filled in by the layout)."""
        elf = self.elf
        index = self.index
        headers = [self._null_header()]
        for i, sec in enumerate(elf.sections[1:], 1):
            name_off = name_offsets[i]
            size = sec.nobits_size if sec.type == C.SHT_NOBITS else len(contents[id(sec)])
            link = index[id(sec.link)] if isinstance(sec.link, Section) else sec.link
            if isinstance(sec, SymbolTable) and sec.is_decoded():
                info = sec.first_nonlocal()
            elif isinstance(sec, GroupSection) and sec.is_decoded():
                assert isinstance(sec.link, SymbolTable)  # (_check_structure)
                signature = self._symbol_indexes(sec.link).get(id(sec.signature))
                if signature is None:
                    self._fail(f"group {sec.name}: signature symbol is not in the symbol table")
                info = signature
            else:
                info = index[id(sec.info)] if isinstance(sec.info, Section) else sec.info
            headers.append(
                [
                    name_off,
                    sec.type,
                    sec.flags,
                    sec.addr,
                    0,
                    size,
                    link,
                    info,
                    sec.addralign,
                    sec.entsize,
                ]
            )
        return headers

    def _null_header(self) -> list:
        n = len(self.elf.sections)
        shstr = self.index.get(id(self.elf.shstrtab), 0) if self.elf.shstrtab else 0
        return [
            0,
            0,
            0,
            0,
            0,
            n if n >= C.SHN_LORESERVE else 0,
            shstr if shstr >= C.SHN_LORESERVE else 0,
            0,
            0,
            0,
        ]

    # -- layout ---------------------------------------------------------------
    def _items(self, headers) -> list[tuple[int | None, Section | None]]:
        """What to place, in order: (original offset, section; None for the section
        header table). Sections keep their order; new ones go after the old ones."""
        elf = self.elf
        existing = [s for s in elf.sections[1:] if s.orig_offset is not None]
        new = [s for s in elf.sections[1:] if s.orig_offset is None]
        items: list[tuple[int | None, Section | None]] = sorted(
            ((s.orig_offset, s) for s in existing), key=lambda t: t[0] or 0
        )
        if headers:
            table = (elf.orig_shoff, None)
            if elf.orig_shoff is None or not items or elf.orig_shoff >= (items[-1][0] or 0):
                items = items + [(None, s) for s in new] + [table]
            else:
                items = items + [table] + [(None, s) for s in new]
        return items

    def _place(self, items, headers, contents) -> tuple[list, int, int]:
        """Offsets: everything where it was while the layout allows, else after the
        previous item, aligned. Returns (placed items, section header offset, size)."""
        elf = self.elf
        lay = self.lay
        cursor = lay.ehdr.size
        if elf.program_headers:
            cursor = max(cursor, elf.phoff + len(elf.program_headers))
        placed = []  # (offset, length, section|None, at its original place)
        shoff = 0
        for orig_off, sec in items:
            if sec is not None and sec.type == C.SHT_NOBITS:
                keep = orig_off is not None and orig_off >= cursor
                headers[self.index[id(sec)]][4] = (
                    orig_off if keep else _align_up(cursor, max(sec.addralign, 1))
                )
                continue
            if sec is None:
                data_len, align = len(headers) * lay.shdr.size, lay.addr_size
            else:
                data_len, align = len(contents[id(sec)]), max(sec.addralign, 1)
            if orig_off is not None and orig_off >= cursor and orig_off % align == 0:
                off = orig_off
            elif align > MAX_ALIGN:
                self._fail(
                    f"section {sec.name if sec else 'header table'}: alignment "
                    f"{align:#x} is not plausible (more than {MAX_ALIGN:#x}); refusing "
                    "to pad the file to it"
                )
            else:
                off = _align_up(cursor, align)
            if sec is None:
                shoff = off
            else:
                headers[self.index[id(sec)]][4] = off
            placed.append((off, data_len, sec, off == orig_off))
            cursor = off + data_len
        return placed, shoff, cursor

    def _compose(self, headers, contents) -> bytes:
        elf = self.elf
        lay = self.lay
        orig = elf.orig_image
        placed, shoff, total = self._place(self._items(headers), headers, contents)
        out = bytearray(total)
        # Gaps between two items that both stayed in place keep their original bytes.
        prev_end, prev_in_place = lay.ehdr.size, True
        for off, data_len, sec, in_place in placed:
            if in_place and prev_in_place and off > prev_end and off <= len(orig):
                out[prev_end:off] = orig[prev_end:off]
            if sec is None:
                out[off : off + data_len] = b"".join(lay.shdr.pack(*h) for h in headers)
            else:
                out[off : off + data_len] = contents[id(sec)]
            prev_end = off + data_len
            prev_in_place = (
                in_place
                and (sec is None or sec.orig_offset == off)
                and self._same_size(sec, data_len, headers)
            )
        shnum = len(headers)
        shstrndx = self.index.get(id(elf.shstrtab), 0) if elf.shstrtab is not None else 0
        out[0 : lay.ehdr.size] = lay.ehdr.pack(
            elf.ident,
            elf.type,
            elf.machine,
            elf.version,
            elf.entry,
            elf.phoff,
            shoff,
            elf.flags,
            elf.ehsize,
            elf.phentsize,
            elf.phnum,
            elf.shentsize,
            shnum if shnum < C.SHN_LORESERVE else 0,
            shstrndx if shstrndx < C.SHN_LORESERVE else C.SHN_XINDEX,
        )
        if elf.program_headers:
            out[elf.phoff : elf.phoff + len(elf.program_headers)] = elf.program_headers
        return bytes(out)

    def _same_size(self, sec, data_len, headers) -> bool:
        if sec is None:
            return len(headers) == len(self.elf.orig_sections)
        orig_sec = sec.orig_index is not None
        return orig_sec and data_len == len(sec._data) if sec.type != C.SHT_NOBITS else True


__all__ = ["ElfFile", "Relocation", "Symbol"]

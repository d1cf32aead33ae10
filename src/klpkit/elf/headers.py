"""The ELF header and the section header table: one parser for both readers.

The full model (:mod:`klpkit.elf.file`) and the scanner (:mod:`klpkit.elf.fast`) read
the same two tables; every rule about them is here, once, with one message each.  That
is what lets the scanner refuse at least everything the model refuses (the property
test in tests/elf/test_scanner_vs_model.py holds them to it).

What is checked (the kernel's module loader checks the same of a module before it
uses it: elf_validity_check() in kernel/module/main.c), and must hold before anything
else is read:

* the ELF header: magic, class and data encoding, its size; the program header table
  lies in the file;
* the section header table: ``e_shentsize``, the ``e_shnum``/``e_shstrndx`` escapes
  through section header 0 (gABI, for >= SHN_LORESERVE sections), the table lies in
  the file; ``e_shstrndx`` names a string table;
* every section with contents lies in the file;
* every ``sh_link`` that holds a section index (gABI: of symbol, relocation, group,
  hash and extended-index tables; with SHF_LINK_ORDER) is an index of the table;
* an extended-index table (SHT_SYMTAB_SHNDX) belongs to a symbol table, one per
  symbol table, one 32-bit entry per symbol: the writer regenerates its contents.

The rules that need a section's contents (a symbol table's records, a relocation
section's target) are checked where those contents are decoded, by the model; the
scanner applies them to the one symbol table it reads.

The readers pass the section header fields as columns (one list per field).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import NamedTuple

from klpkit.elf import constants as C
from klpkit.elf.structs import EI_NIDENT, Layout, layout_for
from klpkit.errors import ElfError

#: Types whose ``sh_link`` is a section index (gABI; GNU and LLVM extensions).
LINK_IS_INDEX = frozenset(
    (
        C.SHT_SYMTAB,
        C.SHT_DYNSYM,
        C.SHT_REL,
        C.SHT_RELA,
        C.SHT_GROUP,
        C.SHT_HASH,
        C.SHT_DYNAMIC,
        C.SHT_SYMTAB_SHNDX,
        C.SHT_GNU_HASH,
        C.SHT_GNU_VERSYM,
        C.SHT_GNU_VERNEED,
        C.SHT_GNU_VERDEF,
        C.SHT_LLVM_ADDRSIG,
        C.SHT_LLVM_CALL_GRAPH_PROFILE,
    )
)
#: Types whose ``sh_info`` is a section index (gABI).
INFO_IS_INDEX = frozenset((C.SHT_REL, C.SHT_RELA))


# e_ident[EI_CLASS], e_ident[EI_DATA] -> layout
_LAYOUTS = {
    bytes((cls, data)): layout_for(bits, data == C.ELFDATA2LSB)
    for cls, bits in ((C.ELFCLASS32, 32), (C.ELFCLASS64, 64))
    for data in (C.ELFDATA2LSB, C.ELFDATA2MSB)
}


def index_fields(stype: int, flags: int) -> tuple[bool, bool]:
    """Which of (sh_link, sh_info) of a section hold section indexes."""
    return (
        stype in LINK_IS_INDEX or bool(flags & C.SHF_LINK_ORDER),
        stype in INFO_IS_INDEX or bool(flags & C.SHF_INFO_LINK),
    )


class Header(NamedTuple):
    """The ELF header's fields, and where the section header table is."""

    layout: Layout
    fields: tuple  # the ELF header, as Layout.ehdr unpacks it
    shoff: int
    shnum: int  # section headers (0: none), the e_shnum escape resolved
    shstrndx: int  # the e_shstrndx escape resolved


def past_end(what: str, length: int, offset: int, file_size: int) -> str:
    return (
        f"{what} ({length} bytes at {offset:#x}) extends past the end of the file "
        f"({file_size} bytes)"
    )


def layout_of(head: bytes, path) -> Layout:
    """The layout ``head`` (the file's first bytes) names; ElfError for a file that is
    not ELF or of a class/encoding that does not exist."""
    if len(head) < EI_NIDENT or head[:4] != C.ELFMAG:
        why = "too short" if len(head) < 4 else "bad magic"
        raise ElfError(f"not an ELF file ({why})", path=path)
    lay = _LAYOUTS.get(bytes(head[4:6]))
    if lay is None:
        raise ElfError(f"unsupported ELF class {head[4]} or data encoding {head[5]}", path=path)
    return lay


def read_header(
    head: bytes, file_size: int, read: Callable[[int, int, str], bytes], path
) -> Header:
    """Parse the ELF header in ``head`` (at least its first 64 bytes, or the whole file
    when shorter) of a file of ``file_size`` bytes; ``read(offset, length, what)`` reads
    section header 0 when the escapes need it (bounds checked by the caller)."""
    lay = layout_of(head, path)
    if len(head) < lay.ehdr.size:
        raise ElfError(f"truncated ELF header ({len(head)} bytes, need {lay.ehdr.size})", path=path)
    fields = lay.ehdr.unpack_from(head, 0)
    phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx = fields[5:7] + fields[9:]
    if phnum and phoff + phnum * phentsize > file_size:
        raise ElfError(
            f"program header table ({phnum} entries at {phoff:#x}) extends past the end "
            f"of the file ({file_size} bytes)",
            path=path,
        )
    if shoff == 0:
        if shnum:
            raise ElfError(f"e_shnum is {shnum} but e_shoff is 0", path=path)
        return Header(lay, fields, 0, 0, 0)
    entsize = lay.shdr.size
    if shentsize != entsize:
        raise ElfError(f"e_shentsize is {shentsize}, expected {entsize}", path=path)
    count = shnum
    if not shnum or shstrndx == C.SHN_XINDEX:
        # The escapes: the count in section header 0's sh_size, the index in its sh_link.
        first = lay.shdr.unpack(read(shoff, entsize, "section header 0"))
        count = shnum or first[5]
        if count == 0:
            raise ElfError("e_shnum is 0 and section header 0 gives no count", path=path)
        if shstrndx == C.SHN_XINDEX:
            shstrndx = first[6]
    if count > (file_size - shoff) // entsize:
        raise ElfError(
            f"section header table ({count} entries at {shoff:#x}) extends past the end "
            f"of the file ({file_size} bytes)",
            path=path,
        )
    return Header(lay, fields, shoff, count, shstrndx)


def check_sections(
    header: Header,
    file_size: int,
    types: Sequence[int],
    flags: Sequence[int],
    offsets: Sequence[int],
    sizes: Sequence[int],
    links: Sequence[int],
    path,
) -> None:
    """The section header table's own rules (see the module's docstring), on columns."""
    count = header.shnum
    if not count:
        return
    shstrndx = header.shstrndx
    if shstrndx and (shstrndx >= count or types[shstrndx] != C.SHT_STRTAB):
        raise ElfError(f"e_shstrndx {shstrndx} does not name a string table section", path=path)
    # Section 0's fields are escapes, never contents: its offset is 0, its size a count.
    if max(offsets) + max(sizes) > file_size and max(map(operator.add, offsets, sizes)) > file_size:
        for i in range(1, count):
            if types[i] != C.SHT_NOBITS and offsets[i] + sizes[i] > file_size:
                raise ElfError(
                    past_end(f"section {i} contents", sizes[i], offsets[i], file_size), path=path
                )
    _check_indexes(header, types, flags, sizes, links, path)


def _check_indexes(header, types, flags, sizes, links, path) -> None:
    count = header.shnum
    if max(links) >= count:  # (the usual case in one C-level pass: every link in range)
        for i in range(1, count):
            if links[i] >= count and (types[i] in LINK_IS_INDEX or flags[i] & C.SHF_LINK_ORDER):
                raise ElfError(
                    f"section {i}: sh_link {links[i]} is not a section index ({count} sections)",
                    path=path,
                )
    if C.SHT_SYMTAB_SHNDX in types:
        extended: set[int] = set()  # symbol tables with an extended-index table
        for i in range(1, count):
            if types[i] == C.SHT_SYMTAB_SHNDX:
                _check_extended(i, links[i], types, sizes, header.layout, extended, path)


def _check_extended(i, link, types, sizes, lay, extended, path) -> None:
    """An SHT_SYMTAB_SHNDX holds one 32-bit word per symbol of its symbol table."""
    if not link or types[link] != C.SHT_SYMTAB:
        raise ElfError(
            f"section {i}: SHT_SYMTAB_SHNDX whose sh_link {link} is not a symbol table",
            path=path,
        )
    if link in extended:
        raise ElfError(
            f"section {i}: a second SHT_SYMTAB_SHNDX section for symbol table {link}",
            path=path,
        )
    extended.add(link)
    if sizes[i] * lay.sym.size != 4 * sizes[link]:
        raise ElfError(
            f"section {i}: SHT_SYMTAB_SHNDX of {sizes[i]} bytes for a symbol table of "
            f"{sizes[link]} bytes (one 4-byte entry per symbol)",
            path=path,
        )


def check_symtab_shape(i: int, entsize: int, size: int, lay: Layout, path) -> None:
    """A symbol table is a whole number of records of the class's size."""
    if entsize != lay.sym.size or size % lay.sym.size:
        raise ElfError(
            f"section {i}: symbol table entry size {entsize} or size {size} is invalid",
            path=path,
        )


def check_string_table_link(i: int, link: int, link_type: int | None, path) -> None:
    """A symbol table's sh_link names its string table (gABI)."""
    if not link or link_type != C.SHT_STRTAB:
        raise ElfError(f"section {i}: sh_link {link} does not name a string table", path=path)


def symbol_index_error(k: int, name: str, shndx: int, path) -> ElfError:
    return ElfError(f"symbol {k} ({name}): section index {shndx} is out of range", path=path)


def extended_index_error(k: int, name: str, path) -> ElfError:
    return ElfError(f"symbol {k} ({name}): extended section index is invalid", path=path)

"""Independent oracles for the ELF layer: pyelftools and binutils/elfutils."""

import io
import re
import subprocess

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection as PyRelSection
from elftools.elf.sections import SymbolTableSection

from klpkit.elf import ElfFile, RelocationSection, Section

_SHN = {"SHN_UNDEF": 0, "SHN_ABS": 0xFFF1, "SHN_COMMON": 0xFFF2}


def _shndx(value) -> int:
    if isinstance(value, int):
        return value
    return _SHN.get(value, value)


def model_view(elf: ElfFile) -> dict:
    """What our model says, as plain data (indexes computed as the writer does)."""
    index = {id(s): i for i, s in enumerate(elf.sections)}
    sections = []
    n = len(elf.sections)
    for sec in elf.sections:
        if sec is elf.sections[0]:  # the escapes the writer puts in section header 0
            shstrndx = index.get(id(elf.shstrtab), 0)
            sections.append(
                ("", 0, 0, n if n >= 0xFF00 else 0, shstrndx if shstrndx >= 0xFF00 else 0, 0)
            )
            continue
        link = index[id(sec.link)] if isinstance(sec.link, Section) else sec.link
        info = index[id(sec.info)] if isinstance(sec.info, Section) else sec.info
        sections.append(
            (sec.name, sec.type, sec.flags, sec.size, link, info if sec.type != 2 else None)
        )
    symtab = elf.symtab
    syms = []
    symidx = {}
    if symtab is not None:
        for i, s in enumerate(symtab.symbols):
            symidx[id(s)] = i
            shndx = index[id(s.shndx)] if isinstance(s.shndx, Section) else s.shndx
            syms.append((s.name, s.value, s.size, s.bind, s.type, s.other, shndx))
    relocs = {}
    for rs in elf.relocation_sections():
        assert isinstance(rs, RelocationSection)
        relocs[rs.name] = [
            (
                r.offset,
                r.type,
                symidx[id(r.symbol)] if r.symbol else 0,
                r.addend if rs.is_rela else None,
            )
            for r in rs.relocations
        ]
    return {"sections": sections, "symbols": syms, "relocations": relocs}


_BIND = {"STB_LOCAL": 0, "STB_GLOBAL": 1, "STB_WEAK": 2, "STB_GNU_UNIQUE": 10}
_TYPE = {
    "STT_NOTYPE": 0,
    "STT_OBJECT": 1,
    "STT_FUNC": 2,
    "STT_SECTION": 3,
    "STT_FILE": 4,
    "STT_COMMON": 5,
    "STT_TLS": 6,
    "STT_GNU_IFUNC": 10,
}


def pyelftools_view(data: bytes) -> dict:
    """The same view read by pyelftools from the bytes we wrote."""
    f = ELFFile(io.BytesIO(data))
    sections = []
    for i in range(f.num_sections()):
        s = f.get_section(i)
        h = s.header
        sections.append(
            (
                s.name,
                _section_type(h.sh_type),
                h.sh_flags,
                h.sh_size,
                h.sh_link,
                h.sh_info if _section_type(h.sh_type) != 2 else None,
            )
        )
    syms = []
    relocs = {}
    for s in f.iter_sections():
        if isinstance(s, SymbolTableSection) and s.header.sh_type == "SHT_SYMTAB":
            xindex = next(
                (x for x in f.iter_sections() if x.header.sh_type == "SHT_SYMTAB_SHNDX"), None
            )
            for n, sym in enumerate(s.iter_symbols()):
                e = sym.entry
                bind = e.st_info.bind
                typ = e.st_info.type
                syms.append(
                    (
                        sym.name,
                        e.st_value,
                        e.st_size,
                        _BIND.get(bind, bind),
                        _TYPE.get(typ, typ),
                        e.st_other.visibility and _vis(e.st_other.visibility) or 0,
                        xindex.get_section_index(n)
                        if e.st_shndx in ("SHN_XINDEX", 0xFFFF)
                        else _shndx(e.st_shndx),
                    )
                )
        if isinstance(s, PyRelSection):
            relocs[s.name] = [
                (
                    r["r_offset"],
                    r["r_info_type"],
                    r["r_info_sym"],
                    r["r_addend"] if s.is_RELA() else None,
                )
                for r in s.iter_relocations()
            ]
    return {"sections": sections, "symbols": syms, "relocations": relocs}


def _vis(v):
    return {"STV_DEFAULT": 0, "STV_INTERNAL": 1, "STV_HIDDEN": 2, "STV_PROTECTED": 3}.get(v, v)


def _section_type(t):
    names = {
        "SHT_NULL": 0,
        "SHT_PROGBITS": 1,
        "SHT_SYMTAB": 2,
        "SHT_STRTAB": 3,
        "SHT_RELA": 4,
        "SHT_HASH": 5,
        "SHT_DYNAMIC": 6,
        "SHT_NOTE": 7,
        "SHT_NOBITS": 8,
        "SHT_REL": 9,
        "SHT_SHLIB": 10,
        "SHT_DYNSYM": 11,
        "SHT_INIT_ARRAY": 14,
        "SHT_FINI_ARRAY": 15,
        "SHT_PREINIT_ARRAY": 16,
        "SHT_GROUP": 17,
        "SHT_SYMTAB_SHNDX": 18,
        "SHT_GNU_ATTRIBUTES": 0x6FFFFFF5,
        "SHT_GNU_HASH": 0x6FFFFFF6,
        "SHT_GNU_LIBLIST": 0x6FFFFFF7,
        "SHT_GNU_verdef": 0x6FFFFFFD,
        "SHT_GNU_verneed": 0x6FFFFFFE,
        "SHT_GNU_versym": 0x6FFFFFFF,
    }
    return names.get(t, t) if isinstance(t, str) else t


def assert_pyelftools_agrees(data: bytes, elf: ElfFile) -> None:
    ours, theirs = model_view(elf), pyelftools_view(data)
    assert ours["sections"] == theirs["sections"]
    assert ours["symbols"] == theirs["symbols"]
    assert ours["relocations"] == theirs["relocations"]


def readelf_warnings(path) -> list[str]:
    """readelf -a -W diagnostics (it prints them on stderr and as 'readelf: Warning' lines)."""
    proc = subprocess.run(["readelf", "-a", "-W", str(path)], capture_output=True, text=True)
    lines = proc.stderr.splitlines()
    lines += [ln for ln in proc.stdout.splitlines() if re.search(r"readelf: (Warning|Error)", ln)]
    return lines


def elflint_messages(path) -> list[str]:
    proc = subprocess.run(["eu-elflint", "--gnu-ld", str(path)], capture_output=True, text=True)
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]

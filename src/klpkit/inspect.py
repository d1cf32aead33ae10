"""A livepatch-aware view of one ELF object: what ``klpkit inspect`` reports.

Builds plain data (dicts and lists) from the model, so the same view feeds the
table renderer and ``--json``.
"""

from __future__ import annotations

from klpkit.elf import ElfFile, Section
from klpkit.elf import constants as C
from klpkit.elf.reloc_types import MACHINE_NAMES, reloc_type_name
from klpkit.kernel.livepatch import (
    is_klp_rela,
    is_klp_symbol,
    meant_as_klp_rela,
    parse_klp_rela_object,
    parse_klp_symbol_name,
)
from klpkit.kernel.signature import ModuleSignature


def _where(shndx) -> str:
    if isinstance(shndx, Section):
        return shndx.name
    if shndx in C.SPECIAL_SHNDX_NAMES:
        return C.SPECIAL_SHNDX_NAMES[shndx]
    return f"{shndx:#x}"


def _section_row(i: int, sec: Section, index: dict[int, int]) -> dict:
    link = index[id(sec.link)] if isinstance(sec.link, Section) else sec.link
    info = index[id(sec.info)] if isinstance(sec.info, Section) else sec.info
    return {
        "index": i,
        "name": sec.name,
        "type": C.SECTION_TYPE_NAMES.get(sec.type, f"{sec.type:#x}"),
        "flags": C.section_flags_text(sec.flags),
        "flags_value": sec.flags,
        "size": sec.size,
        "link": link,
        "info": info,
        "align": sec.addralign,
        "entsize": sec.entsize,
    }


def _symbol_row(i: int, sym) -> dict:
    return {
        "index": i,
        "name": sym.name,
        "value": sym.value,
        "size": sym.size,
        "bind": C.BIND_NAMES.get(sym.bind, str(sym.bind)),
        "type": C.TYPE_NAMES.get(sym.type, str(sym.type)),
        "visibility": C.VIS_NAMES.get(sym.visibility, str(sym.visibility)),
        "section": _where(sym.shndx),
    }


def _relocations(elf: ElfFile) -> dict[str, list[dict]]:
    """Relocations grouped by the section they patch (several rel sections may share one)."""
    grouped: dict[str, list[dict]] = {}
    for rs in elf.relocation_sections():
        target = rs.target.name if rs.target is not None else f"<info {rs.info}>"
        for r in rs.relocations:
            grouped.setdefault(target, []).append(
                {
                    "section": rs.name,
                    "offset": r.offset,
                    "type": reloc_type_name(elf.machine, r.type),
                    "symbol": r.symbol.name if r.symbol else "",
                    "addend": r.addend,
                }
            )
    return grouped


def _livepatch(elf: ElfFile) -> dict:
    symbols = []
    for sym in elf.symtab.symbols if elf.symtab else []:
        if sym.name.startswith(".klp.sym."):
            parsed = parse_klp_symbol_name(sym.name)
            symbols.append(
                {
                    "name": sym.name,
                    "object": parsed.object if parsed else None,
                    "symbol": parsed.name if parsed else None,
                    "sympos": parsed.sympos if parsed else None,
                    "well_formed": parsed is not None,
                    "shn_livepatch": is_klp_symbol(sym),
                }
            )
    sections = []
    for rs in elf.relocation_sections():
        if meant_as_klp_rela(rs):
            sections.append(
                {
                    "name": rs.name,
                    "object": parse_klp_rela_object(rs.name),
                    "target": rs.target.name if rs.target else None,
                    "flags": C.section_flags_text(rs.flags),
                    "shf_rela_livepatch": is_klp_rela(rs),
                    "relocations": len(rs.relocations),
                }
            )
    return {"symbols": symbols, "sections": sections}


def _modinfo(elf: ElfFile) -> list[dict]:
    sec = elf.section(".modinfo")
    if sec is None:
        return []
    fields = []
    for raw in sec.data.split(b"\0"):
        if raw:
            key, _, value = raw.decode("utf-8", "replace").partition("=")
            fields.append({"key": key, "value": value})
    return fields


def inspect(elf: ElfFile) -> dict:
    sig = ModuleSignature.from_trailer(elf.trailer)
    index = {id(s): i for i, s in enumerate(elf.sections)}  # section -> its index
    return {
        "file": elf.path,
        "class": f"ELF{elf.elfclass}",
        "endian": "little" if elf.little_endian else "big",
        "machine": MACHINE_NAMES.get(elf.machine, str(elf.machine)),
        "type": {C.ET_REL: "REL", C.ET_EXEC: "EXEC", C.ET_DYN: "DYN"}.get(elf.type, str(elf.type)),
        "signature": None if sig is None else {"id_type": sig.id_type, "length": sig.total_length},
        "modinfo": _modinfo(elf),
        "livepatch": _livepatch(elf),
        "sections": [_section_row(i, s, index) for i, s in enumerate(elf.sections)],
        "symbols": [
            _symbol_row(i, s) for i, s in enumerate(elf.symtab.symbols if elf.symtab else [])
        ],
        "relocations": _relocations(elf),
    }

"""Carry out a :class:`~klpkit.convert.plan.Plan` on the ELF model (in memory).

* every converted symbol is renamed once to ``.klp.sym.<obj>.<sym>,<pos>``, given
  ``st_shndx = SHN_LIVEPATCH`` and the kernel symbol's type, and *all* its relocations
  move to ``.klp.rela.<gate>.<section>`` (SHT_RELA, SHF_ALLOC | SHF_INFO_LINK |
  SHF_RELA_LIVEPATCH, sh_link = .symtab, sh_info = the patched section), one section per
  (gate, section) pair, created in the order of first use; a normal relocation section
  left empty is removed (two RELA sections for one target confuse BFD tools);
* two intermediate symbols that name the same kernel symbol become one symbol;
* annotation sections, their relocations and symbols are removed;
* ``__versions`` loses the entries of converted symbols; ``.modinfo`` ``depends=`` loses
  the patched modules no normal reference needs any more (edited in place, padded with
  NULs, so no other offset into ``.modinfo`` moves).

Nothing here decides: a plan with errors is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from klpkit.convert.plan import Action, Plan
from klpkit.elf import ElfFile, RelocationSection, Symbol, SymbolTable
from klpkit.elf import constants as C
from klpkit.errors import KlpkitError
from klpkit.kernel.livepatch import is_klp_symbol
from klpkit.kernel.versions import remove_versions

KLP_RELA_FLAGS = C.SHF_ALLOC | C.SHF_INFO_LINK | C.SHF_RELA_LIVEPATCH
_STT = {"func": C.STT_FUNC, "object": C.STT_OBJECT, "tls": C.STT_TLS, "notype": C.STT_NOTYPE}


class ConvertError(KlpkitError):
    """A conversion that cannot be carried out (the plan has errors)."""

    exit_code = 1


@dataclass
class ApplyResult:
    klp_sections: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # old name -> klp name
    removed_sections: list[str] = field(default_factory=list)
    dropped_versions: list[str] = field(default_factory=list)
    dropped_depends: list[str] = field(default_factory=list)
    moved: int = 0


def _edit_depends(data: bytes, drop: set[str]) -> bytes:
    """Rewrite each ``depends=`` string without ``drop``, in place (NUL padded)."""
    out = bytearray(data)
    pos = 0
    while True:
        i = data.find(b"depends=", pos)
        if i < 0:
            break
        if i and data[i - 1] != 0:
            pos = i + 1
            continue
        end = data.find(b"\0", i)
        end = len(data) if end < 0 else end
        mods = [m for m in data[i + 8 : end].decode("utf-8", "surrogateescape").split(",") if m]
        kept = ",".join(m for m in mods if m not in drop).encode("utf-8", "surrogateescape")
        new = b"depends=" + kept
        out[i:end] = new + b"\0" * (end - i - len(new))
        pos = end
    return bytes(out)


def apply_plan(elf: ElfFile, plan: Plan) -> ApplyResult:
    if not plan.ok:
        raise ConvertError(f"the plan has {len(plan.errors)} error(s); nothing converted")
    res = ApplyResult()
    symtab = elf.symtab
    if symtab is None:
        raise ConvertError("the module has no symbol table; nothing converted")
    replace = _rename_symbols(symtab, plan, res)
    _move_relocations(elf, plan, replace, res)
    if replace:
        symtab.symbols = [s for s in symtab.symbols if id(s) not in replace]
    if plan.annotation_sections:
        _remove_annotations(elf, symtab, set(plan.annotation_sections), res)
    _edit_versions_and_modinfo(elf, symtab, plan, res)
    return res


def _rename_symbols(symtab: SymbolTable, plan: Plan, res: ApplyResult) -> dict[int, Symbol]:
    """Rename every converted symbol once; a symbol whose klp name another symbol
    already has is to be replaced by that one (returned: id(symbol) -> its keeper)."""
    by_klp: dict[str, Symbol] = {}
    for sym in symtab.symbols[1:]:
        if is_klp_symbol(sym):
            by_klp.setdefault(sym.name, sym)
    replace: dict[int, Symbol] = {}
    for sym in symtab.symbols[1:]:
        if not sym.is_undefined:
            continue
        d = plan.symbols.get(sym.name)
        if d is None or d.action is not Action.CONVERT:
            continue
        klp = d.klp_symbol
        if klp is None:
            raise ConvertError(f"{sym.name}: converted without a livepatch symbol name")
        res.renamed[sym.name] = klp
        existing = by_klp.get(klp)
        if existing is not None and existing is not sym:
            replace[id(sym)] = existing
            continue
        sym.name = klp
        sym.shndx = C.SHN_LIVEPATCH
        if d.type in _STT:
            sym.type = _STT[d.type]
        if sym.is_local:
            sym.bind = C.STB_GLOBAL
        by_klp[klp] = sym
    return replace


def _move_relocations(
    elf: ElfFile, plan: Plan, replace: dict[int, Symbol], res: ApplyResult
) -> None:
    """Move every converted relocation to its .klp.rela section; drop annotation
    records; remove a normal relocation section left empty."""
    moves: dict[int, list] = {}
    for pr in plan.relocations:
        if pr.action is Action.CONVERT or pr.action is Action.REMOVE:
            moves.setdefault(id(pr.relsec), []).append(pr)
    klp_secs: dict[str, RelocationSection] = {}
    for rs in list(elf.relocation_sections()):
        prs = moves.get(id(rs))
        if not prs:
            continue
        gone = set()
        for pr in prs:
            r = pr.reloc
            gone.add(id(r))
            if pr.action is Action.REMOVE:
                continue
            if id(r.symbol) in replace:
                r.symbol = replace[id(r.symbol)]
            ks = klp_secs.get(pr.new_section)
            if ks is None:
                if rs.target is None:  # (the reader refuses this in a relocatable file)
                    raise ConvertError(f"{rs.name}: sh_info {rs.info} is not a section")
                ks = elf.new_relocation_section(
                    pr.new_section, rs.target, rela=True, flags=KLP_RELA_FLAGS
                )
                klp_secs[pr.new_section] = ks
                res.klp_sections.append(pr.new_section)
            ks.relocations.append(r)
            res.moved += 1
        rs.relocations = [r for r in rs.relocations if id(r) not in gone]
        if not rs.relocations and rs.name not in plan.annotation_sections:
            elf.remove_section(rs)
            res.removed_sections.append(rs.name)


def _remove_annotations(
    elf: ElfFile, symtab: SymbolTable, names: set[str], res: ApplyResult
) -> None:
    """Annotation sections go, with their relocations and the symbols defined in them."""
    symtab.symbols = [
        s
        for s in symtab.symbols
        if not (s.section is not None and s.section.name in names and not s.is_section_symbol)
    ]
    for sec in [s for s in elf.sections if s.name in names]:
        for rel in elf.relocations_for(sec):
            res.removed_sections.append(rel.name)
        elf.remove_section(sec)
        res.removed_sections.append(sec.name)


def _edit_versions_and_modinfo(
    elf: ElfFile, symtab: SymbolTable, plan: Plan, res: ApplyResult
) -> None:
    if plan.drop_versions:
        vsec = elf.section("__versions")
        if vsec is None:
            raise ConvertError("the plan drops __versions entries but there is no __versions")
        vsec.data = remove_versions(vsec.data, plan.drop_versions, elf.elfclass, elf.little_endian)
        for sym in symtab.symbols:
            if sym.section is vsec and not sym.is_section_symbol:
                sym.size = max(0, min(sym.size, len(vsec.data) - sym.value))
        res.dropped_versions = list(plan.drop_versions)
    if plan.drop_depends:
        msec = elf.section(".modinfo")
        if msec is None:
            raise ConvertError("the plan edits depends= but there is no .modinfo")
        msec.data = _edit_depends(msec.data, set(plan.drop_depends))
        res.dropped_depends = list(plan.drop_depends)

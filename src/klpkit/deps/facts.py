"""What ``klpkit deps`` reads: each module's facts from its ELF file (name, modinfo,
exports, relocation sites) and the patched objects' own dependencies from the symbol
database.  Reading only: no verdicts."""

from __future__ import annotations

import os
from dataclasses import dataclass

from klpkit.elf import ElfFile
from klpkit.kernel.exports import exported_names
from klpkit.kernel.kver import kernel_version
from klpkit.kernel.livepatch import meant_as_klp_rela, parse_klp_rela_object
from klpkit.kernel.modinfo import Modinfo, module_name
from klpkit.symbols.protocol import known_depends

#: one livepatch relocation: (its .klp.rela section, the gate, the site, the symbol name)
KlpReloc = tuple[str, str, str, str]


@dataclass
class ModuleFile:
    """One module as its file says: read once, before any verdict."""

    path: str
    name: str  # the in-kernel name (modinfo name=, else the file name)
    elf: ElfFile
    modinfo: Modinfo | None  # None: no .modinfo section

    @property
    def depends(self) -> list[str]:
        return self.modinfo.depends if self.modinfo is not None else []

    @property
    def declares_livepatch(self) -> bool:
        """``livepatch=Y``: what the module loader (check_modinfo_livepatch()) reads."""
        return bool(self.modinfo is not None and self.modinfo.is_livepatch)

    def exports(self) -> list[str]:
        """Names the module exports (klpkit.kernel.exports: ``__ksymtab_<name>``)."""
        return exported_names(self.elf)


def read_module(path: str | os.PathLike) -> ModuleFile:
    elf = ElfFile.read(path)
    sec = elf.section(".modinfo")
    modinfo = Modinfo.parse(sec.data) if sec is not None else None
    return ModuleFile(str(path), module_name(path, modinfo), elf, modinfo)


def relocation_sites(elf: ElfFile) -> tuple[dict[str, list[str]], list[KlpReloc]]:
    """(normal relocation sites per undefined symbol name, the livepatch relocations)."""
    undef: dict[str, list[str]] = {}
    klp: list[KlpReloc] = []
    for rs in elf.relocation_sections():
        target = rs.target.name if rs.target is not None else f"#{rs.info}"
        is_klp = meant_as_klp_rela(rs)
        gate = parse_klp_rela_object(rs.name) if is_klp else None
        for r in rs.relocations:
            sym = r.symbol
            if sym is None:
                continue
            site = f"{target}+{r.offset:#x}"
            if is_klp:
                klp.append((rs.name, gate or "", site, sym.name))
            elif sym.is_undefined and sym.name:
                undef.setdefault(sym.name, []).append(site)
    return undef, klp


# ------------------------------------------------------------------- symbol database
def closure(db, obj: str, cache: dict[str, set[str]]) -> set[str]:
    """Every module ``obj`` needs, transitively (depmod's modules.dep), from the DB."""
    if obj in cache:
        return cache[obj]
    cache[obj] = set()
    seen: set[str] = set()
    todo = [obj]
    while todo:
        for d in known_depends(db, todo.pop()):
            if d not in seen:
                seen.add(d)
                todo.append(d)
    cache[obj] = seen
    return seen


def judging_kernel(db) -> tuple[int, int]:
    """The kernel whose rules judge the livepatch relocations: check's (the
    database's release; the default kernel without a database)."""
    return kernel_version(None, db.release if db is not None else None)


def database_release(db) -> str | None:
    """The release the report names: the database's own record of it."""
    return db.meta.get("release") if db is not None else None

"""Normal undefined symbols, as simplify_symbols()/resolve_symbol() resolve them:
exported by vmlinux or a module, GPL-only exports vs the licence, namespaces,
and the CRC check of CONFIG_MODVERSIONS."""

from __future__ import annotations

from klpkit.check.context import Context
from klpkit.check.findings import Place
from klpkit.elf import constants as C
from klpkit.kernel.livepatch import KLP_SYM_PREFIX

#: include/linux/license.h license_is_gpl_compatible()
GPL_COMPATIBLE = frozenset(
    {"GPL", "GPL v2", "GPL and additional rights", "Dual BSD/GPL", "Dual MIT/GPL", "Dual MPL/GPL"}
)


def run(ctx: Context):
    licence = ctx.modinfo.get("license") or "unspecified"
    gplok = licence in GPL_COMPATIBLE
    imports = set(ctx.modinfo.get_all("import_ns"))
    warned_no_version = False
    seen: set[str] = set()
    for sym in ctx.elf.symtab.symbols[1:]:
        if not sym.is_undefined or not sym.name or sym.name in seen:
            continue
        name = sym.name
        seen.add(name)
        place = Place(symbol=name)
        unknown2 = f"{ctx.name}: Unknown symbol {name} (err -2)"
        unknown22 = f"{ctx.name}: Unknown symbol {name} (err -22)"
        if name.startswith(KLP_SYM_PREFIX):
            ctx.add(
                "klp.sym.shndx",
                place,
                "livepatch symbol without SHN_LIVEPATCH: the loader looks it up as a normal export",
                unknown2,
            )
            continue
        if name == "_GLOBAL_OFFSET_TABLE_" and ctx.elf.machine == C.EM_X86_64:
            continue  # ignore_undef_symbol()
        exp = ctx.db.export(name)
        if exp is None:
            _not_exported(ctx, sym, place, unknown2)
            continue
        obj, etype, ns, crc = exp
        if "GPL" in (etype or "") and not gplok:
            ctx.add(
                "undef.gpl",
                place,
                f"{etype} in {obj}, but the module's licence is "
                f"'{licence}': the kernel hides GPL-only exports from it",
                unknown2,
            )
            continue
        if crc is not None:
            refused, warned = _crc(ctx, name, obj, crc, place, warned_no_version)
            warned_no_version = warned_no_version or warned
            if refused:
                continue
        if ns and ns not in imports:
            ctx.add(
                "undef.namespace",
                place,
                f"exported in namespace {ns}, the module does "
                f"not import it (MODULE_IMPORT_NS({ns}))",
                f"{ctx.name}: module uses symbol ({name}) from namespace {ns}, but does "
                f"not import it.\n{unknown22}",
            )
            continue
        if obj != "vmlinux":
            ctx.add(
                "undef.dependency",
                place,
                f"exported by {obj}: a normal reference, the "
                f"livepatch depends on {obj} (loads only after it, pins it)",
                exporter=obj,
            )


def _not_exported(ctx: Context, sym, place: Place, unknown2: str) -> None:
    """No object exports it: a weak reference resolves to 0, otherwise resolve_symbol()
    fails (and convert would have turned a defined one into a livepatch relocation)."""
    name = sym.name
    if sym.bind == C.STB_WEAK:
        ctx.add("undef.weak", place, "weak reference to a symbol no object exports: resolves to 0")
        return
    occ = ctx.db.lookup(name)
    if occ:
        where = ", ".join(f"{e.object} ({e.bind}, sympos {e.sympos})" for e in occ[:4])
        ctx.add(
            "undef.unexported",
            place,
            f"not exported by any object of "
            f"{ctx.db.release}, but defined in {where}: convert it to a livepatch "
            f"relocation (klpkit convert)",
            unknown2,
            candidates=[e.object for e in occ],
        )
    else:
        ctx.add(
            "undef.missing",
            place,
            f"no object of {ctx.db.release} defines or exports it",
            unknown2,
        )


def _crc(
    ctx: Context, name: str, obj: str, crc: int, place: Place, warned: bool
) -> tuple[bool, bool]:
    """check_version() for an export that carries a CRC: (refused, warned about a missing
    version now).  The kernel warns once per module for a missing entry."""
    unknown22 = f"{ctx.name}: Unknown symbol {name} (err -22)"
    if ctx.versions is None:
        ctx.add(
            "undef.crc",
            place,
            f"{obj} exports it with a CRC but the module has no "
            "__versions: refused unless forced (CONFIG_MODULE_FORCE_LOAD)",
            unknown22,
        )
        return True, False
    mine = ctx.versions.get(name)
    if mine is None:
        if warned:
            return False, False
        ctx.add(
            "undef.no-version",
            place,
            "no __versions entry: the kernel warns once and loads",
            f"{ctx.name}: no symbol version for {name}",
        )
        return False, True
    if mine != crc:
        ctx.add(
            "undef.crc",
            Place("__versions", symbol=name),
            f"CRC {mine:#010x} in __versions, {obj} exports it with "
            f"{crc:#010x} (Module.symvers): built against other headers",
            f"{ctx.name}: disagrees about version of symbol {name}\n{unknown22}",
        )
        return True, False
    return False, False

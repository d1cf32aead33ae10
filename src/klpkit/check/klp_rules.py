"""Livepatch relocation sections (``.klp.rela.<obj>.<sec>``) and livepatch symbols
(``.klp.sym.<obj>.<name>,<pos>``), as the livepatch core applies and resolves them.

Where the kernel applies a section decides when its failure shows: since 5.8 the
module loader applies ``.klp.rela.vmlinux.*`` while the livepatch loads
(Stage.RELOCATIONS); module-gated sections (and, before 5.8, all of them) are
applied by klp_enable_patch() or when the patched module loads (Stage.OBJECT).
"""

from __future__ import annotations

from klpkit.check.context import Context
from klpkit.check.findings import Place, Severity, Stage
from klpkit.check.rules import CLEAR_RELOCATE_ADD
from klpkit.elf import constants as C
from klpkit.kernel.livepatch import (
    KLP_RELA_PREFIX,
    KLP_SYM_PREFIX,
    MODULE_NAME_MAX,
    ksym_name_max,
    parse_klp_symbol_name,
)


def rela_object(name: str) -> str | None:
    """``sscanf(name, ".klp.rela.%55[^.]")``: the gating object, or None (cnt != 1)."""
    if not name.startswith(KLP_RELA_PREFIX):
        return None
    rest = name[len(KLP_RELA_PREFIX):]
    obj = rest.split(".", 1)[0][:MODULE_NAME_MAX]
    return obj or None


def _stage(ctx: Context, gate: str | None) -> Stage:
    return Stage.RELOCATIONS if gate == "vmlinux" and ctx.kver >= (5, 8) else Stage.OBJECT


def resolve(ctx: Context, obj: str, name: str, pos: int, place: Place, stage: Stage,
            severity: Severity | None = None) -> None:
    """klp_find_object_symbol(): the kernel's verdict on (obj, name, pos), with its message."""
    if not ctx.object_exists(obj):
        ctx.add("klp.sym.object", place, f"object '{obj}' is not vmlinux nor a module of "
                f"{ctx.db.release}: the relocation is never applied")
        return
    entries = ctx.db.lookup(name, object=obj)
    vm = obj == "vmlinux"
    shown = "(null)" if vm else obj   # the kernel passes objname NULL for vmlinux
    f = None
    if not entries:
        f = ctx.add("klp.sym.not-found", place, f"'{name}' is not in {obj}'s kallsyms on "
                    f"{ctx.db.release}", f"livepatch: symbol '{name}' not found in symbol table",
                    severity=severity)
    else:
        count = len(entries)
        if pos == 0 and count > 1:
            f = ctx.add("klp.sym.ambiguous", place, f"sympos 0 but {obj} has {count} symbols "
                        f"named '{name}': " + ", ".join(
                            f"{e.bind} {e.type} (sympos {e.sympos})" for e in entries),
                        f"livepatch: unresolvable ambiguity for symbol '{name}' in object "
                        f"'{shown}'", severity=severity, count=count)
        elif pos > count:
            f = ctx.add("klp.sym.position", place, f"sympos {pos} but {obj} has only {count} "
                        f"symbol(s) named '{name}'",
                        f"livepatch: symbol position {pos} for symbol '{name}' in object "
                        f"'{obj}' not found", severity=severity, count=count)
        else:
            e = entries[max(pos, 1) - 1]
            f = ctx.add("klp.sym.resolved", place, f"resolves to {e.object} {e.bind} {e.type} "
                        f"{e.name}, position {e.sympos} of {e.count}"
                        + (" (exported)" if e.exported else ""),
                        object=e.object, name=e.name, sympos=e.sympos, count=e.count,
                        bind=e.bind, type=e.type, exported=e.exported)
            if not vm:
                _late_load(ctx, obj, name, pos, e, place)
    if f is not None:
        f.stage = stage


def _late_load(ctx: Context, obj, name, pos, core_entry, place,
               rule: str = "klp.sym.late-load") -> None:
    """A target module loaded after the livepatch is resolved against its init-time
    symbol table (init sections included): the answer may differ."""
    full = ctx.db.lookup(name, object=obj, include_init=True)
    if len(full) == core_entry.count:
        return
    load_count = full[0].load_count if full else 0
    if pos == 0:
        problem = f"sympos 0 is ambiguous then ({load_count} matches)" if load_count > 1 else ""
    else:
        hit = full[pos - 1] if pos <= len(full) else None
        problem = ("" if hit is not None and hit.core and hit.sympos == core_entry.sympos
                   else f"position {pos} is another symbol then")
    if problem:
        ctx.add(rule, place, f"if {obj} loads after the livepatch, "
                f"klp_module_coming() counts init-section symbols too: {problem}")


def run(ctx: Context):
    elf = ctx.elf
    symtab = elf.symtab
    kmax = ksym_name_max(ctx.kver)
    checked: dict[int, tuple] = {}   # id(symbol) -> parsed name or None
    used: set[int] = set()
    warned_reload: set[str] = set()
    from klpkit.convert.plan import SPECIAL_SECTIONS, VMLINUX_GATED_ALLOWED

    for sec in elf.sections[1:]:
        flagged = bool(sec.flags & C.SHF_RELA_LIVEPATCH)
        if not flagged and not sec.name.startswith(KLP_RELA_PREFIX):
            continue
        sname = sec.name
        place = Place(sname)
        gate = rela_object(sname)
        if sec.type != C.SHT_RELA:
            ctx.add("klp.rela.flags", place, f"type {C.SECTION_TYPE_NAMES.get(sec.type, sec.type)}"
                    ": the livepatch core reads every klp section as Elf_Rela")
            continue
        if not flagged:
            ctx.add("klp.rela.flags", place, "no SHF_RELA_LIVEPATCH: the loader applies it as "
                    "a normal section with its livepatch symbols' value 0")
            continue
        if gate is None:
            ctx.add("klp.rela.name", place, "the name does not parse as .klp.rela.<obj>.<sec>",
                    f"livepatch: section {sname} has an incorrectly formatted name")
            continue
        stage = _stage(ctx, gate)
        if not sec.flags & C.SHF_ALLOC:
            f = ctx.add("klp.rela.flags", place, "no SHF_ALLOC: the section is dropped with the "
                        "load-time copy of the module; relocations applied later "
                        + ("(this one is module-gated) " if gate != "vmlinux" else "")
                        + "read freed memory")
            if f is not None:
                f.stage = stage
        target = sec.info if not isinstance(sec.info, int) else None
        if target is None:
            ctx.add("klp.rela.target", place, f"sh_info {sec.info} is not a section")
        elif not target.is_alloc:
            ctx.add("klp.rela.target", place, f"target {target.name} is not SHF_ALLOC: the "
                    "relocations are never applied")
        if sec.link is not symtab:
            ctx.add("klp.rela.link", place, "sh_link does not name .symtab")
        if sec.entsize != 24 or sec.size % 24:
            ctx.add("klp.rela.link", place, f"sh_entsize {sec.entsize}, size {sec.size}: not "
                    "whole Elf64_Rela entries")
        if len(sname[len(KLP_RELA_PREFIX):].split(".", 1)[0]) > MODULE_NAME_MAX:
            ctx.add("klp.rela.object", place, f"object name longer than {MODULE_NAME_MAX} "
                    "characters: the kernel compares the first 55 only, it never matches")
        elif not ctx.object_exists(gate):
            ctx.add("klp.rela.object", place, f"gated on '{gate}', which is not vmlinux nor a "
                    f"module of {ctx.db.release}: never applied")
        tname = target.name if target is not None else None
        if gate != "vmlinux" and tname in SPECIAL_SECTIONS and tname not in VMLINUX_GATED_ALLOWED:
            ctx.add("klp.rela.special", place, f"module-gated relocations in {tname}: "
                    f"{SPECIAL_SECTIONS[tname]}")
        if gate != "vmlinux" and ctx.kver < CLEAR_RELOCATE_ADD and gate not in warned_reload:
            warned_reload.add(gate)
            ctx.add("klp.rela.reload", place, f"module-gated: the kernel writes these "
                    f"relocations when {gate} loads and, without clear_relocate_add (< 6.3, "
                    f"e.g. Debian 6.1.170), does not clear them when {gate} unloads; loading "
                    f"{gate} again fails and {gate} refuses to load",
                    "module: x86/modules: Skipping invalid relocation target, existing value "
                    "is nonzero for type %d, loc %p, val %Lx\n"
                    f"livepatch: failed to initialize patch '{ctx.name}' for module '{gate}' "
                    "(-8)\n"
                    f"livepatch: patch '{ctx.name}' failed for module '{gate}', refusing to "
                    f"load module '{gate}'")
        bad_syms: set[int] = set()
        for r in sec.relocations:
            sym = r.symbol
            rplace = Place(tname or sname, r.offset, sym.name if sym is not None else "")
            if sym is None or sym.shndx != C.SHN_LIVEPATCH:
                key = id(sym)
                if key not in bad_syms:
                    bad_syms.add(key)
                    f = ctx.add("klp.rela.symbol", rplace, "the relocation's symbol is not "
                                "SHN_LIVEPATCH", "livepatch: symbol "
                                f"{sym.name if sym is not None else ''} is not marked as a "
                                "livepatch symbol")
                    if f is not None:
                        f.stage = stage
                continue
            used.add(id(sym))
            parsed = checked.get(id(sym), False)
            if parsed is False:
                parsed = checked[id(sym)] = parse_klp_symbol_name(sym.name, ctx.kver)
                if parsed is None:
                    f = ctx.add("klp.sym.format", Place(symbol=sym.name),
                                f"not .klp.sym.<obj>.<name>,<pos> with obj <= {MODULE_NAME_MAX} "
                                f"characters without '.', name <= {kmax} without ','",
                                f"livepatch: symbol {sym.name} has an incorrectly formatted name")
                    if f is not None:
                        f.stage = stage
                else:
                    resolve(ctx, parsed.object, parsed.name, parsed.sympos,
                            Place(symbol=sym.name), stage)
            if parsed is None:
                continue
            if gate == "vmlinux" and parsed.object != "vmlinux" and ctx.kver >= (5, 8):
                key = ("mod", id(sym))
                if key not in bad_syms:
                    bad_syms.add(key)
                    ctx.add("klp.rela.module-in-vmlinux", rplace,
                            f"vmlinux-gated section references {parsed.object} symbol "
                            f"'{parsed.name}': applied when the livepatch loads, so "
                            f"{parsed.object} must already be loaded (gate it on the module)",
                            f"livepatch: symbol '{parsed.name}' not found in symbol table")
            if gate != "vmlinux" and parsed.object == "vmlinux":
                key = ("vm", id(sym))
                if key not in bad_syms:
                    bad_syms.add(key)
                    f = ctx.add("klp.rela.vmlinux-in-module", rplace,
                                f"module-gated section ({gate}) references vmlinux symbol "
                                f"'{parsed.name}': gate it on vmlinux (.klp.rela.vmlinux.*)",
                                f"livepatch: invalid access to vmlinux symbol '{parsed.name}' "
                                "from module-specific livepatch relocation section")
                    if f is not None:
                        f.stage = Stage.OBJECT
    # livepatch symbols no klp relocation uses: never resolved by the kernel
    for sym in symtab.symbols[1:]:
        if sym.shndx != C.SHN_LIVEPATCH or id(sym) in used:
            continue
        parsed = parse_klp_symbol_name(sym.name, ctx.kver) if sym.name.startswith(
            KLP_SYM_PREFIX) else None
        if parsed is None:
            ctx.add("klp.sym.format", Place(symbol=sym.name), "SHN_LIVEPATCH symbol with a "
                    "name the kernel cannot parse (no livepatch relocation uses it)",
                    severity=Severity.WARNING)
        else:
            resolve(ctx, parsed.object, parsed.name, parsed.sympos, Place(symbol=sym.name),
                    Stage.OBJECT, severity=Severity.WARNING)
    # normal relocations on livepatch symbols: written with value 0
    for rs in elf.relocation_sections():
        if rs.flags & C.SHF_RELA_LIVEPATCH or rs.name.startswith(KLP_RELA_PREFIX):
            continue
        target = rs.target
        if target is None or not target.is_alloc:
            continue
        for r in rs.relocations:
            if r.symbol is not None and r.symbol.shndx == C.SHN_LIVEPATCH:
                ctx.add("rela.livepatch-symbol", Place(target.name, r.offset, r.symbol.name),
                        f"normal relocation in {rs.name} on a livepatch symbol: the loader "
                        "writes address 0 + addend")

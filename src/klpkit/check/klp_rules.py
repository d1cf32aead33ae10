"""Livepatch relocation sections (``.klp.rela.<obj>.<sec>``) and livepatch symbols
(``.klp.sym.<obj>.<name>,<pos>``), as the module loader and the livepatch core apply
and resolve them.

The kernel's rules are :mod:`klpkit.kernel.klp`'s (when a section is applied, which
symbols a gate may reach, klp_find_object_symbol()'s count); this family turns them into
findings.  Where the kernel applies a section decides when its failure shows: since 5.8
the module loader applies ``.klp.rela.vmlinux.*`` while the module loads
(Stage.RELOCATIONS); module-gated sections (and, before 5.8, all of them) are applied by
klp_enable_patch() or when the patched module loads (Stage.OBJECT).

``klpkit deps`` takes its verdict on each livepatch relocation from here
(:func:`reference_findings`): the findings of the sections and the symbol a
(gate, symbol) reference goes through, so the two commands cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from klpkit.check.context import Context
from klpkit.check.findings import Finding, Place, Severity, Stage
from klpkit.elf import constants as C
from klpkit.kernel import klp
from klpkit.kernel.livepatch import (
    KLP_RELA_PREFIX,
    KLP_SYM_PREFIX,
    MODULE_NAME_MAX,
    KlpSymbolName,
    is_klp_rela,
    is_klp_symbol,
    ksym_name_max,
    meant_as_klp_rela,
    parse_klp_rela_object,
    parse_klp_symbol_name,
)
from klpkit.symbols.protocol import known_depends

#: ``sscanf(name, ".klp.rela.%55[^.]")``: the gating object, or None (cnt != 1).
rela_object = parse_klp_rela_object


def _stage(ctx: Context, gate: str | None) -> Stage:
    """Stage.RELOCATIONS when the module loader applies the section (vmlinux-gated,
    since 5.8), else Stage.OBJECT (klp_init_object_loaded())."""
    app = klp.when_applied(gate or "", ctx.objects, ctx.kver, ctx.registers)
    return Stage.RELOCATIONS if app.when is klp.When.LOAD else Stage.OBJECT


def _staged(f: Finding | None, stage: Stage) -> Finding | None:
    if f is not None:
        f.stage = stage
    return f


def resolve(
    ctx: Context,
    obj: str,
    name: str,
    pos: int,
    place: Place,
    stage: Stage,
    severity: Severity | None = None,
) -> None:
    """klp_find_object_symbol(): the kernel's verdict on (obj, name, pos), with its message."""
    if not ctx.object_exists(obj):
        ctx.add(
            "klp.sym.object",
            place,
            f"object '{obj}' is not vmlinux nor a module of "
            f"{ctx.db.release}: the relocation is never applied",
        )
        return
    entries = ctx.db.lookup(name, object=obj)
    res = klp.find_object_symbol(entries, pos)
    kernel = klp.resolution_message(res, obj, name, pos)
    if res.found is klp.Found.NOT_FOUND:
        f = ctx.add(
            "klp.sym.not-found",
            place,
            f"'{name}' is not in {obj}'s kallsyms on {ctx.db.release}",
            kernel,
            severity=severity,
        )
    elif res.found is klp.Found.AMBIGUOUS:
        f = ctx.add(
            "klp.sym.ambiguous",
            place,
            f"sympos 0 but {obj} has {res.count} symbols "
            f"named '{name}': "
            + ", ".join(f"{e.bind} {e.type} (sympos {e.sympos})" for e in entries),
            kernel,
            severity=severity,
            count=res.count,
        )
    elif res.found is klp.Found.POSITION:
        f = ctx.add(
            "klp.sym.position",
            place,
            f"sympos {pos} but {obj} has only {res.count} symbol(s) named '{name}'",
            kernel,
            severity=severity,
            count=res.count,
        )
    else:
        e = res.entry
        assert e is not None  # Found.RESOLVED carries the entry
        f = ctx.add(
            "klp.sym.resolved",
            place,
            f"resolves to {e.object} {e.bind} {e.type} "
            f"{e.name}, position {e.sympos} of {e.count}" + (" (exported)" if e.exported else ""),
            object=e.object,
            name=e.name,
            sympos=e.sympos,
            count=e.count,
            bind=e.bind,
            type=e.type,
            exported=e.exported,
        )
        if obj != klp.VMLINUX:
            _late_load(ctx, obj, name, pos, e, place)
    _staged(f, stage)


def _late_load(
    ctx: Context, obj, name, pos, core_entry, place, rule: str = "klp.sym.late-load"
) -> None:
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
        problem = (
            ""
            if hit is not None and hit.core and hit.sympos == core_entry.sympos
            else f"position {pos} is another symbol then"
        )
    if problem:
        ctx.add(
            rule,
            place,
            f"if {obj} loads after the livepatch, "
            f"klp_module_coming() counts init-section symbols too: {problem}",
        )


# ---------------------------------------------------------------------- the references
@dataclass
class _Run:
    """One pass over the livepatch relocation sections: the findings each (gate,
    symbol) reference goes through, for ``klpkit deps``."""

    ctx: Context
    references: dict[tuple[str, str], list[Finding]] = field(default_factory=dict)
    parsed: dict[int, KlpSymbolName | None] = field(default_factory=dict)  # by id(symbol)
    of_symbol: dict[int, list[Finding]] = field(default_factory=dict)
    of_pair: dict[tuple, list[Finding]] = field(default_factory=dict)
    used: set[int] = field(default_factory=set)
    warned_reload: set[str] = field(default_factory=set)

    def added(self, before: int) -> list[Finding]:
        return self.ctx.findings[before:]


def _section(run: _Run, sec) -> tuple[str | None, list[Finding], bool] | None:
    """The section's own rules: (gate, its findings, whether the kernel reads it as a
    livepatch relocation section at all), or None for a section it never looks into."""
    ctx = run.ctx
    before = len(ctx.findings)
    sname, place = sec.name, Place(sec.name)
    gate = parse_klp_rela_object(sname)
    if sec.type != C.SHT_RELA:
        ctx.add(
            "klp.rela.flags",
            place,
            f"type {C.SECTION_TYPE_NAMES.get(sec.type, sec.type)}"
            ": the livepatch core reads every klp section as Elf_Rela",
        )
        return None
    if not is_klp_rela(sec):
        ctx.add(
            "klp.rela.flags",
            place,
            "no SHF_RELA_LIVEPATCH: the loader applies it as "
            "a normal section with its livepatch symbols' value 0",
        )
        return gate, run.added(before), False
    if gate is None:
        ctx.add(
            "klp.rela.name",
            place,
            "the name does not parse as .klp.rela.<obj>.<sec>",
            f"livepatch: section {sname} has an incorrectly formatted name",
        )
        return gate, run.added(before), False
    stage = _stage(ctx, gate)
    _layout(ctx, sec, gate, place, stage)
    _gate(ctx, sname, gate, place, stage)
    _reload(run, gate, place)
    return gate, run.added(before), True


def _layout(ctx: Context, sec, gate: str, place: Place, stage: Stage) -> None:
    """SHF_ALLOC, the target section, sh_link, sh_entsize."""
    if not sec.flags & C.SHF_ALLOC:
        _staged(
            ctx.add(
                "klp.rela.flags",
                place,
                "no SHF_ALLOC: the section is dropped with "
                "the load-time copy of the module; relocations applied later "
                + ("(this one is module-gated) " if gate != klp.VMLINUX else "")
                + "read freed memory",
            ),
            stage,
        )
    target = sec.info if not isinstance(sec.info, int) else None
    if target is None:
        ctx.add("klp.rela.target", place, f"sh_info {sec.info} is not a section")
    elif not target.is_alloc:
        ctx.add(
            "klp.rela.target",
            place,
            f"target {target.name} is not SHF_ALLOC: the relocations are never applied",
        )
    if sec.link is not ctx.elf.symtab:
        ctx.add("klp.rela.link", place, "sh_link does not name .symtab")
    if sec.entsize != 24 or sec.size % 24:
        ctx.add(
            "klp.rela.link",
            place,
            f"sh_entsize {sec.entsize}, size {sec.size}: not whole Elf64_Rela entries",
        )
    tname = target.name if target is not None else None
    special = klp.special_section_problem(tname or "", gate, ctx.kver)
    if gate != klp.VMLINUX and special is not None:
        ctx.add("klp.rela.special", place, f"module-gated relocations in {tname}: {special}")


def _gate(ctx: Context, sname: str, gate: str, place: Place, stage: Stage) -> None:
    """The gating object: a real object, and one the kernel applies (klp.when_applied)."""
    if len(sname[len(KLP_RELA_PREFIX) :].split(".", 1)[0]) > MODULE_NAME_MAX:
        ctx.add(
            "klp.rela.object",
            place,
            f"object name longer than {MODULE_NAME_MAX} "
            "characters: the kernel compares the first 55 only, it never matches",
        )
        return
    if not ctx.object_exists(gate):
        ctx.add(
            "klp.rela.object",
            place,
            f"gated on '{gate}', which is not vmlinux nor a "
            f"module of {ctx.db.release}: never applied",
        )
        return
    app = klp.when_applied(gate, ctx.objects, ctx.kver, ctx.registers)
    if app.when is klp.When.NEVER:
        _staged(
            ctx.add(
                "klp.rela.never-applied",
                place,
                f"gated on {gate}: {app.reason} ({app.by} is never called for it)",
            ),
            stage,
        )


def _reload(run: _Run, gate: str, place: Place) -> None:
    """Module-gated sections on a kernel without clear_relocate_add(): once per gate."""
    ctx = run.ctx
    if gate == klp.VMLINUX or ctx.kver >= klp.CLEAR_RELOCATE_ADD or gate in run.warned_reload:
        return
    if klp.when_applied(gate, ctx.objects, ctx.kver, ctx.registers).when is klp.When.NEVER:
        return  # never written: never left behind either
    run.warned_reload.add(gate)
    ctx.add(
        "klp.rela.reload",
        place,
        f"module-gated: the kernel writes these "
        f"relocations when {gate} loads and, without clear_relocate_add (< 6.3, "
        f"e.g. Debian 6.1.170), does not clear them when {gate} unloads; loading "
        f"{gate} again fails and {gate} refuses to load",
        "module: x86/modules: Skipping invalid relocation target, existing value "
        "is nonzero for type %d, loc %p, val %Lx\n"
        f"livepatch: failed to initialize patch '{ctx.name}' for module '{gate}' "
        "(-8)\n"
        f"livepatch: patch '{ctx.name}' failed for module '{gate}', refusing to "
        f"load module '{gate}'",
    )


def _symbol(run: _Run, sym, stage: Stage) -> list[Finding]:
    """The symbol's own rules, once per symbol: its name parses, it resolves."""
    key = id(sym)
    if key in run.of_symbol:
        return run.of_symbol[key]
    ctx = run.ctx
    before = len(ctx.findings)
    parsed = run.parsed[key] = parse_klp_symbol_name(sym.name, ctx.kver)
    if parsed is None:
        kmax = ksym_name_max(ctx.kver)
        _staged(
            ctx.add(
                "klp.sym.format",
                Place(symbol=sym.name),
                f"not .klp.sym.<obj>.<name>,<pos> with obj <= {MODULE_NAME_MAX} "
                f"characters without '.', name <= {kmax} without ','",
                f"livepatch: symbol {sym.name} has an incorrectly formatted name",
            ),
            stage,
        )
    else:
        resolve(ctx, parsed.object, parsed.name, parsed.sympos, Place(symbol=sym.name), stage)
    run.of_symbol[key] = run.added(before)
    return run.of_symbol[key]


def _pair(run: _Run, gate: str, sym, place: Place) -> list[Finding]:
    """What the gate makes of the symbol (klp.gate_problem, klp.dependency_problem),
    once per (kind of gate, symbol)."""
    parsed = run.parsed.get(id(sym))
    if parsed is None:
        return []
    key = (gate if gate != klp.VMLINUX else None, id(sym))
    if key in run.of_pair:
        return run.of_pair[key]
    ctx = run.ctx
    before = len(ctx.findings)
    problem = klp.gate_problem(gate, parsed.object, parsed.name, ctx.kver)
    if problem is not None:
        f = ctx.add(problem.rule, place, problem.reason, problem.kernel_message, gate=gate)
        if problem.gravity is klp.Gravity.REFUSED:
            _staged(f, Stage.OBJECT)
    elif gate != klp.VMLINUX:
        depends = known_depends(ctx.db, gate)
        dep = klp.dependency_problem(gate, parsed.object, depends)
        if dep is not None:
            ctx.add("klp.sym.dependency", place, dep, gate=gate)
    run.of_pair[key] = run.added(before)
    return run.of_pair[key]


def _relocations(
    run: _Run, sec, gate: str | None, sec_findings: list[Finding], readable: bool
) -> None:
    """Every relocation of a livepatch relocation section: its symbol's and its gate's
    rules; each (gate, symbol) reference collects the findings it goes through."""
    ctx = run.ctx
    target = sec.info if not isinstance(sec.info, int) else None
    tname = target.name if target is not None else None
    stage = _stage(ctx, gate)
    bad: set[int] = set()
    for r in sec.relocations:
        sym = r.symbol
        rplace = Place(tname or sec.name, r.offset, sym.name if sym is not None else "")
        ref = run.references.setdefault((gate or "", sym.name if sym is not None else ""), [])
        _extend(ref, sec_findings)
        if not readable or gate is None:
            continue  # the kernel fails on (or ignores) the section: nothing more applies
        if sym is None or not is_klp_symbol(sym):
            if id(sym) not in bad:
                bad.add(id(sym))
                _extend(
                    ref,
                    [
                        _staged(
                            ctx.add(
                                "klp.rela.symbol",
                                rplace,
                                "the relocation's symbol is not SHN_LIVEPATCH",
                                "livepatch: symbol "
                                f"{sym.name if sym is not None else ''} is not marked as a livepatch "
                                "symbol",
                                gate=gate,
                            ),
                            stage,
                        )
                    ],
                )
            continue
        run.used.add(id(sym))
        _extend(ref, _symbol(run, sym, stage))
        _extend(ref, _pair(run, gate, sym, rplace))


def _extend(ref: list[Finding], found: Sequence[Finding | None]) -> None:
    for f in found:
        if f is not None and not any(f is g for g in ref):
            ref.append(f)


def _unused(run: _Run) -> None:
    """Livepatch symbols no klp relocation uses: never resolved by the kernel."""
    ctx = run.ctx
    for sym in ctx.elf.symtab.symbols[1:]:
        if not is_klp_symbol(sym) or id(sym) in run.used:
            continue
        parsed = (
            parse_klp_symbol_name(sym.name, ctx.kver)
            if sym.name.startswith(KLP_SYM_PREFIX)
            else None
        )
        if parsed is None:
            ctx.add(
                "klp.sym.format",
                Place(symbol=sym.name),
                "SHN_LIVEPATCH symbol with a "
                "name the kernel cannot parse (no livepatch relocation uses it)",
                severity=Severity.WARNING,
            )
        else:
            resolve(
                ctx,
                parsed.object,
                parsed.name,
                parsed.sympos,
                Place(symbol=sym.name),
                Stage.OBJECT,
                severity=Severity.WARNING,
            )


def _normal_on_livepatch_symbols(ctx: Context) -> None:
    """Normal relocations on livepatch symbols: written with value 0."""
    for rs in ctx.elf.relocation_sections():
        if meant_as_klp_rela(rs):
            continue
        target = rs.target
        if target is None or not target.is_alloc:
            continue
        for r in rs.relocations:
            if r.symbol is not None and is_klp_symbol(r.symbol):
                ctx.add(
                    "rela.livepatch-symbol",
                    Place(target.name, r.offset, r.symbol.name),
                    f"normal relocation in {rs.name} on a livepatch symbol: the loader "
                    "writes address 0 + addend",
                )


def _all(ctx: Context) -> _Run:
    run = _Run(ctx)
    for sec in ctx.elf.sections[1:]:
        if not meant_as_klp_rela(sec):
            continue
        got = _section(run, sec)
        if got is not None:
            _relocations(run, sec, *got)
    return run


def reference_findings(ctx: Context) -> dict[tuple[str, str], list[Finding]]:
    """{(gate, livepatch symbol): the findings that reference goes through} -- the
    sections' (flags, gate applied or never, ...), the symbol's (format, resolution)
    and the pair's (vmlinux symbol in a module gate, dependency): ``klpkit deps``'
    verdicts.  ``ctx`` needs ``elf`` (and ``given`` to state the objects)."""
    return _all(ctx).references


def run(ctx: Context):
    run_ = _all(ctx)
    _unused(run_)
    _normal_on_livepatch_symbols(ctx)

"""The policy of ``klpkit deps``: read a set of modules, decide which livepatch modules
are per-object, classify every reference, and build the graph.

Plain undefined symbols are classified by the conversion policy
(:class:`klpkit.convert.plan.Classifier`); livepatch relocations take their verdicts
from ``klpkit check``'s rules (:func:`klpkit.check.klp_rules.reference_findings`).
Each step is a function of the set (:class:`ModuleSet`: the modules read, the database)
and one module; only :func:`analyze` runs them in order."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from klpkit.check.context import Context
from klpkit.check.deps_rules import undefined_symbols
from klpkit.check.findings import Finding, Severity, Stage
from klpkit.check.klp_rules import reference_findings
from klpkit.convert.categories import Category
from klpkit.convert.objects import PatchedObjects, read_patched_objects
from klpkit.convert.plan import Classifier, SymbolDecision
from klpkit.deps.facts import (
    KlpReloc,
    ModuleFile,
    closure,
    database_release,
    judging_kernel,
    read_module,
    relocation_sites,
)
from klpkit.deps.graph import (
    EdgeSet,
    add_object_deps,
    add_triggers,
    collect_nodes,
    find_cycles,
    find_pins,
    mark_cycles,
)
from klpkit.deps.model import (
    CAT_A,
    CAT_B,
    CAT_C,
    CAT_D,
    CAT_KLP_OK,
    CAT_KLP_WRONG,
    CAT_LOCAL,
    CAT_OBJECTS,
    CAT_OTHER,
    CAT_UNRESOLVED,
    ERROR,
    KLP,
    NEEDS,
    OK,
    WARN,
    ModuleInfo,
    Reference,
    Report,
)
from klpkit.errors import InputError
from klpkit.kernel.livepatch import parse_klp_symbol_name
from klpkit.symbols.protocol import SymbolLookup

FIX_CONVERT = (
    "convert the module: klpkit convert {path} -o OUT.ko --symbols DB (references "
    "to {obj} become livepatch relocations .klp.sym.{obj}.NAME,POS gated on the "
    "patched object, and depends= loses {obj})"
)
FIX_SHADOW = (
    "share state through shadow variables (klp_shadow_alloc()/klp_shadow_get() "
    "keyed on the patched object) instead of an export of the vmlinux livepatch, "
    "or move the helper into this module"
)
FIX_D = (
    "livepatch-for-X may depend on livepatch-for-Y only if X depends on Y: move the "
    "shared code into this module, share state with klp_shadow_*, or reference the "
    "patched object's own symbol through a livepatch relocation"
)
FIX_OTHER = (
    "the livepatch loads {obj} although none of its patched objects needs it: "
    "reference the symbol through a livepatch relocation gated on a patched "
    "object that depends on {obj}, or drop the use"
)
FIX_WRONG = "regenerate the livepatch relocations: klpkit convert --object OBJ ..."
FIX_OBJECTS = (
    "drop --object (the module's own objects are what the kernel reads), or "
    "--force to analyse it as said"
)


def analyze(
    paths: Iterable[str | os.PathLike],
    db: SymbolLookup,
    objects: dict[str, list[str]] | None = None,
    per_object: bool | None = None,
    *,
    force: bool = False,
) -> Report:
    """Analyse a set of modules (one livepatch, or a per-object livepatch set).

    ``per_object`` says whether the livepatch modules that patch one module are loaded by
    that module's load (a split livepatch): ``None`` decides from the set (several
    livepatch modules each patching a different object), ``True``/``False`` is the
    user's word (``--per-object``/``--no-per-object``).  It matters because only a
    per-object livepatch turns a B pin into a load recursion.  ``objects`` (--object)
    naming an object a module does not patch is an error reference unless ``force``.

    The steps run in this order because each needs the previous ones: the set's exports
    need every module read; per-object needs every module's objects; the nodes need
    every edge; the cycles need the whole graph."""
    mset = load_set(paths, db, objects, force)
    for m, (flag, reason) in zip(
        mset.modules, decide_per_object(mset.modules, per_object), strict=True
    ):
        m.per_object, m.per_object_reason = flag, reason
    edges = EdgeSet()
    for m in mset.modules:
        undef_sites, klp_relocs = relocation_sites(mset.files[m.name].elf)
        _undefined_references(mset, m, undef_sites, edges)
        _klp_references(mset, m, klp_relocs, edges)
        _depends(mset, m, edges)
    nodes = collect_nodes(mset.modules, edges)
    add_triggers(mset.modules, edges)
    add_object_deps(db, nodes, edges)
    edge_list = list(edges)
    cycles = find_cycles(edge_list)
    mark_cycles(edges, cycles)
    return Report(
        mset.modules, nodes, edge_list, cycles, find_pins(edge_list), database_release(db)
    )


# --------------------------------------------------------------------------- loading
@dataclass
class ModuleSet:
    """The modules given, read: what every step asks about the others."""

    db: SymbolLookup
    kver: tuple[int, int]  # the kernel whose rules judge the livepatch relocations
    modules: list[ModuleInfo] = field(default_factory=list)
    files: dict[str, ModuleFile] = field(default_factory=dict)
    registers: dict[str, bool] = field(default_factory=dict)  # calls klp_enable_patch()
    exports: dict[str, str] = field(default_factory=dict)  # symbol -> module exporting it
    closures: dict[str, set[str]] = field(default_factory=dict)  # depmod closure cache

    @property
    def by_name(self) -> dict[str, ModuleInfo]:
        return {m.name: m for m in self.modules}

    def closure(self, obj: str) -> set[str]:
        return closure(self.db, obj, self.closures)


def load_set(
    paths: Iterable[str | os.PathLike],
    db,
    objects: dict[str, list[str]] | None = None,
    force: bool = False,
) -> ModuleSet:
    """Read every module first: a module may use an export of one given after it."""
    mset = ModuleSet(db, judging_kernel(db))
    object_map = dict(objects or {})  # --object; emptied as modules claim it
    for p in paths:
        mf = read_module(p)
        if mf.name in mset.files:
            raise InputError(f"module {mf.name} given twice", path=p)
        info, registers = module_info(mf, read_patched_objects(mf.elf), object_map, force)
        mset.modules.append(info)
        mset.files[mf.name] = mf
        mset.registers[mf.name] = registers
    if object_map:
        raise InputError(f"--object names module(s) not given: {', '.join(sorted(object_map))}")
    for m in mset.modules:
        for s in m.exports:
            mset.exports.setdefault(s, m.name)
    return mset


def module_info(
    mf: ModuleFile, po: PatchedObjects, object_map: dict[str, list[str]], force: bool
) -> tuple[ModuleInfo, bool]:
    """(the module's entry, whether it registers a livepatch).  What it patches,
    --object or calling klp_enable_patch() make it a livepatch even without
    livepatch=Y (the kernel then refuses it: check says so)."""
    objs, source, contradiction = patched_objects(mf.name, po, object_map)
    is_lp = mf.declares_livepatch or po.registers or source != "none"
    info = ModuleInfo(mf.name, mf.path, is_lp, objs, source, False, mf.exports(), mf.depends)
    if is_lp and not objs:
        info.notes.append("no klp_object names found: pass --object MOD=OBJ")
    if contradiction:
        info.references.append(
            Reference(
                mf.name,
                "objects",
                "--object",
                CAT_OBJECTS,
                None,
                WARN if force else ERROR,
                contradiction + (" (--force)" if force else ""),
                FIX_OBJECTS,
            )
        )
    return info, po.registers or source == "--object"


def patched_objects(
    name: str, po: PatchedObjects, object_map: dict[str, list[str]]
) -> tuple[list[str], str, str | None]:
    """(objects, where from, contradiction): ``--object`` wins over the module's own
    objects (its klp_patch, else its klp_object entries and annotations), which a
    module may lack or which may be what the user wants to question; naming one the
    module does not patch contradicts it (the kernel reads its klp_patch).  Takes the
    module's entry out of ``object_map``."""
    own, own_source = po.effective()
    if name not in object_map:
        return own, own_source, None
    given = object_map.pop(name)
    foreign = [o for o in given if own and o not in own]
    if not foreign or own_source == "annotations":
        return given, "--object", None
    return (
        given,
        "--object",
        (
            f"--object {', '.join(foreign)} contradicts {name}, which "
            f"patches {', '.join(own)} (its {own_source}): the kernel "
            "never applies relocations gated on an object its "
            "klp_patch does not list"
        ),
    )


# ------------------------------------------------------------------------ per-object
def decide_per_object(
    modules: list[ModuleInfo], per_object: bool | None = None
) -> list[tuple[bool, str]]:
    """(per-object, why) for each module: is it loaded by its patched module's load?
    Nothing in a module says so (a lone livepatch for cdrom and cdrom's part of a
    split livepatch look alike), so the set or the user (``per_object``) decides.  A
    split set is one patch cut by object: each module patches a different object.  Two
    livepatch modules patching the same object are stacked (a fix and a later fix on
    top, each its own klp_patch and klp_enable_patch()): separate livepatches, no split
    set."""
    lps = [m for m in modules if m.livepatch]
    by_object: dict[str, list[str]] = {}
    for m in lps:
        for o in m.objects:
            by_object.setdefault(o, []).append(m.name)
    stacked = {o: names for o, names in by_object.items() if len(names) > 1}
    single = [m.name for m in lps if len(m.objects) == 1]
    return [_per_object(m, per_object, single, stacked) for m in modules]


def _per_object(
    m: ModuleInfo, flag: bool | None, single: list[str], stacked: dict[str, list[str]]
) -> tuple[bool, str]:
    if not m.livepatch:
        return False, "not a livepatch module"
    if len(m.objects) != 1 or m.objects[0] == "vmlinux":
        return False, (
            f"patches {', '.join(m.objects) or 'no object'}: a per-object "
            "livepatch patches exactly one module"
        )
    obj = m.objects[0]
    if flag is True:
        return True, f"--per-object: loading {obj} loads {m.name}"
    if flag is False:
        return False, f"--no-per-object: {m.name} is loaded on its own, not by {obj}"
    if stacked:
        o, names = next(iter(stacked.items()))
        return False, (
            f"stacked livepatches, not a split set: {' and '.join(names)} both "
            f"patch {o} (each its own klp_patch: a fix and a fix on top); "
            f"{m.name} is loaded on its own, not by {obj}'s load "
            "(--per-object if it is one part of a split livepatch)"
        )
    if len(single) > 1:
        return True, (
            f"split livepatch: {len(single)} livepatch modules of the set each "
            f"patch one object ({', '.join(single)}); loading {obj} loads "
            f"{m.name}"
        )
    return False, (
        f"the only livepatch module of the set patching one object: a "
        f"normal livepatch, not loaded by {obj}'s load (--per-object if it "
        "is one part of a split livepatch)"
    )


# ----------------------------------------------------------------- undefined symbols
def _undefined_references(
    mset: ModuleSet, m: ModuleInfo, undef_sites: dict[str, list[str]], edges: EdgeSet
) -> None:
    """One reference per undefined symbol (all its sites), and a ``needs`` edge to
    the module the loader must load to resolve it.  An export of another module of
    the set comes first: modpost resolved it there, and C/D are about the set."""
    clf = Classifier(mset.db, m.objects, kernel_version=mset.kver)
    for name, weak in undefined_symbols(mset.files[m.name].elf):
        ref, dst = undefined_reference(mset, m, clf, name, weak, undef_sites.get(name, []))
        m.references.append(ref)
        if dst is not None:
            edges.add(m.name, dst, NEEDS, ref.category, ref.verdict, name, ref.reason, "symbols")


def undefined_reference(
    mset: ModuleSet, m: ModuleInfo, clf: Classifier, name: str, weak: bool, sites: list[str]
) -> _Found:
    """(the reference, the module the loader loads for it or None)."""
    owner = mset.exports.get(name)
    if owner is not None and owner != m.name:
        cat, verdict, reason, fix = needs_set_module(mset, m, mset.by_name[owner])
        ref = Reference(m.name, "undefined", name, cat, owner, verdict, reason, fix, sites=sites)
        ref.policy = "set-export"
        return ref, owner
    d = clf.classify(name, weak=weak)
    step = _BY_POLICY.get(d.category, _unresolved)
    ref, dst = step(mset, m, d, sites)
    ref.policy = str(d.category)
    return ref, dst


_Found = tuple[Reference, str | None]  # the reference, the module the loader loads for it
_Step = Callable[[ModuleSet, ModuleInfo, SymbolDecision, list[str]], _Found]


def _undefined(
    m: ModuleInfo,
    d: SymbolDecision,
    category: str,
    obj: str | None,
    verdict: str,
    reason: str,
    fix: str = "",
    *,
    sites: list[str],
) -> Reference:
    return Reference(m.name, "undefined", d.name, category, obj, verdict, reason, fix, sites=sites)


def _vmlinux_export(mset: ModuleSet, m: ModuleInfo, d: SymbolDecision, sites: list[str]) -> _Found:
    """A: vmlinux is always there; nothing is pinned."""
    reason = "export of vmlinux: a normal reference"
    return _undefined(m, d, CAT_A, "vmlinux", OK, reason, sites=sites), "vmlinux"


def _patched_export(mset: ModuleSet, m: ModuleInfo, d: SymbolDecision, sites: list[str]) -> _Found:
    """B: the loader makes the livepatch depend on the module it patches (a pin);
    a per-object livepatch is moreover loaded by that module: a recursion."""
    obj = d.object
    reason = (
        f"export of patched module {obj}: the loader makes {m.name} depend "
        f"on {obj}, which is pinned (cannot be unloaded) while the "
        "livepatch is loaded, and the livepatch cannot load before it"
    )
    if m.per_object:
        reason += f"; {obj}'s load triggers loading {m.name}, which needs {obj}: a recursion"
    fix = FIX_CONVERT.format(path=m.path, obj=obj, sym=d.name)
    return _undefined(m, d, CAT_B, obj, ERROR, reason, fix, sites=sites), obj


def _other_export(mset: ModuleSet, m: ModuleInfo, d: SymbolDecision, sites: list[str]) -> _Found:
    """Export of a module neither patched nor in the set: loading the livepatch
    loads and pins it, harmless only when a patched object needs it anyway."""
    obj = d.exported_by or d.object
    if needed_by_objects(mset, m, obj):
        reason = f"export of {obj}, which a patched object needs anyway"
        return _undefined(m, d, CAT_OTHER, obj, OK, reason, sites=sites), obj
    reason = (
        f"export of {obj}, which the livepatch does not patch and "
        "no patched object needs: loading the livepatch loads "
        f"and pins {obj}"
    )
    fix = FIX_OTHER.format(obj=obj)
    return _undefined(m, d, CAT_OTHER, obj, WARN, reason, fix, sites=sites), obj


def _unconverted_local(
    mset: ModuleSet, m: ModuleInfo, d: SymbolDecision, sites: list[str]
) -> _Found:
    """Not exported: only a livepatch relocation can reach it; as a plain undefined
    symbol the module does not even load (no edge: it resolves nowhere)."""
    reason = (
        f"{d.reason}; still a plain undefined symbol: "
        f"the module loader refuses the module (Unknown symbol {d.name})"
    )
    fix = FIX_CONVERT.format(path=m.path, obj=d.object, sym=d.name)
    return _undefined(m, d, CAT_LOCAL, d.object, ERROR, reason, fix, sites=sites), None


def _internal(mset: ModuleSet, m: ModuleInfo, d: SymbolDecision, sites: list[str]) -> _Found:
    """The livepatch core's own symbols (klp_enable_patch...): always fine."""
    return _undefined(m, d, CAT_A, None, OK, d.reason, sites=sites), None


def _unresolved(mset: ModuleSet, m: ModuleInfo, d: SymbolDecision, sites: list[str]) -> _Found:
    """Found nowhere, ambiguous, or no gate for it: the loader would not resolve it."""
    fix = "define the symbol in the livepatch, or choose it with klpkit convert --map NAME=OBJ,POS"
    return _undefined(m, d, CAT_UNRESOLVED, d.object, ERROR, d.reason, fix, sites=sites), None


_BY_POLICY: dict[str, _Step] = {
    Category.A: _vmlinux_export,
    Category.B: _patched_export,
    Category.CD: _other_export,
    Category.LOCAL: _unconverted_local,
    Category.INTERNAL: _internal,
}


# ---------------------------------------------------------------- modules of the set
def needs_set_module(
    mset: ModuleSet, m: ModuleInfo, other: ModuleInfo
) -> tuple[str, str, str, str]:
    """(category, verdict, reason, fix) of ``m`` needing ``other``, given in the set."""
    if not other.livepatch:
        needed = needed_by_objects(mset, m, other.name)
        return (
            CAT_OTHER,
            OK if needed else WARN,
            f"export of {other.name} (given in the set, not a livepatch)"
            + ("" if needed else ": no patched object needs it"),
            "" if needed else FIX_OTHER.format(obj=other.name),
        )
    if "vmlinux" in other.objects and "vmlinux" not in m.objects:
        return (
            CAT_C,
            WARN,
            f"uses an export of {other.name}, the livepatch for vmlinux: works, but "
            f"couples the set ({other.name} must stay loaded while {m.name} is)",
            FIX_SHADOW,
        )
    return _livepatch_to_livepatch(mset, m, other)


def _livepatch_to_livepatch(
    mset: ModuleSet, m: ModuleInfo, other: ModuleInfo
) -> tuple[str, str, str, str]:
    """D: fine only where it mirrors the patched objects' own dependencies, which
    the loader enforces anyway."""
    mods = [o for o in m.objects if o != "vmlinux"]
    theirs = [o for o in other.objects if o != "vmlinux"]
    mirrored = [(x, y) for x in mods for y in theirs if y in mset.closure(x)]
    if mirrored and mods and theirs:
        x, y = mirrored[0]
        return (
            CAT_D,
            OK,
            f"livepatch-to-livepatch dependency mirrored by the patched "
            f"objects: {x} depends on {y}",
            "",
        )
    return (
        CAT_D,
        WARN,
        f"livepatch-to-livepatch dependency not mirrored by the patched objects: "
        f"{', '.join(mods) or 'vmlinux'} does not depend on "
        f"{', '.join(theirs) or 'vmlinux'}",
        FIX_D,
    )


def needed_by_objects(mset: ModuleSet, m: ModuleInfo, obj: str | None) -> bool:
    """Does a patched module of ``m`` itself need ``obj`` (directly or not)?  Then
    the livepatch loading it costs nothing: it is loaded whenever it matters."""
    return any(obj == "vmlinux" or obj in mset.closure(o) for o in m.objects if o != "vmlinux")


# ------------------------------------------------------------- livepatch relocations
def _klp_references(
    mset: ModuleSet, m: ModuleInfo, klp_relocs: list[KlpReloc], edges: EdgeSet
) -> None:
    """One reference per (gate, symbol); a ``klp`` edge to the gate, drawn but no
    load dependency (the livepatch core applies it when the gate loads).  The
    verdicts are check's (:func:`klpkit.check.klp_rules.reference_findings`)."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for _sec, gate, site, sname in klp_relocs:
        grouped.setdefault((gate, sname), []).append(site)
    judged = judge_klp(mset, m) if grouped else {}
    for (gate, sname), sites in grouped.items():
        found = judged.get((gate, sname), [])
        ref = klp_reference(m, gate, sname, sites, found, mset.kver)
        m.references.append(ref)
        if gate:
            edges.add(m.name, gate, KLP, ref.category, ref.verdict, ref.symbol, ref.reason)


def judge_klp(mset: ModuleSet, m: ModuleInfo) -> dict[tuple[str, str], list[Finding]]:
    """check's findings per (gate, symbol) of ``m``, for the objects deps works with
    (``--object`` included) on the database's kernel."""
    ctx = Context(
        path=m.path,
        data=b"",
        db=mset.db,
        kver=mset.kver,
        elf=mset.files[m.name].elf,
        name=m.name,
        given=(m.objects or None, mset.registers.get(m.name, False)),
    )
    return reference_findings(ctx)


def klp_reference(
    m: ModuleInfo,
    gate: str,
    sname: str,
    sites: list[str],
    findings: list[Finding],
    kver: tuple[int, int],
) -> Reference:
    """klp-ok, or klp-wrong-object when check finds an error on the way (warnings:
    klp-ok, verdict warn).  What happens later (a target's reload) is check's alone."""
    parsed = parse_klp_symbol_name(sname, kver)
    obj = parsed.object if parsed is not None else None
    now = [f for f in findings if f.stage is not Stage.LATER]
    errors = [f for f in now if f.severity is Severity.ERROR]
    if errors:
        reason = f"{errors[0].rule}: {errors[0].message}"
        return Reference(
            m.name,
            "klp",
            sname,
            CAT_KLP_WRONG,
            obj,
            ERROR,
            reason,
            FIX_WRONG,
            gate=gate or None,
            sites=sites,
        )
    warnings = [f for f in now if f.severity is Severity.WARNING]
    resolved = next((f for f in now if f.rule == "klp.sym.resolved"), None)
    exported = bool(resolved is not None and resolved.details.get("exported"))
    policy = (
        "B"
        if exported and obj != "vmlinux" and obj in m.objects
        else "A"
        if exported and obj == "vmlinux"
        else "local"
    )
    what = (
        "an export of the patched module, converted: no pin, no depends="
        if policy == "B"
        else "resolved by the livepatch core"
    )
    reason = f"livepatch relocation gated on {gate}: {what}"
    if warnings:
        reason += f"; {warnings[0].rule}: {warnings[0].message}"
    verdict = WARN if warnings else OK
    return Reference(
        m.name,
        "klp",
        sname,
        CAT_KLP_OK,
        obj,
        verdict,
        reason,
        gate=gate,
        sites=sites,
        policy=policy,
    )


# -------------------------------------------------------------------------- depends=
def _depends(mset: ModuleSet, m: ModuleInfo, edges: EdgeSet) -> None:
    """``depends=`` (what modpost recorded) is the loader's and depmod's view: it
    joins the edge the symbols made, or makes one of its own."""
    for dep in m.depends:
        cat, verdict, reason = _depends_verdict(mset, m, dep, edges)
        e = edges.get(m.name, dep, NEEDS)
        if e is None:
            edges.add(m.name, dep, NEEDS, cat, verdict, None, reason, "depends=")
        elif "depends=" not in e.via:
            e.via.append("depends=")


def _depends_verdict(
    mset: ModuleSet, m: ModuleInfo, dep: str, edges: EdgeSet
) -> tuple[str, str, str]:
    by_name = mset.by_name
    if dep in by_name and dep != m.name:
        cat, verdict, reason, _fix = needs_set_module(mset, m, by_name[dep])
        return cat, verdict, reason
    if dep in m.objects:
        return _depends_on_patched(m, dep, edges)
    return CAT_OTHER, OK if needed_by_objects(mset, m, dep) else WARN, f"depends={dep}"


def _depends_on_patched(m: ModuleInfo, dep: str, edges: EdgeSet) -> tuple[str, str, str]:
    """B through ``depends=``: a pin even when no symbol explains it, so it gets a
    reference of its own then."""
    reason = f"depends={dep} names a patched module: {dep} is pinned while {m.name} is loaded"
    if (m.name, dep, NEEDS) not in edges:
        fix = FIX_CONVERT.format(path=m.path, obj=dep, sym="...")
        m.references.append(
            Reference(m.name, "depends", f"depends={dep}", CAT_B, dep, ERROR, reason, fix)
        )
    return CAT_B, ERROR, reason

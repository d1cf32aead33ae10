"""Dependencies of livepatch modules: classify every external reference, build the
module dependency graph the loader/depmod would build, find pins and load recursions.

This module *analyses*; it reuses the conversion policy of :mod:`klpkit.convert.plan`
(:class:`~klpkit.convert.plan.Classifier`) for every plain undefined symbol and never
re-derives it.  Pure: reads ELF models and a symbol database, writes nothing (except
:func:`write_graph`, which the command calls).

    from klpkit.deps import analyze, to_dot
    report = analyze([Path("lp_cdrom.ko")], db, objects={"lp_cdrom": ["cdrom"]})
    report.verdict                    # 'ok' | 'warn' | 'error'
    report.modules[0].references      # list[Reference]
    report.edges, report.cycles, report.pins
    report.to_json(); to_dot(report)

Categories of a reference (after Petr Mladek's A-D, spec §4):

=======================  ==================================================  =======
category                 reference                                           verdict
=======================  ==================================================  =======
A                        export of vmlinux                                   ok
B                        export of a module the livepatch patches: the       error
                         loader pins that module (and, for a per-object
                         livepatch, its load triggers the livepatch: cycle)
C                        export of the main (vmlinux) livepatch module of    warn
                         the set, used by a per-object livepatch module
D                        export of another livepatch module of the set:      ok if
                         mirrored by the patched objects' own dependencies   mirrored,
                                                                             else warn
other-module             export of a module that is neither patched nor a    ok if a
                         livepatch (the livepatch loads it)                  patched
                                                                             object
                                                                             needs it,
                                                                             else warn
non-exported-unconverted not exported, still a plain undefined symbol: the   error
                         module loader refuses the module (Unknown symbol)
unresolved               found nowhere, or ambiguous                         error
klp-ok                   livepatch relocation, gated and resolvable          ok
klp-wrong-object         livepatch relocation the kernel would never apply   error
                         or would refuse (object not patched, vmlinux
                         symbol in a module-gated section, symbol missing)
=======================  ==================================================  =======

Graph: nodes ``vmlinux``, patched modules, livepatch modules, other modules; edges
``needs`` (undefined symbols -> exporter, plus ``depends=``) labelled with the category,
``triggers`` (a patched module's load loads its per-object livepatch), ``object-dep``
(a patched object's own dependency, from the symbol database) and ``klp`` (livepatch
relocations gated on an object: no load dependency).  A cycle through ``needs`` and
``triggers`` edges is a load recursion.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from klpkit.convert.objects import find_patched_objects
from klpkit.convert.plan import Category, Classifier, read_modinfo
from klpkit.elf import ElfFile, Section
from klpkit.elf import constants as C
from klpkit.errors import InputError
from klpkit.fileio import write_atomic
from klpkit.kernel.livepatch import KLP_RELA_PREFIX, parse_klp_rela_object, parse_klp_symbol_name
from klpkit.kernel.modinfo import module_name

OK, WARN, ERROR = "ok", "warn", "error"
_RANK = {OK: 0, WARN: 1, ERROR: 2}

# reference categories
CAT_A = "A"
CAT_B = "B"
CAT_C = "C"
CAT_D = "D"
CAT_OTHER = "other-module"
CAT_LOCAL = "non-exported-unconverted"
CAT_UNRESOLVED = "unresolved"
CAT_KLP_OK = "klp-ok"
CAT_KLP_WRONG = "klp-wrong-object"

# node kinds
VMLINUX, PATCHED, LIVEPATCH, OTHER = "vmlinux", "patched", "livepatch", "other"

# edge kinds
NEEDS, TRIGGERS, OBJECT_DEP, KLP = "needs", "triggers", "object-dep", "klp"

FIX_CONVERT = ("convert the module: klpkit convert {path} -o OUT.ko --symbols DB (references "
               "to {obj} become livepatch relocations .klp.sym.{obj}.NAME,POS gated on the "
               "patched object, and depends= loses {obj})")
FIX_SHADOW = ("share state through shadow variables (klp_shadow_alloc()/klp_shadow_get() "
              "keyed on the patched object) instead of an export of the vmlinux livepatch, "
              "or move the helper into this module")
FIX_D = ("livepatch-for-X may depend on livepatch-for-Y only if X depends on Y: move the "
         "shared code into this module, share state with klp_shadow_*, or reference the "
         "patched object's own symbol through a livepatch relocation")
FIX_OTHER = ("the livepatch loads {obj} although none of its patched objects needs it: "
             "reference the symbol through a livepatch relocation gated on a patched "
             "object that depends on {obj}, or drop the use")
FIX_WRONG = "regenerate the livepatch relocations: klpkit convert --object OBJ ..."


def worst(verdicts: Iterable[str]) -> str:
    out = OK
    for v in verdicts:
        if _RANK[v] > _RANK[out]:
            out = v
    return out


@dataclass
class Reference:
    """One external reference of a module: an undefined symbol (all its relocation
    sites), or one livepatch relocation symbol (all its sites)."""

    module: str
    kind: str                 # 'undefined' | 'klp'
    symbol: str               # the name in the module (.klp.sym... for klp)
    category: str
    object: str | None        # object defining the symbol (exporter / .klp.sym object)
    verdict: str
    reason: str
    fix: str = ""
    gate: str | None = None   # klp: the object the relocation section is gated on
    sites: list[str] = field(default_factory=list)
    policy: str | None = None  # the convert policy's category (A, B, local, C-D, ...)

    def as_dict(self) -> dict:
        return {"module": self.module, "kind": self.kind, "symbol": self.symbol,
                "category": self.category, "object": self.object, "gate": self.gate,
                "verdict": self.verdict, "reason": self.reason, "fix": self.fix,
                "sites": self.sites, "policy": self.policy}


@dataclass
class Edge:
    src: str
    dst: str
    kind: str                 # needs | triggers | object-dep | klp
    category: str | None = None
    verdict: str = OK
    symbols: list[str] = field(default_factory=list)
    reason: str = ""
    via: list[str] = field(default_factory=list)   # 'symbols', 'depends='

    def as_dict(self) -> dict:
        return {"from": self.src, "to": self.dst, "kind": self.kind,
                "category": self.category, "verdict": self.verdict,
                "symbols": self.symbols, "via": self.via, "reason": self.reason}


@dataclass
class ModuleInfo:
    name: str
    path: str
    livepatch: bool
    objects: list[str]
    objects_source: str
    per_object: bool
    exports: list[str]
    depends: list[str]
    references: list[Reference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return worst(r.verdict for r in self.references)

    def as_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "livepatch": self.livepatch,
                "objects": self.objects, "objects_source": self.objects_source,
                "per_object": self.per_object, "exports": self.exports,
                "depends": self.depends, "verdict": self.verdict, "notes": self.notes,
                "references": [r.as_dict() for r in self.references]}


@dataclass
class Report:
    modules: list[ModuleInfo]
    nodes: dict[str, str]           # name -> kind
    edges: list[Edge]
    cycles: list[dict]
    pins: list[dict]
    release: str | None = None

    @property
    def references(self) -> list[Reference]:
        return [r for m in self.modules for r in m.references]

    @property
    def verdict(self) -> str:
        return worst([*(r.verdict for r in self.references),
                      *(ERROR for _ in self.cycles)])

    def edge(self, src: str, dst: str, kind: str = NEEDS) -> Edge | None:
        return next((e for e in self.edges if (e.src, e.dst, e.kind) == (src, dst, kind)), None)

    def counts(self) -> dict[str, int]:
        out = {OK: 0, WARN: 0, ERROR: 0}
        for r in self.references:
            out[r.verdict] += 1
        out[ERROR] += len(self.cycles)
        return out

    def to_json(self) -> dict:
        return {"release": self.release, "verdict": self.verdict, "counts": self.counts(),
                "modules": [m.as_dict() for m in self.modules],
                "graph": {"nodes": [{"name": n, "kind": k} for n, k in self.nodes.items()],
                          "edges": [e.as_dict() for e in self.edges]},
                "pins": self.pins, "cycles": self.cycles}


# --------------------------------------------------------------------------- reading
def _exports(elf: ElfFile) -> list[str]:
    """Names the module exports (6.1 layout: defined ``__ksymtab_<name>`` symbols)."""
    out = []
    for sym in elf.symtab.symbols if elf.symtab else []:
        if sym.name.startswith("__ksymtab_") and isinstance(sym.shndx, Section):
            out.append(sym.name[len("__ksymtab_"):])
    return sorted(set(out))


def _sites(elf: ElfFile) -> tuple[dict[str, list[str]], list[tuple[str, str, str, str]]]:
    """(normal relocation sites per undefined symbol name, [(klp section, gate, site,
    symbol name)] for livepatch relocations)."""
    undef: dict[str, list[str]] = {}
    klp: list[tuple[str, str, str, str]] = []
    for rs in elf.relocation_sections():
        target = rs.target.name if rs.target is not None else f"#{rs.info}"
        is_klp = bool(rs.flags & C.SHF_RELA_LIVEPATCH) or rs.name.startswith(KLP_RELA_PREFIX)
        gate = parse_klp_rela_object(rs.name) if is_klp else None
        for r in rs.relocations:
            sym = r.symbol
            if sym is None:
                continue
            site = f"{target}+{r.offset:#x}"
            if is_klp:
                klp.append((rs.name, gate or "", site, sym.name))
            elif sym.shndx == C.SHN_UNDEF and sym.name:
                undef.setdefault(sym.name, []).append(site)
    return undef, klp


def _closure(db, obj: str, cache: dict[str, set[str]]) -> set[str]:
    """Every module ``obj`` needs, transitively (depmod's modules.dep), from the DB."""
    if obj in cache:
        return cache[obj]
    cache[obj] = set()
    seen: set[str] = set()
    todo = [obj]
    while todo:
        cur = todo.pop()
        try:
            deps = db.module_depends(cur)
        except Exception:  # noqa: BLE001 - an object missing from the DB: no known deps
            deps = []
        for d in deps:
            if d not in seen:
                seen.add(d)
                todo.append(d)
    cache[obj] = seen
    return seen


def _direct_deps(db, obj: str) -> list[str]:
    try:
        return list(db.module_depends(obj))
    except Exception:  # noqa: BLE001
        return []


# --------------------------------------------------------------------------- analysis
def parse_object_map(items: Iterable[str]) -> dict[str, list[str]]:
    """``MOD=OBJ[,OBJ]`` strings -> {MOD: [OBJ...]} (MOD: module name or file name)."""
    out: dict[str, list[str]] = {}
    for item in items:
        mod, sep, objs = item.partition("=")
        names = [o.strip() for o in objs.split(",") if o.strip()]
        if not sep or not mod.strip() or not names:
            raise InputError(f"--object {item!r}: expected MOD=OBJ[,OBJ]")
        key = module_name(mod.strip())
        out.setdefault(key, [])
        out[key].extend(n for n in names if n not in out[key])
    return out


def analyze(paths: Iterable[str | os.PathLike], db, objects: dict[str, list[str]] | None = None
            ) -> Report:
    """Analyse a set of modules (one livepatch, or a per-object livepatch set)."""
    objects = dict(objects or {})
    loaded: list[tuple[ModuleInfo, ElfFile]] = []
    for p in paths:
        elf = ElfFile.read(p)
        mi = read_modinfo(elf)
        name = module_name(p, mi)
        if any(m.name == name for m, _e in loaded):
            raise InputError(f"module {name} given twice", path=p)
        found = [o.name for o in find_patched_objects(elf)]
        if name in objects:
            objs, source = objects.pop(name), "--object"
        else:
            objs, source = found, "klp_object" if found else "none"
        is_lp = bool(mi is not None and mi.is_livepatch) or bool(found) or source == "--object"
        per_object = is_lp and len(objs) == 1 and objs[0] != "vmlinux"
        info = ModuleInfo(name, str(p), is_lp, objs, source, per_object, _exports(elf),
                          mi.depends if mi is not None else [])
        if is_lp and not objs:
            info.notes.append("no klp_object names found: pass --object MOD=OBJ")
        loaded.append((info, elf))
    if objects:
        raise InputError(f"--object names module(s) not given: {', '.join(sorted(objects))}")

    set_exports: dict[str, str] = {}
    for m, _e in loaded:
        for s in m.exports:
            set_exports.setdefault(s, m.name)
    by_name = {m.name: m for m, _e in loaded}
    closure_cache: dict[str, set[str]] = {}
    edges: dict[tuple[str, str, str], Edge] = {}

    def add_edge(src, dst, kind, category=None, verdict=OK, symbol=None, reason="", via=None):
        e = edges.get((src, dst, kind))
        if e is None:
            e = edges[(src, dst, kind)] = Edge(src, dst, kind, category, verdict, [], reason)
        elif _RANK[verdict] > _RANK[e.verdict]:
            e.verdict, e.category, e.reason = verdict, category, reason
        if symbol and symbol not in e.symbols:
            e.symbols.append(symbol)
        if via and via not in e.via:
            e.via.append(via)
        return e

    def needed_by_objects(m: ModuleInfo, obj: str) -> bool:
        """Does a patched object of ``m`` itself need ``obj`` (directly or not)?"""
        return any(obj == "vmlinux" or obj in _closure(db, o, closure_cache)
                   for o in m.objects if o != "vmlinux")

    def set_dep(m: ModuleInfo, other: ModuleInfo) -> tuple[str, str, str, str]:
        """(category, verdict, reason, fix) for m needing module ``other`` of the set."""
        if not other.livepatch:
            needed = needed_by_objects(m, other.name)
            return (CAT_OTHER, OK if needed else WARN,
                    f"export of {other.name} (given in the set, not a livepatch)"
                    + ("" if needed else ": no patched object needs it"),
                    "" if needed else FIX_OTHER.format(obj=other.name))
        if "vmlinux" in other.objects and "vmlinux" not in m.objects:
            return (CAT_C, WARN,
                    f"uses an export of {other.name}, the livepatch for vmlinux: works, but "
                    f"couples the set ({other.name} must stay loaded while {m.name} is)",
                    FIX_SHADOW)
        mods = [o for o in m.objects if o != "vmlinux"]
        theirs = [o for o in other.objects if o != "vmlinux"]
        mirrored = [(x, y) for x in mods for y in theirs
                    if y in _closure(db, x, closure_cache)]
        if mirrored and mods and theirs:
            x, y = mirrored[0]
            return (CAT_D, OK, f"livepatch-to-livepatch dependency mirrored by the patched "
                               f"objects: {x} depends on {y}", "")
        return (CAT_D, WARN,
                f"livepatch-to-livepatch dependency not mirrored by the patched objects: "
                f"{', '.join(mods) or 'vmlinux'} does not depend on "
                f"{', '.join(theirs) or 'vmlinux'}", FIX_D)

    for m, elf in loaded:
        undef_sites, klp_relocs = _sites(elf)
        clf = Classifier(db, m.objects)
        symtab = elf.symtab
        undefined = []
        for sym in symtab.symbols[1:] if symtab else []:
            if sym.shndx == C.SHN_UNDEF and sym.name and sym.name not in undefined:
                undefined.append((sym.name, sym.bind == C.STB_WEAK))
        seen_names: set[str] = set()
        for name, weak in undefined:
            if name in seen_names:
                continue
            seen_names.add(name)
            sites = undef_sites.get(name, [])
            owner = set_exports.get(name)
            if owner is not None and owner != m.name:
                cat, verdict, reason, fix = set_dep(m, by_name[owner])
                m.references.append(Reference(m.name, "undefined", name, cat, owner, verdict,
                                              reason, fix, sites=sites, policy="set-export"))
                add_edge(m.name, owner, NEEDS, cat, verdict, name, reason, "symbols")
                continue
            d = clf.classify(name, weak=weak)
            pc = d.category
            if pc is Category.A:
                ref = Reference(m.name, "undefined", name, CAT_A, "vmlinux", OK,
                                "export of vmlinux: a normal reference", sites=sites)
                dst = "vmlinux"
            elif pc is Category.B:
                obj = d.object
                reason = (f"export of patched module {obj}: the loader makes {m.name} depend "
                          f"on {obj}, which is pinned (cannot be unloaded) while the "
                          "livepatch is loaded, and the livepatch cannot load before it")
                if m.per_object:
                    reason += (f"; {obj}'s load triggers loading {m.name}, which needs {obj}: "
                               "a recursion")
                ref = Reference(m.name, "undefined", name, CAT_B, obj, ERROR, reason,
                                FIX_CONVERT.format(path=m.path, obj=obj, sym=name),
                                sites=sites)
                dst = obj
            elif pc is Category.CD:
                obj = d.exported_by or d.object
                if needed_by_objects(m, obj):
                    ref = Reference(m.name, "undefined", name, CAT_OTHER, obj, OK,
                                    f"export of {obj}, which a patched object needs anyway",
                                    sites=sites)
                else:
                    ref = Reference(m.name, "undefined", name, CAT_OTHER, obj, WARN,
                                    f"export of {obj}, which the livepatch does not patch and "
                                    "no patched object needs: loading the livepatch loads "
                                    f"and pins {obj}", FIX_OTHER.format(obj=obj), sites=sites)
                dst = obj
            elif pc is Category.LOCAL:
                ref = Reference(m.name, "undefined", name, CAT_LOCAL, d.object, ERROR,
                                f"{d.reason}; still a plain undefined symbol: "
                                f"the module loader refuses the module (Unknown symbol {name})",
                                FIX_CONVERT.format(path=m.path, obj=d.object, sym=name),
                                sites=sites)
                dst = None
            elif pc is Category.INTERNAL:
                ref = Reference(m.name, "undefined", name, CAT_A, None, OK, d.reason,
                                sites=sites)
                dst = None
            else:
                ref = Reference(m.name, "undefined", name, CAT_UNRESOLVED, d.object, ERROR,
                                d.reason, "define the symbol in the livepatch, or choose it "
                                "with klpkit convert --map NAME=OBJ,POS", sites=sites)
                dst = None
            ref.policy = str(pc)
            m.references.append(ref)
            if dst is not None:
                add_edge(m.name, dst, NEEDS, ref.category, ref.verdict, name, ref.reason,
                         "symbols")

        # livepatch relocations, grouped per (gate, symbol)
        grouped: dict[tuple[str, str], list[str]] = {}
        for _sec, gate, site, sname in klp_relocs:
            grouped.setdefault((gate, sname), []).append(site)
        for (gate, sname), sites in grouped.items():
            m.references.append(_klp_reference(m, gate, sname, sites, db, closure_cache))
            ref = m.references[-1]
            if gate:
                add_edge(m.name, gate, KLP, ref.category, ref.verdict,
                         ref.symbol, ref.reason)

        # depends= (what modpost recorded): the loader's and depmod's view
        for dep in m.depends:
            if dep in by_name and dep != m.name:
                cat, verdict, reason, _fix = set_dep(m, by_name[dep])
            elif dep in m.objects:
                cat, verdict = CAT_B, ERROR
                reason = (f"depends={dep} names a patched module: {dep} is pinned while "
                          f"{m.name} is loaded")
                if (m.name, dep, NEEDS) not in edges:
                    m.references.append(Reference(
                        m.name, "depends", f"depends={dep}", CAT_B, dep, ERROR, reason,
                        FIX_CONVERT.format(path=m.path, obj=dep, sym="...")))
            else:
                cat = CAT_OTHER
                verdict = OK if needed_by_objects(m, dep) else WARN
                reason = f"depends={dep}"
            e = edges.get((m.name, dep, NEEDS))
            if e is None:
                add_edge(m.name, dep, NEEDS, cat, verdict, None, reason, "depends=")
            elif "depends=" not in e.via:
                e.via.append("depends=")

    # nodes
    nodes: dict[str, str] = {}
    patched_all = {o for m, _e in loaded for o in m.objects}
    for m, _e in loaded:
        nodes[m.name] = LIVEPATCH if m.livepatch else (PATCHED if m.name in patched_all
                                                        else OTHER)
    for m, _e in loaded:
        for o in m.objects:
            nodes.setdefault(o, VMLINUX if o == "vmlinux" else PATCHED)
    for e in list(edges.values()):
        nodes.setdefault(e.dst, VMLINUX if e.dst == "vmlinux" else (
            PATCHED if e.dst in patched_all else OTHER))

    # per-object livepatch: the patched module's load triggers the livepatch's load
    for m, _e in loaded:
        if m.per_object:
            add_edge(m.objects[0], m.name, TRIGGERS, None, OK, None,
                     f"loading {m.objects[0]} loads its livepatch {m.name}")
    # the patched objects' own dependencies (what D-edges must mirror)
    for obj in sorted(o for o in nodes if nodes[o] == PATCHED):
        for d in _direct_deps(db, obj):
            if d in nodes:
                add_edge(obj, d, OBJECT_DEP, None, OK, None, f"{obj} depends on {d}")

    edge_list = list(edges.values())
    cycles = _cycles(edge_list)
    for cyc in cycles:
        path = cyc["path"]
        for a, b in zip(path, path[1:], strict=False):
            for kind in (NEEDS, TRIGGERS, OBJECT_DEP):
                e = edges.get((a, b, kind))
                if e is not None:
                    e.verdict = ERROR
                    if "cycle" not in e.reason:
                        e.reason += ("; " if e.reason else "") + "on a load cycle"
                    break

    pins = [{"livepatch": e.src, "module": e.dst, "symbols": e.symbols, "via": e.via}
            for e in edge_list if e.kind == NEEDS and e.category == CAT_B]
    release = getattr(db, "meta", {}).get("release") if db is not None else None
    return Report([m for m, _e in loaded], nodes, edge_list, cycles, pins, release)


def _klp_reference(m: ModuleInfo, gate: str, sname: str, sites: list[str], db,
                   closure_cache) -> Reference:
    parsed = parse_klp_symbol_name(sname)

    def bad(reason, obj=None):
        return Reference(m.name, "klp", sname, CAT_KLP_WRONG, obj, ERROR, reason, FIX_WRONG,
                         gate=gate or None, sites=sites)

    if not gate:
        return bad("malformed livepatch relocation section name (the kernel cannot tell "
                   "which object it belongs to)")
    if parsed is None:
        return bad("not a well-formed .klp.sym.<obj>.<name>,<pos> symbol: the kernel "
                   "refuses the module ('incorrectly formatted name')")
    obj = parsed.object
    if gate not in m.objects:
        return bad(f"gated on {gate}, which this livepatch does not patch "
                   f"({', '.join(m.objects) or 'none'}): the kernel never applies it and the "
                   "site stays zero", obj)
    if gate != "vmlinux" and obj == "vmlinux":
        return bad(f"vmlinux symbol in a section gated on {gate}: refused since 5.8 "
                   "('invalid access to vmlinux symbol')", obj)
    if obj not in ("vmlinux", gate) and obj not in _closure(db, gate, closure_cache):
        return bad(f"symbol of {obj} in a section gated on {gate}, which does not depend on "
                   f"{obj}: {obj} may be missing when the relocation is applied", obj)
    entries = db.lookup(parsed.name, object=obj) if db is not None else []
    if db is not None and not entries:
        return bad(f"{obj} has no symbol {parsed.name} in the symbol database "
                   "('symbol not found')", obj)
    if entries:
        count = entries[0].count
        if parsed.sympos == 0 and count > 1:
            return bad(f"sympos 0 but {obj} has {count} symbols named {parsed.name} "
                       "('unresolvable ambiguity')", obj)
        if parsed.sympos > count:
            return bad(f"sympos {parsed.sympos} but {obj} has only {count} symbol(s) named "
                       f"{parsed.name}", obj)
    exported = any(e.exported for e in entries)
    policy = ("B" if exported and obj != "vmlinux" and obj in m.objects else
              "A" if exported and obj == "vmlinux" else "local")
    what = ("an export of the patched module, converted: no pin, no depends="
            if policy == "B" else "resolved by the livepatch core")
    return Reference(m.name, "klp", sname, CAT_KLP_OK, obj, OK,
                     f"livepatch relocation gated on {gate}: {what}", gate=gate, sites=sites,
                     policy=policy)


def _cycles(edges: list[Edge]) -> list[dict]:
    """Elementary cycles through needs/triggers/object-dep edges (small graphs)."""
    adj: dict[str, list[str]] = {}
    kinds: dict[tuple[str, str], str] = {}
    for e in edges:
        if e.kind in (NEEDS, TRIGGERS, OBJECT_DEP):
            adj.setdefault(e.src, [])
            if e.dst not in adj[e.src]:
                adj[e.src].append(e.dst)
            kinds.setdefault((e.src, e.dst), e.kind)
    found: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    order = sorted(adj)
    # a cycle reads best from a livepatch's 'needs' edge: lp -> target -> lp
    starts = {e.src for e in edges if e.kind == NEEDS}

    def dfs(start, node, path, on_path):
        for nxt in adj.get(node, []):
            if nxt == start:
                cyc = path + [start]
                body = cyc[:-1]
                i = body.index(min(body, key=lambda n: (n not in starts, n)))
                key = tuple(body[i:] + body[:i])
                if key not in seen:
                    seen.add(key)
                    found.append(list(key) + [key[0]])
            elif nxt not in on_path and nxt > start and len(path) < 12:
                on_path.add(nxt)
                dfs(start, nxt, path + [nxt], on_path)
                on_path.discard(nxt)

    for s in order:
        dfs(s, s, [s], {s})
    out = []
    for cyc in found:
        # start the path at a livepatch's 'needs' edge when there is one (readable)
        steps = [f"{a} -{kinds[(a, b)]}-> {b}" for a, b in zip(cyc, cyc[1:], strict=False)]
        if any(kinds[(a, b)] == TRIGGERS for a, b in zip(cyc, cyc[1:], strict=False)):
            reason = ("load recursion: a patched module's load triggers its livepatch, which "
                      "needs (directly or not) that module")
        else:
            reason = "dependency cycle: the module loader can load none of these first"
        out.append({"path": cyc, "steps": steps, "reason": reason, "verdict": ERROR})
    return out


# --------------------------------------------------------------------------- graphviz
NODE_COLOURS = {VMLINUX: "#9ecae1", PATCHED: "#fdd0a2", LIVEPATCH: "#a1d99b", OTHER: "#d9d9d9"}
CATEGORY_COLOURS = {CAT_A: "#3182bd", CAT_B: "#e6550d", CAT_C: "#756bb1", CAT_D: "#31a354",
                    CAT_OTHER: "#636363", CAT_KLP_OK: "#31a354", CAT_KLP_WRONG: "red"}


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(report: Report) -> str:
    """Graphviz DOT: nodes coloured by kind, edges by category, bad edges red."""
    lines = ["digraph klpkit_deps {", "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=10];']
    lines.append(f"  label={_q('klpkit deps: verdict ' + report.verdict)}; labelloc=t;")
    for name, kind in report.nodes.items():
        label = _q(name)[:-1] + (f"\\n({kind})" if kind != name else "") + '"'
        lines.append(f"  {_q(name)} [kind={_q(kind)}, fillcolor={_q(NODE_COLOURS[kind])}, "
                     f"label={label}];")
    for e in report.edges:
        attrs = {"kind": e.kind}
        if e.kind == NEEDS:
            label = e.category or ""
            if e.symbols:
                shown = ", ".join(e.symbols[:3]) + (", ..." if len(e.symbols) > 3 else "")
                label += f": {shown}"
            if "depends=" in e.via and not e.symbols:
                label += " (depends=)"
            attrs.update(category=e.category or "", label=label,
                         color=CATEGORY_COLOURS.get(e.category, "black"))
        elif e.kind == TRIGGERS:
            attrs.update(label="load triggers", style="dashed", color="#e6550d")
        elif e.kind == OBJECT_DEP:
            attrs.update(label="needs (object)", style="dotted", color="#636363")
        else:
            attrs.update(category=e.category or "", label="klp reloc", style="dashed",
                         arrowhead="empty",
                         color=CATEGORY_COLOURS.get(e.category, "black"))
        attrs["verdict"] = e.verdict
        if e.verdict == ERROR:
            attrs.update(color="red", penwidth="2.5", fontcolor="red")
        elif e.verdict == WARN:
            attrs.update(color="orange", penwidth="2")
        body = ", ".join(f"{k}={_q(str(v))}" for k, v in attrs.items())
        lines.append(f"  {_q(e.src)} -> {_q(e.dst)} [{body}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


RENDERED = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def write_graph(report: Report, path: str | os.PathLike) -> tuple[Path, Path | None, str | None]:
    """Write the graph.  ``.dot``/``.gv``: DOT only.  ``.png``/``.svg``/``.pdf``: the DOT
    beside it (same name, ``.dot``) and the picture when Graphviz's ``dot`` is installed.
    Returns (dot path, picture path or None, a warning or None)."""
    path = Path(path)
    ext = path.suffix.lower()
    dot_text = to_dot(report).encode()
    if ext in (".dot", ".gv", ""):
        write_atomic(path, dot_text)
        return path, None, None
    fmt = RENDERED.get(ext)
    if fmt is None:
        raise InputError(f"--graph: unknown extension {ext!r} (use .dot, .gv, .png, .svg, .pdf)",
                         path=path)
    dot_path = path.with_suffix(".dot")
    write_atomic(dot_path, dot_text)
    exe = shutil.which("dot")
    if exe is None:
        return dot_path, None, (f"Graphviz 'dot' is not installed (Debian: apt-get install "
                                f"graphviz): wrote only {dot_path}")
    r = subprocess.run([exe, f"-T{fmt}", str(dot_path)], capture_output=True)
    if r.returncode or not r.stdout:
        raise InputError(f"dot -T{fmt} failed: {r.stderr.decode(errors='replace').strip()}",
                         path=dot_path)
    write_atomic(path, r.stdout)
    return dot_path, path, None

"""Dependencies of livepatch modules: classify every external reference, build the
module dependency graph the loader/depmod would build, find pins and load recursions.

This module *analyses*; it reuses the conversion policy of :mod:`klpkit.convert.plan`
(:class:`~klpkit.convert.plan.Classifier`) for every plain undefined symbol, and takes
its verdict on every livepatch relocation from ``klpkit check``'s rules
(:func:`klpkit.check.klp_rules.reference_findings`, on the kernel's rules of
:mod:`klpkit.kernel.klp`): it re-derives neither.  A module's patched objects are read
as the kernel reads them (:func:`klpkit.convert.objects.read_patched_objects`).  Pure:
reads ELF models and a symbol database, writes nothing (except :func:`write_graph`,
which the command calls).

    from klpkit.deps import analyze, to_dot
    report = analyze([Path("lp_cdrom.ko")], db, objects={"lp_cdrom": ["cdrom"]},
                     per_object=None)          # None: decide from the set
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
klp-ok                   livepatch relocation, applied and resolvable        ok, or
                         (check's warnings: warn)                            warn
klp-wrong-object         livepatch relocation check finds an error on: the   error
                         kernel would never apply it (module-gated on an
                         object the klp_patch does not list; since 5.8 the
                         loader applies vmlinux-gated ones whatever the
                         objects) or would refuse it (vmlinux symbol in a
                         module-gated section, symbol missing, bad name)
objects-contradicted     ``--object`` names an object the module does not    error
                         patch (``force``: warn)                             (warn)
=======================  ==================================================  =======

Graph: nodes ``vmlinux``, patched modules, livepatch modules, other modules; edges
``needs`` (undefined symbols -> exporter, plus ``depends=``) labelled with the category,
``triggers`` (a patched module's load loads its per-object livepatch), ``object-dep``
(a patched object's own dependency, from the symbol database) and ``klp`` (livepatch
relocations gated on an object: no load dependency).  A cycle through ``needs`` and
``triggers`` edges is a load recursion.

Per-object: a livepatch module patching one module is *per-object* (loaded by that
module's load, so it gets a ``triggers`` edge) when the set is a split livepatch
(several livepatch modules each patching a different object, e.g. a main one for
vmlinux and one for cdrom: one patch cut by object), or when the caller says so
(``per_object=True``, ``--per-object``).  A lone livepatch for one module is a normal
livepatch: a B reference pins the module but makes no recursion; so are livepatches
*stacked* on one object (a fix and a later fix on top: each its own klp_patch), and a
set holding such a pair is no split set.  ``ModuleInfo.per_object_reason`` says which
rule decided.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from klpkit.check.context import Context
from klpkit.check.findings import Severity, Stage
from klpkit.check.klp_rules import reference_findings
from klpkit.convert.objects import read_patched_objects
from klpkit.convert.plan import Category, Classifier, read_modinfo
from klpkit.elf import ElfFile
from klpkit.elf import constants as C
from klpkit.errors import InputError
from klpkit.fileio import write_atomic
from klpkit.kernel.exports import exported_names
from klpkit.kernel.kver import kernel_version
from klpkit.kernel.livepatch import (
    meant_as_klp_rela,
    parse_klp_rela_object,
    parse_klp_symbol_name,
)
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
CAT_OBJECTS = "objects-contradicted"

# node kinds
VMLINUX, PATCHED, LIVEPATCH, OTHER = "vmlinux", "patched", "livepatch", "other"

# edge kinds
NEEDS, TRIGGERS, OBJECT_DEP, KLP = "needs", "triggers", "object-dep", "klp"

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
    kind: str  # 'undefined' | 'klp'
    symbol: str  # the name in the module (.klp.sym... for klp)
    category: str
    object: str | None  # object defining the symbol (exporter / .klp.sym object)
    verdict: str
    reason: str
    fix: str = ""
    gate: str | None = None  # klp: the object the relocation section is gated on
    sites: list[str] = field(default_factory=list)
    policy: str | None = None  # the convert policy's category (A, B, local, C-D, ...)

    def as_dict(self) -> dict:
        return {
            "module": self.module,
            "kind": self.kind,
            "symbol": self.symbol,
            "category": self.category,
            "object": self.object,
            "gate": self.gate,
            "verdict": self.verdict,
            "reason": self.reason,
            "fix": self.fix,
            "sites": self.sites,
            "policy": self.policy,
        }


@dataclass
class Edge:
    src: str
    dst: str
    kind: str  # needs | triggers | object-dep | klp
    category: str | None = None
    verdict: str = OK
    symbols: list[str] = field(default_factory=list)
    reason: str = ""
    via: list[str] = field(default_factory=list)  # 'symbols', 'depends='

    def as_dict(self) -> dict:
        return {
            "from": self.src,
            "to": self.dst,
            "kind": self.kind,
            "category": self.category,
            "verdict": self.verdict,
            "symbols": self.symbols,
            "via": self.via,
            "reason": self.reason,
        }


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
    per_object_reason: str = ""  # why it is (not) per-object: the set, or the user's flag

    @property
    def verdict(self) -> str:
        return worst(r.verdict for r in self.references)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "livepatch": self.livepatch,
            "objects": self.objects,
            "objects_source": self.objects_source,
            "per_object": self.per_object,
            "per_object_reason": self.per_object_reason,
            "exports": self.exports,
            "depends": self.depends,
            "verdict": self.verdict,
            "notes": self.notes,
            "references": [r.as_dict() for r in self.references],
        }


@dataclass
class Report:
    modules: list[ModuleInfo]
    nodes: dict[str, str]  # name -> kind
    edges: list[Edge]
    cycles: list[dict]
    pins: list[dict]
    release: str | None = None

    @property
    def references(self) -> list[Reference]:
        return [r for m in self.modules for r in m.references]

    @property
    def verdict(self) -> str:
        return worst([*(r.verdict for r in self.references), *(ERROR for _ in self.cycles)])

    def edge(self, src: str, dst: str, kind: str = NEEDS) -> Edge | None:
        return next((e for e in self.edges if (e.src, e.dst, e.kind) == (src, dst, kind)), None)

    def counts(self) -> dict[str, int]:
        out = {OK: 0, WARN: 0, ERROR: 0}
        for r in self.references:
            out[r.verdict] += 1
        out[ERROR] += len(self.cycles)
        return out

    def to_json(self) -> dict:
        return {
            "release": self.release,
            "verdict": self.verdict,
            "counts": self.counts(),
            "modules": [m.as_dict() for m in self.modules],
            "graph": {
                "nodes": [{"name": n, "kind": k} for n, k in self.nodes.items()],
                "edges": [e.as_dict() for e in self.edges],
            },
            "pins": self.pins,
            "cycles": self.cycles,
        }


# --------------------------------------------------------------------------- reading
def _exports(elf: ElfFile) -> list[str]:
    """Names the module exports (klpkit.kernel.exports: ``__ksymtab_<name>``)."""
    return exported_names(elf)


def _sites(elf: ElfFile) -> tuple[dict[str, list[str]], list[tuple[str, str, str, str]]]:
    """(normal relocation sites per undefined symbol name, [(klp section, gate, site,
    symbol name)] for livepatch relocations)."""
    undef: dict[str, list[str]] = {}
    klp: list[tuple[str, str, str, str]] = []
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
        except Exception:
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
    except Exception:
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


def analyze(
    paths: Iterable[str | os.PathLike],
    db,
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
    naming an object a module does not patch is an error reference unless ``force``."""
    return _Analysis(db, objects, per_object, force).run(paths)


class _Analysis:
    """One run of :func:`analyze`: the steps share the modules, the edges found so far
    (keyed by (src, dst, kind), so that the symbols and ``depends=`` of one dependency
    merge into one edge) and the cache of the objects' dependency closures.

    The steps run in this order because each needs the previous ones: the set's exports
    need every module read; per-object needs every module's objects; the nodes need
    every edge; the cycles need the whole graph."""

    def __init__(
        self, db, objects: dict[str, list[str]] | None, per_object: bool | None, force: bool = False
    ):
        self.db = db
        self.object_map = dict(objects or {})  # --object; emptied as modules claim it
        self.per_object = per_object
        self.force = force
        # the kernel whose rules judge the livepatch relocations: check's (the database's)
        self.kver = kernel_version(None, getattr(db, "release", None) if db is not None else None)
        self.registers: dict[str, bool] = {}  # module -> calls klp_enable_patch()
        self.modules: list[ModuleInfo] = []
        self.by_name: dict[str, ModuleInfo] = {}
        self.elves: dict[str, ElfFile] = {}
        self.set_exports: dict[str, str] = {}  # symbol -> module of the set exporting it
        self.closures: dict[str, set[str]] = {}
        self.edges: dict[tuple[str, str, str], Edge] = {}
        self.nodes: dict[str, str] = {}

    def run(self, paths: Iterable[str | os.PathLike]) -> Report:
        self._load(paths)
        self._decide_per_object()
        for m in self.modules:
            undef_sites, klp_relocs = _sites(self.elves[m.name])
            self._undefined_references(m, undef_sites)
            self._klp_references(m, klp_relocs)
            self._depends(m)
        self._add_nodes()
        self._add_triggers()
        self._add_object_deps()
        edge_list = list(self.edges.values())
        cycles = _cycles(edge_list)
        self._mark_cycles(cycles)
        pins = [
            {"livepatch": e.src, "module": e.dst, "symbols": e.symbols, "via": e.via}
            for e in edge_list
            if e.kind == NEEDS and e.category == CAT_B
        ]
        release = getattr(self.db, "meta", {}).get("release") if self.db is not None else None
        return Report(self.modules, self.nodes, edge_list, cycles, pins, release)

    # ----------------------------------------------------------------------- loading
    def _load(self, paths: Iterable[str | os.PathLike]) -> None:
        """Read every module first: a module may use an export of one given after it."""
        for p in paths:
            self._load_one(p)
        if self.object_map:
            raise InputError(
                f"--object names module(s) not given: {', '.join(sorted(self.object_map))}"
            )
        for m in self.modules:
            for s in m.exports:
                self.set_exports.setdefault(s, m.name)

    def _load_one(self, path: str | os.PathLike) -> None:
        elf = ElfFile.read(path)
        mi = read_modinfo(elf)
        name = module_name(path, mi)
        if name in self.by_name:
            raise InputError(f"module {name} given twice", path=path)
        po = read_patched_objects(elf)
        objs, source, contradiction = self._patched_objects(name, po)
        # what it patches, --object or calling klp_enable_patch() make it a livepatch even
        # without livepatch=Y (the kernel then refuses it: check says so)
        is_lp = bool(mi is not None and mi.is_livepatch) or po.registers or source != "none"
        info = ModuleInfo(
            name,
            str(path),
            is_lp,
            objs,
            source,
            False,
            _exports(elf),
            mi.depends if mi is not None else [],
        )
        if is_lp and not objs:
            info.notes.append("no klp_object names found: pass --object MOD=OBJ")
        if contradiction:
            info.references.append(
                Reference(
                    name,
                    "objects",
                    "--object",
                    CAT_OBJECTS,
                    None,
                    WARN if self.force else ERROR,
                    contradiction + (" (--force)" if self.force else ""),
                    "drop --object (the module's own objects are what the kernel reads), or "
                    "--force to analyse it as said",
                )
            )
        self.registers[name] = po.registers or source == "--object"
        self.modules.append(info)
        self.by_name[name] = info
        self.elves[name] = elf

    def _patched_objects(self, name: str, po) -> tuple[list[str], str, str | None]:
        """(objects, where from, contradiction): ``--object`` wins over the module's own
        objects (its klp_patch, else its klp_object entries and annotations), which a
        module may lack or which may be what the user wants to question; naming one the
        module does not patch contradicts it (the kernel reads its klp_patch)."""
        own, own_source = po.effective()
        if name not in self.object_map:
            return own, own_source, None
        given = self.object_map.pop(name)
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

    # -------------------------------------------------------------------- per-object
    def _decide_per_object(self) -> None:
        """Mark the per-object livepatch modules: those the patched module's load loads.
        Nothing in a module says so (a lone livepatch for cdrom and cdrom's part of a
        split livepatch look alike), so the set or the user decides.  A split set is one
        patch cut by object: each module patches a different object.  Two livepatch
        modules patching the same object are stacked (a fix and a later fix on top, each
        its own klp_patch and klp_enable_patch()): separate livepatches, no split set."""
        lps = [m for m in self.modules if m.livepatch]
        by_object: dict[str, list[str]] = {}
        for m in lps:
            for o in m.objects:
                by_object.setdefault(o, []).append(m.name)
        stacked = {o: names for o, names in by_object.items() if len(names) > 1}
        single = [m.name for m in lps if len(m.objects) == 1]
        for m in self.modules:
            m.per_object, m.per_object_reason = self._per_object(m, single, stacked)

    def _per_object(
        self, m: ModuleInfo, single: list[str], stacked: dict[str, list[str]]
    ) -> tuple[bool, str]:
        if not m.livepatch:
            return False, "not a livepatch module"
        if len(m.objects) != 1 or m.objects[0] == "vmlinux":
            return False, (
                f"patches {', '.join(m.objects) or 'no object'}: a per-object "
                "livepatch patches exactly one module"
            )
        obj = m.objects[0]
        if self.per_object is True:
            return True, f"--per-object: loading {obj} loads {m.name}"
        if self.per_object is False:
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

    # ------------------------------------------------------------ undefined symbols
    def _undefined_references(self, m: ModuleInfo, undef_sites: dict[str, list[str]]) -> None:
        """One reference per undefined symbol (all its sites), and a ``needs`` edge to
        the module the loader must load to resolve it.  An export of another module of
        the set comes first: modpost resolved it there, and C/D are about the set."""
        clf = Classifier(self.db, m.objects, kernel_version=self.kver)
        for name, weak in _undefined(self.elves[m.name]):
            sites = undef_sites.get(name, [])
            owner = self.set_exports.get(name)
            if owner is not None and owner != m.name:
                ref, dst = self._set_export(m, name, owner, sites)
            else:
                d = clf.classify(name, weak=weak)
                step = self._BY_POLICY.get(d.category, _Analysis._unresolved)
                ref, dst = step(self, m, name, d, sites)
                ref.policy = str(d.category)
            m.references.append(ref)
            if dst is not None:
                self._add_edge(
                    m.name, dst, NEEDS, ref.category, ref.verdict, name, ref.reason, "symbols"
                )

    # Each step below: (the reference, the module the loader loads for it or None).
    def _set_export(
        self, m: ModuleInfo, name: str, owner: str, sites: list[str]
    ) -> tuple[Reference, str]:
        cat, verdict, reason, fix = self._needs_set_module(m, self.by_name[owner])
        return Reference(
            m.name,
            "undefined",
            name,
            cat,
            owner,
            verdict,
            reason,
            fix,
            sites=sites,
            policy="set-export",
        ), owner

    def _vmlinux_export(self, m: ModuleInfo, name: str, d, sites: list[str]):
        """A: vmlinux is always there; nothing is pinned."""
        return Reference(
            m.name,
            "undefined",
            name,
            CAT_A,
            "vmlinux",
            OK,
            "export of vmlinux: a normal reference",
            sites=sites,
        ), "vmlinux"

    def _patched_export(self, m: ModuleInfo, name: str, d, sites: list[str]):
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
        return Reference(
            m.name,
            "undefined",
            name,
            CAT_B,
            obj,
            ERROR,
            reason,
            FIX_CONVERT.format(path=m.path, obj=obj, sym=name),
            sites=sites,
        ), obj

    def _other_export(self, m: ModuleInfo, name: str, d, sites: list[str]):
        """Export of a module neither patched nor in the set: loading the livepatch
        loads and pins it, harmless only when a patched object needs it anyway."""
        obj = d.exported_by or d.object
        if self._needed_by_objects(m, obj):
            return Reference(
                m.name,
                "undefined",
                name,
                CAT_OTHER,
                obj,
                OK,
                f"export of {obj}, which a patched object needs anyway",
                sites=sites,
            ), obj
        return Reference(
            m.name,
            "undefined",
            name,
            CAT_OTHER,
            obj,
            WARN,
            f"export of {obj}, which the livepatch does not patch and "
            "no patched object needs: loading the livepatch loads "
            f"and pins {obj}",
            FIX_OTHER.format(obj=obj),
            sites=sites,
        ), obj

    def _unconverted_local(self, m: ModuleInfo, name: str, d, sites: list[str]):
        """Not exported: only a livepatch relocation can reach it; as a plain undefined
        symbol the module does not even load (no edge: it resolves nowhere)."""
        return Reference(
            m.name,
            "undefined",
            name,
            CAT_LOCAL,
            d.object,
            ERROR,
            f"{d.reason}; still a plain undefined symbol: "
            f"the module loader refuses the module (Unknown symbol {name})",
            FIX_CONVERT.format(path=m.path, obj=d.object, sym=name),
            sites=sites,
        ), None

    def _internal(self, m: ModuleInfo, name: str, d, sites: list[str]):
        """The livepatch core's own symbols (klp_enable_patch...): always fine."""
        return Reference(m.name, "undefined", name, CAT_A, None, OK, d.reason, sites=sites), None

    def _unresolved(self, m: ModuleInfo, name: str, d, sites: list[str]):
        return Reference(
            m.name,
            "undefined",
            name,
            CAT_UNRESOLVED,
            d.object,
            ERROR,
            d.reason,
            "define the symbol in the livepatch, or choose it "
            "with klpkit convert --map NAME=OBJ,POS",
            sites=sites,
        ), None

    _BY_POLICY = {
        Category.A: _vmlinux_export,
        Category.B: _patched_export,
        Category.CD: _other_export,
        Category.LOCAL: _unconverted_local,
        Category.INTERNAL: _internal,
    }

    # ------------------------------------------------------------ modules of the set
    def _needs_set_module(self, m: ModuleInfo, other: ModuleInfo) -> tuple[str, str, str, str]:
        """(category, verdict, reason, fix) of ``m`` needing ``other``, given in the set."""
        if not other.livepatch:
            return self._needs_given_module(m, other)
        if "vmlinux" in other.objects and "vmlinux" not in m.objects:
            return (
                CAT_C,
                WARN,
                f"uses an export of {other.name}, the livepatch for vmlinux: works, but "
                f"couples the set ({other.name} must stay loaded while {m.name} is)",
                FIX_SHADOW,
            )
        return self._livepatch_to_livepatch(m, other)

    def _needs_given_module(self, m: ModuleInfo, other: ModuleInfo) -> tuple[str, str, str, str]:
        needed = self._needed_by_objects(m, other.name)
        return (
            CAT_OTHER,
            OK if needed else WARN,
            f"export of {other.name} (given in the set, not a livepatch)"
            + ("" if needed else ": no patched object needs it"),
            "" if needed else FIX_OTHER.format(obj=other.name),
        )

    def _livepatch_to_livepatch(
        self, m: ModuleInfo, other: ModuleInfo
    ) -> tuple[str, str, str, str]:
        """D: fine only where it mirrors the patched objects' own dependencies, which
        the loader enforces anyway."""
        mods = [o for o in m.objects if o != "vmlinux"]
        theirs = [o for o in other.objects if o != "vmlinux"]
        mirrored = [(x, y) for x in mods for y in theirs if y in self._closure(x)]
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

    def _needed_by_objects(self, m: ModuleInfo, obj: str) -> bool:
        """Does a patched module of ``m`` itself need ``obj`` (directly or not)?  Then
        the livepatch loading it costs nothing: it is loaded whenever it matters."""
        return any(obj == "vmlinux" or obj in self._closure(o) for o in m.objects if o != "vmlinux")

    def _closure(self, obj: str) -> set[str]:
        return _closure(self.db, obj, self.closures)

    # ---------------------------------------------------------- livepatch relocations
    def _klp_references(self, m: ModuleInfo, klp_relocs: list[tuple[str, str, str, str]]) -> None:
        """One reference per (gate, symbol); a ``klp`` edge to the gate, drawn but no
        load dependency (the livepatch core applies it when the gate loads).  The
        verdicts are check's (:func:`klpkit.check.klp_rules.reference_findings`)."""
        grouped: dict[tuple[str, str], list[str]] = {}
        for _sec, gate, site, sname in klp_relocs:
            grouped.setdefault((gate, sname), []).append(site)
        judged = self._judge(m) if grouped else {}
        for (gate, sname), sites in grouped.items():
            ref = self._klp_reference(m, gate, sname, sites, judged.get((gate, sname), []))
            m.references.append(ref)
            if gate:
                self._add_edge(m.name, gate, KLP, ref.category, ref.verdict, ref.symbol, ref.reason)

    def _judge(self, m: ModuleInfo) -> dict:
        """check's findings per (gate, symbol) of ``m``, for the objects deps works with
        (``--object`` included) on the database's kernel."""
        ctx = Context(
            path=m.path,
            data=b"",
            db=self.db,
            kver=self.kver,
            elf=self.elves[m.name],
            name=m.name,
            given=(m.objects or None, self.registers.get(m.name, False)),
        )
        return reference_findings(ctx)

    def _klp_reference(
        self, m: ModuleInfo, gate: str, sname: str, sites: list[str], findings: list
    ) -> Reference:
        """klp-ok, or klp-wrong-object when check finds an error on the way (warnings:
        klp-ok, verdict warn).  What happens later (a target's reload) is check's alone."""
        parsed = parse_klp_symbol_name(sname, self.kver)
        obj = parsed.object if parsed is not None else None
        now = [f for f in findings if f.stage is not Stage.LATER]
        errors = [f for f in now if f.severity is Severity.ERROR]
        if errors:
            return Reference(
                m.name,
                "klp",
                sname,
                CAT_KLP_WRONG,
                obj,
                ERROR,
                f"{errors[0].rule}: {errors[0].message}",
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
        return Reference(
            m.name,
            "klp",
            sname,
            CAT_KLP_OK,
            obj,
            WARN if warnings else OK,
            reason,
            gate=gate,
            sites=sites,
            policy=policy,
        )

    # ---------------------------------------------------------------------- depends=
    def _depends(self, m: ModuleInfo) -> None:
        """``depends=`` (what modpost recorded) is the loader's and depmod's view: it
        joins the edge the symbols made, or makes one of its own."""
        for dep in m.depends:
            cat, verdict, reason = self._depends_verdict(m, dep)
            e = self.edges.get((m.name, dep, NEEDS))
            if e is None:
                self._add_edge(m.name, dep, NEEDS, cat, verdict, None, reason, "depends=")
            elif "depends=" not in e.via:
                e.via.append("depends=")

    def _depends_verdict(self, m: ModuleInfo, dep: str) -> tuple[str, str, str]:
        if dep in self.by_name and dep != m.name:
            cat, verdict, reason, _fix = self._needs_set_module(m, self.by_name[dep])
            return cat, verdict, reason
        if dep in m.objects:
            return self._depends_on_patched(m, dep)
        return CAT_OTHER, OK if self._needed_by_objects(m, dep) else WARN, f"depends={dep}"

    def _depends_on_patched(self, m: ModuleInfo, dep: str) -> tuple[str, str, str]:
        """B through ``depends=``: a pin even when no symbol explains it, so it gets a
        reference of its own then."""
        reason = f"depends={dep} names a patched module: {dep} is pinned while {m.name} is loaded"
        if (m.name, dep, NEEDS) not in self.edges:
            m.references.append(
                Reference(
                    m.name,
                    "depends",
                    f"depends={dep}",
                    CAT_B,
                    dep,
                    ERROR,
                    reason,
                    FIX_CONVERT.format(path=m.path, obj=dep, sym="..."),
                )
            )
        return CAT_B, ERROR, reason

    # ------------------------------------------------------------------------- graph
    def _add_edge(
        self,
        src: str,
        dst: str,
        kind: str,
        category: str | None = None,
        verdict: str = OK,
        symbol: str | None = None,
        reason: str = "",
        via: str | None = None,
    ) -> Edge:
        """Add or merge into the (src, dst, kind) edge; the worst verdict wins."""
        e = self.edges.get((src, dst, kind))
        if e is None:
            e = self.edges[(src, dst, kind)] = Edge(src, dst, kind, category, verdict, [], reason)
        elif _RANK[verdict] > _RANK[e.verdict]:
            e.verdict, e.category, e.reason = verdict, category, reason
        if symbol and symbol not in e.symbols:
            e.symbols.append(symbol)
        if via and via not in e.via:
            e.via.append(via)
        return e

    def _add_nodes(self) -> None:
        """The modules of the set, their patched objects, and whatever an edge reaches.
        A non-livepatch module of the set that a livepatch patches is a patched node."""
        patched = {o for m in self.modules for o in m.objects}
        for m in self.modules:
            self.nodes[m.name] = LIVEPATCH if m.livepatch else _node_kind(m.name, patched)
        for m in self.modules:
            for o in m.objects:
                self.nodes.setdefault(o, _node_kind(o, patched))
        for e in self.edges.values():
            self.nodes.setdefault(e.dst, _node_kind(e.dst, patched))

    def _add_triggers(self) -> None:
        """A per-object livepatch is loaded by its patched module's load: the edge that
        closes a B pin into a load recursion.  A normal livepatch has none."""
        for m in self.modules:
            if m.per_object:
                self._add_edge(
                    m.objects[0],
                    m.name,
                    TRIGGERS,
                    None,
                    OK,
                    None,
                    f"loading {m.objects[0]} loads its livepatch {m.name}",
                )

    def _add_object_deps(self) -> None:
        """The patched objects' own dependencies (from the database): what a D edge
        must mirror, and part of the load order a cycle may run through."""
        for obj in sorted(o for o in self.nodes if self.nodes[o] == PATCHED):
            for d in _direct_deps(self.db, obj):
                if d in self.nodes:
                    self._add_edge(obj, d, OBJECT_DEP, None, OK, None, f"{obj} depends on {d}")

    def _mark_cycles(self, cycles: list[dict]) -> None:
        """Every edge on a cycle is an error: any of them, removed, breaks it."""
        for cyc in cycles:
            path = cyc["path"]
            for a, b in zip(path, path[1:], strict=False):
                e = next(
                    (self.edges[(a, b, k)] for k in _LOAD_KINDS if (a, b, k) in self.edges), None
                )
                if e is not None:
                    e.verdict = ERROR
                    if "cycle" not in e.reason:
                        e.reason += ("; " if e.reason else "") + "on a load cycle"


# edges the loader follows (in this order of preference when a cycle step has several)
_LOAD_KINDS = (NEEDS, TRIGGERS, OBJECT_DEP)


def _node_kind(name: str, patched: set[str]) -> str:
    return VMLINUX if name == "vmlinux" else PATCHED if name in patched else OTHER


def _undefined(elf: ElfFile) -> list[tuple[str, bool]]:
    """(name, weak) of each undefined symbol, once, in symbol table order (the first
    symbol of a name decides whether it is weak)."""
    out: dict[str, bool] = {}
    for sym in elf.symtab.symbols[1:] if elf.symtab else []:
        if sym.shndx == C.SHN_UNDEF and sym.name and sym.name not in out:
            out[sym.name] = sym.bind == C.STB_WEAK
    return list(out.items())


def _cycles(edges: list[Edge]) -> list[dict]:
    """Elementary cycles through needs/triggers/object-dep edges (small graphs), each
    with its steps and why the loader cannot get out of it."""
    adj: dict[str, list[str]] = {}
    kinds: dict[tuple[str, str], str] = {}
    for e in edges:
        if e.kind in _LOAD_KINDS:
            adj.setdefault(e.src, [])
            if e.dst not in adj[e.src]:
                adj[e.src].append(e.dst)
            kinds.setdefault((e.src, e.dst), e.kind)
    starts = {e.src for e in edges if e.kind == NEEDS}
    return [_describe_cycle(cyc, kinds) for cyc in _elementary_cycles(adj, starts)]


def _elementary_cycles(adj: dict[str, list[str]], starts: set[str]) -> list[list[str]]:
    """Each cycle once (as a closed path), rotated to begin at a module with a 'needs'
    edge: it reads best from the livepatch, lp -> target -> lp."""
    found: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for s in sorted(adj):
        for body in _closed_paths(adj, s, s, [s], {s}):
            i = body.index(min(body, key=lambda n: (n not in starts, n)))
            key = tuple(body[i:] + body[:i])
            if key not in seen:
                seen.add(key)
                found.append([*key, key[0]])
    return found


def _closed_paths(
    adj: dict[str, list[str]], start: str, node: str, path: list[str], on_path: set[str]
):
    """Paths from ``start`` back to it through nodes greater than ``start`` (each cycle
    is found from its least node only), at most 12 long."""
    for nxt in adj.get(node, []):
        if nxt == start:
            yield path
        elif nxt not in on_path and nxt > start and len(path) < 12:
            on_path.add(nxt)
            yield from _closed_paths(adj, start, nxt, path + [nxt], on_path)
            on_path.discard(nxt)


def _describe_cycle(cyc: list[str], kinds: dict[tuple[str, str], str]) -> dict:
    pairs = list(zip(cyc, cyc[1:], strict=False))
    steps = [f"{a} -{kinds[(a, b)]}-> {b}" for a, b in pairs]
    if any(kinds[p] == TRIGGERS for p in pairs):
        reason = (
            "load recursion: a patched module's load triggers its livepatch, which "
            "needs (directly or not) that module"
        )
    else:
        reason = "dependency cycle: the module loader can load none of these first"
    return {"path": cyc, "steps": steps, "reason": reason, "verdict": ERROR}


# --------------------------------------------------------------------------- graphviz
NODE_COLOURS = {VMLINUX: "#9ecae1", PATCHED: "#fdd0a2", LIVEPATCH: "#a1d99b", OTHER: "#d9d9d9"}
CATEGORY_COLOURS = {
    CAT_A: "#3182bd",
    CAT_B: "#e6550d",
    CAT_C: "#756bb1",
    CAT_D: "#31a354",
    CAT_OTHER: "#636363",
    CAT_KLP_OK: "#31a354",
    CAT_KLP_WRONG: "red",
}


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(report: Report) -> str:
    """Graphviz DOT: nodes coloured by kind, edges by category, bad edges red."""
    lines = [
        "digraph klpkit_deps {",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    lines.append(f"  label={_q('klpkit deps: verdict ' + report.verdict)}; labelloc=t;")
    for name, kind in report.nodes.items():
        label = _q(name)[:-1] + (f"\\n({kind})" if kind != name else "") + '"'
        lines.append(
            f"  {_q(name)} [kind={_q(kind)}, fillcolor={_q(NODE_COLOURS[kind])}, label={label}];"
        )
    for e in report.edges:
        attrs = {"kind": e.kind}
        if e.kind == NEEDS:
            label = e.category or ""
            if e.symbols:
                shown = ", ".join(e.symbols[:3]) + (", ..." if len(e.symbols) > 3 else "")
                label += f": {shown}"
            if "depends=" in e.via and not e.symbols:
                label += " (depends=)"
            attrs.update(
                category=e.category or "",
                label=label,
                color=CATEGORY_COLOURS.get(e.category, "black"),
            )
        elif e.kind == TRIGGERS:
            attrs.update(label="load triggers", style="dashed", color="#e6550d")
        elif e.kind == OBJECT_DEP:
            attrs.update(label="needs (object)", style="dotted", color="#636363")
        else:
            attrs.update(
                category=e.category or "",
                label="klp reloc",
                style="dashed",
                arrowhead="empty",
                color=CATEGORY_COLOURS.get(e.category, "black"),
            )
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
        raise InputError(
            f"--graph: unknown extension {ext!r} (use .dot, .gv, .png, .svg, .pdf)", path=path
        )
    dot_path = path.with_suffix(".dot")
    write_atomic(dot_path, dot_text)
    exe = shutil.which("dot")
    if exe is None:
        return (
            dot_path,
            None,
            (
                f"Graphviz 'dot' is not installed (Debian: apt-get install "
                f"graphviz): wrote only {dot_path}"
            ),
        )
    r = subprocess.run([exe, f"-T{fmt}", str(dot_path)], capture_output=True)
    if r.returncode or not r.stdout:
        raise InputError(
            f"dot -T{fmt} failed: {r.stderr.decode(errors='replace').strip()}", path=dot_path
        )
    write_atomic(path, r.stdout)
    return dot_path, path, None

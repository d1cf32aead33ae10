"""The conversion plan: what happens to every relocation of a livepatch module, and why.

This module *decides*; :mod:`klpkit.convert.apply` edits.  Deciding is pure: it reads
the ELF model and asks a symbol source (``lookup(name, object=None) ->
list[SymbolEntry]`` and ``module_depends(obj)``, which :class:`klpkit.symbols.SymbolDB`
provides), it never writes anything.  ``klpkit deps`` and ``klpkit check`` reuse the
same API instead of re-deriving the policy:

    from klpkit.convert.plan import Classifier, make_plan, PlanOptions

    clf = Classifier(db, patched=["cdrom"])          # one symbol at a time
    d = clf.classify("cdrom_check_events")           # -> SymbolDecision
    d.category, d.action, d.object, d.sympos, d.gate, d.klp_symbol, d.reason

    plan = make_plan(elf, db, PlanOptions(objects=["cdrom"]))   # a whole module
    plan.ok, plan.errors, plan.warnings
    plan.relocations   # list[PlannedReloc], one per relocation of the input, file order
    plan.symbols       # {undefined symbol name: SymbolDecision}
    plan.to_json()

Policy (the categories A-D Petr Mladek named in the klp-convert review):

========  ==========================================================  ===========
category  symbol                                                       action
========  ==========================================================  ===========
A         exported by vmlinux                                          keep
B         exported by a module this livepatch patches                  convert
                                                                       (keep with
                                                                       keep_exports)
local     not exported, in vmlinux or in a patched module              convert
C-D       exported by a module the livepatch does not patch (or by     keep, reported
          another livepatch): a normal reference makes a dependency
error     found nowhere, or ambiguous with no way to choose            error
========  ==========================================================  ===========

plus the categories of relocations that are not foreign references: ``internal``
(symbol defined in the livepatch, or none), ``klp`` (already a livepatch relocation),
``annotation`` (an annotation record, removed with its section) and ``unchecked``
(no symbol database: klp-convert's minimal mode leaves such references alone).

Choosing among candidates: a :class:`~klpkit.convert.annotations.Choice` from ``--map``
/ a map file (first), the v7 ``.klp.module_relocs.<obj>`` annotations, or the minimal
``.klp.sym.rela.*`` intermediate names; else automatic resolution, restricted to the
objects the livepatch patches (a static of a patched module wins over vmlinux: the
livepatch's code is a copy of that module's code), then vmlinux.

Gating object (``.klp.rela.<gate>.<section>``), by the kernel's rules in
:mod:`klpkit.kernel.klp` (never restated here): ``vmlinux`` for every vmlinux symbol,
even from code that patches a module (since 5.8 the module loader applies such sections
itself and the kernel refuses vmlinux symbols in a module-gated section); the patched
module for its own symbols; for a symbol of an unpatched module D (chosen explicitly)
the patched module that depends on D.  A gate the kernel would never apply (an object
the livepatch does not patch) is an error.

The patched objects are the module's own (:func:`klpkit.convert.objects.read_patched_objects`:
``klp_patch.objs``, empty-funcs objects included, else the ``klp_object`` entries and the
objects the annotations name); ``--object`` naming an object the module does not patch
contradicts the module and is an error unless ``force``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from klpkit.convert.annotations import (
    Choice,
    parse_intermediate,
    read_module_relocs,
    valid_object_name,
)
from klpkit.convert.categories import Category
from klpkit.convert.objects import FROM_NONE, read_patched_objects
from klpkit.elf import ElfFile
from klpkit.elf import constants as C
from klpkit.elf.reloc_types import MACHINE_NAMES, machine_name, reloc_type_name
from klpkit.errors import KlpkitError
from klpkit.kernel import klp
from klpkit.kernel.kver import DEFAULT_KERNEL_VERSION, format_version, kernel_version
from klpkit.kernel.livepatch import (
    is_klp_rela,
    is_klp_symbol,
    klp_rela_section_name,
    klp_symbol_name,
    ksym_name_max,
    meant_as_klp_rela,
    module_name_from_path,
)
from klpkit.symbols.db import SymbolEntry
from klpkit.symbols.protocol import SymbolLookup, known_depends


class Action(enum.StrEnum):
    CONVERT = "convert"  # moved to a .klp.rela section, symbol renamed .klp.sym...
    KEEP = "keep"  # left as a normal relocation
    REMOVE = "remove"  # removed (annotation records)
    ERROR = "error"  # cannot be converted: the plan fails


# The kernel's rules on where a livepatch relocation can be applied (re-exported: they
# lived here before klpkit.kernel.klp).
SPECIAL_SECTIONS = klp.SPECIAL_SECTIONS
VMLINUX_GATED_ALLOWED = klp.VMLINUX_GATED_ALLOWED
REASON_INIT, REASON_NOALLOC, REASON_REL = klp.REASON_INIT, klp.REASON_NOALLOC, klp.REASON_REL


@dataclass(frozen=True)
class Candidate:
    """One occurrence of a name in the kernel, as offered in an ambiguity message."""

    object: str
    bind: str
    sympos: int
    count: int
    exported: bool

    def __str__(self) -> str:
        exp = ", exported" if self.exported else ""
        return f"{self.object} ({self.bind}{exp}, sympos {self.sympos})"

    def as_dict(self) -> dict:
        return {
            "object": self.object,
            "bind": self.bind,
            "sympos": self.sympos,
            "count": self.count,
            "exported": self.exported,
        }


@dataclass(frozen=True)
class Conversion:
    """A converted symbol: ``.klp.sym.<object>.<symbol>,<sympos>``, its relocations in
    ``.klp.rela.<gate>.<section>``."""

    object: str
    symbol: str
    sympos: int
    gate: str


@dataclass
class SymbolDecision:
    """What happens to one undefined symbol of the livepatch (and all its relocations)."""

    name: str  # name in the livepatch (what the compiler emitted)
    category: Category
    action: Action
    reason: str
    object: str | None = None  # object defining the symbol, when known
    symbol: str | None = None  # kernel symbol name (differs for intermediates)
    sympos: int | None = None
    gate: str | None = None  # object whose loading applies the klp relocations
    type: str | None = None  # 'func' / 'object' ... for the renamed symbol
    source: str = "database"  # database | --map ... | annotation | intermediate
    exported_by: str | None = None  # the exporter, for kept normal references
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def conversion(self) -> Conversion | None:
        """Where a converted symbol's relocations go; None unless the action is CONVERT
        (which always sets object, symbol, sympos and gate)."""
        if self.action is not Action.CONVERT:
            return None
        if self.object is None or self.symbol is None or self.sympos is None or self.gate is None:
            return None
        return Conversion(self.object, self.symbol, self.sympos, self.gate)

    @property
    def klp_symbol(self) -> str | None:
        c = self.conversion
        return klp_symbol_name(c.object, c.symbol, c.sympos) if c is not None else None

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "category": str(self.category),
            "action": str(self.action),
            "object": self.object,
            "symbol": self.symbol,
            "sympos": self.sympos,
            "gate": self.gate,
            "klp_symbol": self.klp_symbol,
            "type": self.type,
            "source": self.source,
            "exported_by": self.exported_by,
            "reason": self.reason,
            "candidates": [c.as_dict() for c in self.candidates],
        }


@dataclass(slots=True, eq=False)
class PlannedReloc:
    """One relocation of the input and its fate."""

    section: str  # relocation section it is in
    target: str  # section it patches
    offset: int
    type: int
    type_name: str
    symbol: str  # symbol name in the input ('' for none)
    category: Category
    action: Action
    reason: str
    new_symbol: str | None = None
    new_section: str | None = None
    # handles for apply.py (not part of the serialised plan)
    relsec: object = None
    reloc: object = None

    @property
    def site(self) -> str:
        return f"{self.target}+{self.offset:#x}"

    def as_dict(self) -> dict:
        return {
            "section": self.section,
            "target": self.target,
            "offset": self.offset,
            "type": self.type_name,
            "symbol": self.symbol,
            "category": str(self.category),
            "action": str(self.action),
            "new_symbol": self.new_symbol,
            "new_section": self.new_section,
            "reason": self.reason,
        }


@dataclass
class PlanOptions:
    objects: list[str] = field(default_factory=list)  # --object (else klp_object names)
    choices: list[Choice] = field(default_factory=list)  # --map / --map-file, in priority order
    keep_exports: bool = False
    kernel_version: tuple[int, int] | None = None  # default: vermagic, DB, else 6.1
    force: bool = False  # --force: an --object that contradicts the module is a warning


@dataclass
class Plan:
    module: str
    objects: list[str]
    objects_source: str
    kernel_version: tuple[int, int]
    relocations: list[PlannedReloc]
    symbols: dict[str, SymbolDecision]
    errors: list[str]
    warnings: list[str]
    annotation_sections: list[str]
    annotation_symbols: set[str]
    drop_versions: list[str]
    drop_depends: list[str]
    depends: list[str]
    is_livepatch: bool

    @property
    def ok(self) -> bool:
        return not self.errors

    def changed(self) -> list[PlannedReloc]:
        return [r for r in self.relocations if r.action in (Action.CONVERT, Action.REMOVE)]

    def reported(self) -> list[PlannedReloc]:
        """Relocations worth showing: changed, errors, and kept C-D dependencies."""
        return [
            r
            for r in self.relocations
            if r.action is not Action.KEEP or r.category in (Category.CD, Category.B)
        ]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.relocations:
            key = f"{r.category}/{r.action}"
            out[key] = out.get(key, 0) + 1
        return out

    def to_json(self) -> dict:
        return {
            "module": self.module,
            "objects": self.objects,
            "objects_source": self.objects_source,
            "kernel_version": ".".join(map(str, self.kernel_version)),
            "ok": self.ok,
            "errors": self.errors,
            "warnings": self.warnings,
            "symbols": [d.as_dict() for d in self.symbols.values()],
            "relocations": [r.as_dict() for r in self.relocations],
            "annotation_sections": self.annotation_sections,
            "drop_versions": self.drop_versions,
            "drop_depends": self.drop_depends,
            "counts": self.counts(),
        }


# --------------------------------------------------------------------------- classifier
_TYPES = {"func", "object", "tls", "notype"}


def _cands(entries) -> list[Candidate]:
    return [Candidate(e.object, e.bind, e.sympos, e.count, e.exported) for e in entries]


def _how_to_choose(name: str) -> str:
    return (
        f"choose with --map {name}=OBJ,POS (or a --map-file line), "
        f"KLP_MODULE_RELOC(OBJ) {{ KLP_SYMPOS({name}, POS) }} or "
        f"KLP_RELOC_SYMBOL_POS(PATCHED_OBJ, OBJ, {name}, POS)"
    )


class Classifier:
    """The dependency policy for one livepatch, one symbol at a time.

    ``db``: ``lookup(name, object=None) -> list[SymbolEntry]`` and
    ``module_depends(obj) -> list[str]`` (a :class:`klpkit.symbols.SymbolDB`), or None
    (no database: only explicit choices and intermediates are converted, the rest is
    ``unchecked``).  ``patched``: the objects the livepatch patches.
    ``choices``: explicit answers, first wins per name.  ``kernel_version``: the kernel
    whose gating rules apply (:mod:`klpkit.kernel.klp`).
    """

    def __init__(
        self,
        db: SymbolLookup | None,
        patched: Iterable[str],
        *,
        keep_exports: bool = False,
        choices: Iterable[Choice] = (),
        kernel_version: tuple[int, int] = DEFAULT_KERNEL_VERSION,
    ):
        self.db = db
        self.patched = list(dict.fromkeys(patched))
        self.patched_modules = [o for o in self.patched if o != "vmlinux"]
        self.keep_exports = keep_exports
        self.kver = kernel_version
        self.choices: dict[str, Choice] = {}
        for c in choices:
            self.choices.setdefault(c.name, c)

    # -- public -------------------------------------------------------------
    def classify(self, name: str, *, weak: bool = False) -> SymbolDecision:
        inter = parse_intermediate(name)
        if isinstance(inter, str):
            return SymbolDecision(name, Category.ERROR, Action.ERROR, inter, source="intermediate")
        if inter is not None:
            return self._intermediate(name, inter)
        choice = self.choices.get(name)
        if choice is not None:
            return self._chosen(name, choice)
        if self.db is None:
            return SymbolDecision(
                name,
                Category.UNCHECKED,
                Action.KEEP,
                "no symbol database: left as a normal reference",
            )
        return self._automatic(name, weak)

    # -- helpers ------------------------------------------------------------
    def _gate(self, obj: str) -> tuple[str | None, str | None]:
        """(gate, problem) for a symbol defined in ``obj``: where the kernel will apply
        its relocations (klp.gate_for_vmlinux, klp.dependency_problem)."""
        if obj == klp.VMLINUX:
            gate = klp.gate_for_vmlinux(self.patched, self.kver)
            if gate is None:
                return None, (
                    f"before {format_version(klp.VMLINUX_RELOCS_AT_LOAD)} only a "
                    "vmlinux klp_object or a patched module applies relocations to "
                    "vmlinux symbols, and this livepatch has neither"
                )
            return gate, None
        if obj in self.patched_modules:
            return obj, None
        problems = {
            pm: klp.dependency_problem(pm, obj, known_depends(self.db, pm))
            for pm in self.patched_modules
        }
        users = [pm for pm, problem in problems.items() if problem is None]
        if users:
            return users[0], None
        if len(self.patched_modules) == 1:
            return self.patched_modules[0], problems[self.patched_modules[0]]
        return None, (
            f"no patched module depends on '{obj}', so nothing gates a livepatch "
            f"relocation to its symbols (patched: "
            f"{', '.join(self.patched) or 'none'})"
        )

    def _converted(self, name, entry, category, reason, source, sympos=None):
        gate, problem = self._gate(entry.object)
        if gate is None:
            return SymbolDecision(
                name,
                Category.ERROR,
                Action.ERROR,
                f"{name}: {problem}",
                object=entry.object,
                symbol=entry.name,
                source=source,
            )
        d = SymbolDecision(
            name,
            category,
            Action.CONVERT,
            reason,
            object=entry.object,
            symbol=entry.name,
            sympos=entry.klp_sympos if sympos is None else sympos,
            gate=gate,
            type=entry.type if entry.type in _TYPES else None,
            source=source,
        )
        if problem:
            d.reason += f" (warning: {problem})"
        return d

    def _by_entry(self, name, entry, source, sympos=None, via=""):
        """Apply the policy to one chosen kernel symbol."""
        if entry.exported:
            if entry.object == "vmlinux":
                return SymbolDecision(
                    name,
                    Category.A,
                    Action.KEEP,
                    f"exported by vmlinux{via}: a normal reference",
                    object="vmlinux",
                    symbol=entry.name,
                    source=source,
                    exported_by="vmlinux",
                )
            if entry.object in self.patched_modules:
                if self.keep_exports:
                    return SymbolDecision(
                        name,
                        Category.B,
                        Action.KEEP,
                        f"exported by patched module {entry.object}{via}; kept normal by "
                        f"--keep-exports: the livepatch depends on {entry.object}",
                        object=entry.object,
                        symbol=entry.name,
                        source=source,
                        exported_by=entry.object,
                    )
                return self._converted(
                    name,
                    entry,
                    Category.B,
                    f"exported by patched module {entry.object}{via}: converted so the "
                    f"livepatch takes no reference on {entry.object}",
                    source,
                    sympos,
                )
            return SymbolDecision(
                name,
                Category.CD,
                Action.KEEP,
                f"exported by {entry.object}{via}, which this livepatch does not patch: "
                f"a normal reference; the livepatch depends on {entry.object}",
                object=entry.object,
                symbol=entry.name,
                source=source,
                exported_by=entry.object,
            )
        where = (
            "vmlinux"
            if entry.object == "vmlinux"
            else (
                f"patched module {entry.object}"
                if entry.object in self.patched_modules
                else f"module {entry.object}"
            )
        )
        pos = entry.klp_sympos if sympos is None else sympos
        return self._converted(
            name,
            entry,
            Category.LOCAL,
            f"not exported ({entry.bind}) in {where}{via}, sympos {pos}",
            source,
            sympos,
        )

    def _pick(
        self,
        name: str,
        entries: list[SymbolEntry],
        obj: str,
        sympos: int | None,
        source: str,
    ) -> tuple[SymbolEntry, int] | str:
        """Validate an explicit (object, pos) against the database, as
        klp_find_object_symbol() will count (None: the user gave no position)."""
        mine = [e for e in entries if e.object == obj]
        if not mine:
            others = "; candidates: " + ", ".join(map(str, _cands(entries))) if entries else ""
            return f"{name}: {source} names object '{obj}', which has no symbol '{name}'{others}"
        if sympos is None and len(mine) > 1:
            return (
                f"{name}: {source} names '{obj}' without a position, but '{obj}' has "
                f"{len(mine)}: "
                + ", ".join(map(str, _cands(mine)))
                + f"; add the position: {name}={obj},POS"
            )
        res = klp.find_object_symbol(mine, sympos or 0)
        if res.found is klp.Found.AMBIGUOUS:
            return (
                f"{name}: {source} gives sympos 0, which needs a unique symbol, but "
                f"'{obj}' has {res.count}: " + ", ".join(map(str, _cands(mine)))
            )
        if res.found is klp.Found.POSITION or res.entry is None:
            return (
                f"{name}: {source} gives sympos {sympos}, but '{obj}' has only "
                f"{res.count} symbol(s) named '{name}': " + ", ".join(map(str, _cands(mine)))
            )
        return res.entry, sympos or 0

    def _chosen(self, name: str, choice: Choice) -> SymbolDecision:
        if self.db is None:
            return self._unchecked_choice(
                name, name, choice.object, choice.sympos or 0, choice.source
            )
        entries = self.db.lookup(name)
        got = self._pick(name, entries, choice.object, choice.sympos, choice.source)
        if isinstance(got, str):
            return SymbolDecision(
                name,
                Category.ERROR,
                Action.ERROR,
                got,
                source=choice.source,
                candidates=_cands(entries),
            )
        entry, pos = got
        return self._by_entry(name, entry, choice.source, pos, via=f", chosen by {choice.source}")

    def _unchecked_choice(self, name, symbol, obj, pos, source, gate=None):
        if gate is None:
            if obj == klp.VMLINUX:
                gate = klp.gate_for_vmlinux(self.patched, self.kver)
            elif obj in self.patched_modules:
                gate = obj
            elif len(self.patched_modules) == 1:
                gate = self.patched_modules[0]
            if gate is None:
                return SymbolDecision(
                    name,
                    Category.ERROR,
                    Action.ERROR,
                    f"{name}: cannot tell which patched object gates '{obj}' "
                    "without a symbol database",
                    source=source,
                )
        cat = Category.LOCAL
        return SymbolDecision(
            name,
            cat,
            Action.CONVERT,
            f"{source}: {obj} symbol {symbol}, sympos {pos} (not checked: no symbol database)",
            object=obj,
            symbol=symbol,
            sympos=pos,
            gate=gate,
            source=source,
        )

    def _intermediate(self, name, inter) -> SymbolDecision:
        source = f"intermediate ({inter.form})"
        gate = inter.lp_object
        note = ""
        refused = klp.gate_problem(gate, inter.object, inter.name, self.kver)
        if refused is not None and refused.gravity is klp.Gravity.REFUSED:
            note = (
                f"; gated on vmlinux, not {gate}: since 5.8 the kernel refuses vmlinux "
                "symbols in a module-gated section"
            )
            gate = klp.VMLINUX
        if self.db is None:
            d = self._unchecked_choice(name, inter.name, inter.object, inter.sympos, source, gate)
            d.reason += note
            return d
        entries = self.db.lookup(inter.name)
        got = self._pick(inter.name, entries, inter.object, inter.sympos, f"'{name}'")
        if isinstance(got, str):
            return SymbolDecision(
                name, Category.ERROR, Action.ERROR, got, source=source, candidates=_cands(entries)
            )
        entry, pos = got
        cat = (
            Category.B
            if entry.exported and entry.object != "vmlinux"
            else (Category.A if entry.exported else Category.LOCAL)
        )
        return SymbolDecision(
            name,
            cat,
            Action.CONVERT,
            f"named by the source ({inter.object} {entry.bind} {inter.name}, sympos {pos})" + note,
            object=inter.object,
            symbol=inter.name,
            sympos=pos,
            gate=gate,
            type=entry.type if entry.type in _TYPES else None,
            source=source,
        )

    def _automatic(self, name: str, weak: bool) -> SymbolDecision:
        assert self.db is not None  # classify() answers without a database first
        entries = self.db.lookup(name)
        exported = [e for e in entries if e.exported]
        local_patched = [e for e in entries if not e.exported and e.object in self.patched_modules]
        if exported:
            if local_patched:
                return SymbolDecision(
                    name,
                    Category.ERROR,
                    Action.ERROR,
                    f"{name}: ambiguous: exported by {exported[0].object}, and also a "
                    f"non-exported symbol of patched module {local_patched[0].object}: "
                    + ", ".join(map(str, _cands(exported + local_patched)))
                    + "; "
                    + _how_to_choose(name),
                    candidates=_cands(entries),
                )
            return self._by_entry(name, exported[0], "database")
        if not entries:
            if weak:
                return SymbolDecision(
                    name,
                    Category.INTERNAL,
                    Action.KEEP,
                    "weak reference to a symbol found nowhere: resolves to 0, left as it is",
                )
            return SymbolDecision(
                name,
                Category.ERROR,
                Action.ERROR,
                f"{name}: not found in any object of the symbol database; define it in the "
                f"livepatch, or {_how_to_choose(name)}",
            )
        for tier, label in (
            (local_patched, "patched modules"),
            ([e for e in entries if e.object == "vmlinux"], "vmlinux"),
        ):
            if not tier:
                continue
            if len(tier) == 1:
                return self._by_entry(name, tier[0], "database")
            return SymbolDecision(
                name,
                Category.ERROR,
                Action.ERROR,
                f"{name}: ambiguous: {len(tier)} candidates in {label}: "
                + ", ".join(map(str, _cands(tier)))
                + "; "
                + _how_to_choose(name),
                candidates=_cands(entries),
            )
        # only in modules this livepatch does not patch, not exported
        return SymbolDecision(
            name,
            Category.ERROR,
            Action.ERROR,
            f"{name}: not exported, and found only in objects this livepatch does not patch "
            f"(patched: {', '.join(self.patched) or 'none found'}): "
            + ", ".join(map(str, _cands(entries)))
            + f"; pass --object OBJ if the livepatch patches it, or {_how_to_choose(name)}",
            candidates=_cands(entries),
        )


# ------------------------------------------------------------------------ whole module
def lookup_names(elf: ElfFile) -> list[str]:
    """Every name planning ``elf`` looks up in the symbol source: its undefined
    symbols, and the kernel names its intermediate symbols carry (a streamed
    Symbols.list is read for these only)."""
    out: dict[str, None] = {}
    for sym in elf.symtab.symbols[1:] if elf.symtab is not None else []:
        if not sym.is_undefined or not sym.name:
            continue
        inter = parse_intermediate(sym.name)
        out[inter.name if inter is not None and not isinstance(inter, str) else sym.name] = None
    return list(out)


def read_modinfo(elf: ElfFile):
    from klpkit.kernel.modinfo import Modinfo

    sec = elf.section(".modinfo")
    return Modinfo.parse(sec.data) if sec is not None else None


def _site_problem(relsec, target, gate: str, kver) -> str | None:
    """Why a relocation in ``relsec`` cannot become a livepatch relocation gated on
    ``gate`` (None when it can): :func:`klpkit.kernel.klp.site_problem`."""
    return klp.site_problem(
        target.name if target is not None else "",
        target is not None and target.is_alloc,
        relsec.type != C.SHT_REL,
        gate,
        kver,
    )


def make_plan(
    elf: ElfFile,
    db: SymbolLookup | None,
    options: PlanOptions | None = None,
    module_name: str | None = None,
) -> Plan:
    """Decide the fate of every relocation of ``elf`` (a livepatch module).

    ``db``: a symbol source (see :class:`Classifier`) or None for the minimal mode.
    Never raises for policy problems: they are in ``plan.errors``.
    """
    return _Planner(elf, db, options or PlanOptions(), module_name).plan()


class _Planner:
    """One planning run: the steps of :func:`make_plan`, sharing the errors and
    warnings they collect. Each step reads the model; none edits it."""

    def __init__(
        self, elf: ElfFile, db: SymbolLookup | None, options: PlanOptions, module_name: str | None
    ):
        self.elf = elf
        self.db = db
        self.options = options
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.modinfo = read_modinfo(elf)
        mi = self.modinfo
        self.module = module_name or (
            mi.name
            if mi is not None and mi.name
            else module_name_from_path(elf.path or "livepatch.ko")
        )
        self.kver = kernel_version(
            options.kernel_version,
            mi.release if mi is not None else None,
            getattr(db, "release", None) if db is not None else None,
        )
        self.symbols: dict[str, SymbolDecision] = {}
        self.decision_of: dict[int, SymbolDecision] = {}  # id(Symbol) -> decision
        self.site_problems: dict[tuple[int, str], str | None] = {}
        self.used_names: set[str] = set()
        self.unflagged: set[int] = set()  # id() of .klp.rela sections without the flag
        self.type_names: dict[int, str] = {}

    def plan(self) -> Plan:
        elf = self.elf
        if elf.type != C.ET_REL:
            self.errors.append("not a relocatable object (a kernel module is ET_REL)")
        if elf.symtab is None:
            self.errors.append("no symbol table")
        kernel_machine = getattr(self.db, "machine", None)
        if elf.machine not in MACHINE_NAMES:
            # no kernel architecture has it: elf_check_arch() refuses the module, and
            # its relocation types mean nothing klpkit could carry over
            self.errors.append(f"e_machine {elf.machine} is no architecture the kernel builds for")
        elif kernel_machine and elf.machine != kernel_machine:
            self.errors.append(
                f"the module is for {machine_name(elf.machine)}, the symbol "
                f"database's kernel {getattr(self.db, 'release', '?')} is for "
                f"{machine_name(kernel_machine)}"
            )
        self.objects, self.objects_source = self._patched_objects()
        self.ann = read_module_relocs(elf)
        self.errors.extend(self.ann.errors)
        self.ann_secs = set(self.ann.sections)
        clf = Classifier(
            self.db,
            self.objects,
            keep_exports=self.options.keep_exports,
            choices=self._choices(),
            kernel_version=self.kver,
        )
        self._classify_undefined(clf)
        self._check_klp_names()
        self._check_gates()
        relocations = [
            self._plan_relocation(rs, r) for rs in elf.relocation_sections() for r in rs.relocations
        ]
        for name in sorted(self.ann.referenced - self.used_names):
            self.errors.append(f"{name}: annotated in .klp.module_relocs but no relocation uses it")
        drop_versions = self._versions_to_drop()
        depends = self.modinfo.depends if self.modinfo is not None else []
        still = {
            d.exported_by
            for d in self.symbols.values()
            if d.action is Action.KEEP and d.exported_by
        }
        drop_depends = [
            m for m in depends if m in self.objects and m != "vmlinux" and m not in still
        ]
        is_lp = self.modinfo is not None and self.modinfo.is_livepatch
        if not is_lp:
            self.warnings.append(
                'no livepatch=Y in .modinfo (MODULE_INFO(livepatch, "Y")): '
                "klp_enable_patch() will refuse the module"
            )
        for d in self.symbols.values():
            if d.category is Category.CD and d.action is Action.KEEP:
                self.warnings.append(f"{d.name}: {d.reason}")
        return Plan(
            self.module,
            self.objects,
            self.objects_source,
            self.kver,
            relocations,
            self.symbols,
            self.errors,
            self.warnings,
            self.ann.sections,
            self.ann.symbol_names,
            drop_versions,
            drop_depends,
            depends,
            is_lp,
        )

    # -- the objects this livepatch patches ---------------------------------------------
    def _patched_objects(self) -> tuple[list[str], str]:
        """The module's own objects (klp_patch.objs, else its klp_object entries and the
        annotations), or ``--object``, which must not contradict them."""
        own, own_source = read_patched_objects(self.elf).effective()
        if self.options.objects:
            objects, source = list(dict.fromkeys(self.options.objects)), "--object"
            self._compare_objects(objects, own, own_source)
        elif own:
            objects, source = own, own_source
        else:
            objects, source = [], FROM_NONE
            self.warnings.append(
                "no klp_object names found in the module: automatic "
                "resolution searches vmlinux only (pass --object OBJ)"
            )
        for obj in objects:
            if not valid_object_name(obj):
                self.errors.append(
                    f"object name '{obj}' is not valid for the kernel (1-55 characters, no '.')"
                )
        return objects, source

    def _compare_objects(self, objects: list[str], own: list[str], own_source: str) -> None:
        """``--object`` naming an object the module does not patch contradicts it: the
        kernel applies a module-gated section only for the klp_patch's objects, so what
        would be gated on it is never applied (an error unless ``force``); leaving one
        out only narrows the automatic resolution (a warning)."""
        if not own:
            return
        foreign = [o for o in objects if o not in own]
        if foreign and own_source != "annotations":
            text = (
                f"--object {', '.join(foreign)} contradicts the module, which patches "
                f"{', '.join(own)} (its {own_source}): the kernel never applies "
                "relocations gated on an object its klp_patch does not list"
            )
            if self.options.force:
                self.warnings.append(text + " (--force)")
            else:
                self.errors.append(text + "; pass --force to convert anyway")
        elif set(own) != set(objects):
            self.warnings.append(
                f"--object {', '.join(objects)} differs from the "
                f"module's objects ({', '.join(own)}, {own_source})"
            )

    def _choices(self) -> list[Choice]:
        """Command-line choices first, then annotations (conflicts are errors)."""
        choices = list(self.options.choices)
        by_name: dict[str, Choice] = {}
        for c in self.ann.choices:
            prev = by_name.get(c.name)
            if prev is not None and (prev.object, prev.sympos) != (c.object, c.sympos):
                self.errors.append(
                    f"{c.name}: conflicting annotations: {prev.object},"
                    f"{prev.sympos} ({prev.source}) vs {c.object},{c.sympos} "
                    f"({c.source})"
                )
            by_name.setdefault(c.name, c)
        explicit = {c.name for c in choices}
        for c in by_name.values():
            if c.name in explicit:
                self.warnings.append(f"{c.name}: the command line overrides {c.source}")
        return choices + list(by_name.values())

    # -- every undefined symbol, once ---------------------------------------------------
    def _classify_undefined(self, clf: Classifier) -> None:
        symtab = self.elf.symtab
        if symtab is None:
            return
        for sym in symtab.symbols[1:]:
            if not sym.is_undefined or not sym.name or sym.name in self.ann.symbol_names:
                continue
            d = self.symbols.get(sym.name)
            if d is None:
                d = self.symbols[sym.name] = clf.classify(sym.name, weak=sym.bind == C.STB_WEAK)
                if d.action is Action.ERROR:
                    self.errors.append(d.reason)
            self.decision_of[id(sym)] = d

    def _check_klp_names(self) -> None:
        """The names the conversion will write must parse in the target kernel."""
        kver = self.kver
        kmax = ksym_name_max(kver)
        for d in self.symbols.values():
            c = d.conversion
            if c is None:
                continue
            if len(c.symbol) > kmax or "," in c.symbol:
                self.errors.append(
                    f"{d.name}: '{c.symbol}' cannot be a livepatch symbol name "
                    f"on kernel {kver[0]}.{kver[1]} (at most {kmax} characters, "
                    "no ',')"
                )
            if not valid_object_name(c.object) or not valid_object_name(c.gate):
                self.errors.append(
                    f"{d.name}: object '{c.object}' / '{c.gate}' is not a valid "
                    "livepatch object name (1-55 characters, no '.')"
                )

    def _check_gates(self) -> None:
        """Every gate a conversion writes must be applied by the kernel
        (klp.when_applied); a gate whose symbol is only a run-time risk is a warning
        (klp.gate_problem)."""
        apps: dict[str, klp.Application] = {}
        for d in self.symbols.values():
            c = d.conversion
            if c is None:
                continue
            app = apps.get(c.gate)
            if app is None:
                app = apps[c.gate] = klp.when_applied(c.gate, self.objects, self.kver)
            if app.when is klp.When.NEVER:
                self.errors.append(
                    f"{d.name}: {d.klp_symbol} would be gated on {c.gate}, "
                    f"which the kernel never applies: {app.reason}"
                )
                continue
            problem = klp.gate_problem(c.gate, c.object, c.symbol, self.kver)
            if problem is not None and problem.gravity is klp.Gravity.RISK:
                self.warnings.append(f"{d.name}: {problem.reason}")

    # -- every relocation ---------------------------------------------------------------
    def _plan_relocation(self, rs, r) -> PlannedReloc:
        target = rs.target
        tname = target.name if target is not None else f"#{rs.info}"
        tn = self.type_names.get(r.type)
        if tn is None:
            tn = self.type_names[r.type] = reloc_type_name(self.elf.machine, r.type)
        sym = r.symbol
        fate = self._fate(rs, target, tname, r)
        sname = fate.symbol if fate.symbol is not None else (sym.name if sym else "")
        return PlannedReloc(
            rs.name,
            tname,
            r.offset,
            r.type,
            tn,
            sname,
            fate.category,
            fate.action,
            fate.reason,
            fate.new_symbol,
            fate.new_section,
            relsec=rs,
            reloc=r,
        )

    def _error(self, message: str) -> _Fate:
        self.errors.append(message)
        return _Fate(Category.ERROR, Action.ERROR, message)

    def _fate(self, rs, target, tname: str, r) -> _Fate:
        sym = r.symbol
        sname = sym.name if sym is not None else ""
        if target is not None and tname in self.ann_secs:
            return _Fate(
                Category.ANNOTATION, Action.REMOVE, "annotation record: removed with its section"
            )
        if meant_as_klp_rela(rs):
            if not is_klp_rela(rs):
                why = (
                    "a .klp.rela section without SHF_RELA_LIVEPATCH: the module loader "
                    "applies it as a normal relocation section"
                )
                if id(rs) in self.unflagged:
                    return _Fate(Category.KLP, Action.ERROR, why)
                self.unflagged.add(id(rs))
                return self._error(f"{rs.name}: {why}")
            if sym is not None and is_klp_symbol(sym):
                return _Fate(Category.KLP, Action.KEEP, "already a livepatch relocation")
            self.errors.append(
                f"{rs.name}+{r.offset:#x}: symbol {sname} is not marked as a "
                "livepatch symbol (the kernel refuses the module)"
            )
            return _Fate(Category.KLP, Action.ERROR, "not an SHN_LIVEPATCH symbol")
        d = self.decision_of.get(id(sym)) if sym is not None else None
        if d is None:
            return self._fate_of_defined(sym, target, tname, r)
        self.used_names.add(d.name)
        c = d.conversion
        if c is None:
            return _Fate(d.category, d.action, d.reason)
        key = (id(rs), c.gate)
        if key not in self.site_problems:
            self.site_problems[key] = _site_problem(rs, target, c.gate, self.kver)
        problem = self.site_problems[key]
        if problem is not None:
            return self._error(
                f"{rs.name}: {tname}+{r.offset:#x}: relocation to {sname} "
                f"cannot be converted: {problem}"
            )
        return _Fate(
            d.category, Action.CONVERT, d.reason, d.klp_symbol, klp_rela_section_name(c.gate, tname)
        )

    def _fate_of_defined(self, sym, target, tname: str, r) -> _Fate:
        """A relocation whose symbol is not a foreign reference."""
        sname = sym.name if sym is not None else ""
        if sym is not None and is_klp_symbol(sym):
            return self._error(
                f"{tname}+{r.offset:#x}: normal relocation on livepatch symbol "
                f"{sname} (the loader would resolve it to 0)"
            )
        if sym is not None and sym.section is not None and sym.section.name in self.ann_secs:
            if target is not None and not target.is_alloc:
                return _Fate(
                    Category.ANNOTATION,
                    Action.REMOVE,
                    "refers to an annotation, which is removed (not allocated: the "
                    "kernel never reads it)",
                )
            sname = sname or sym.section.name
            fate = self._error(
                f"{tname}+{r.offset:#x}: uses annotation symbol {sname}, which "
                "is removed with its section"
            )
            fate.symbol = sname
            return fate
        return _Fate(Category.INTERNAL, Action.KEEP, "defined in the livepatch")

    # -- clean-up -----------------------------------------------------------------------
    def _versions_to_drop(self) -> list[str]:
        """``__versions`` entries of converted symbols (modpost wrote them for a normal
        reference that no longer exists)."""
        converted = {d.name for d in self.symbols.values() if d.action is Action.CONVERT}
        vsec = self.elf.section("__versions")
        if vsec is None or not converted:
            return []
        if vsec.type != C.SHT_PROGBITS:
            # modpost's .mod.c puts it in a plain "a" section; rewriting another type's
            # content would contradict its own header (a symbol table of 64-byte rows)
            self.errors.append(
                f"__versions: section type {vsec.type:#x}, not SHT_PROGBITS as modpost "
                "writes it: klpkit will not rewrite it"
            )
            return []
        from klpkit.kernel.versions import parse_versions

        try:
            return [
                v.name
                for v in parse_versions(vsec.data, self.elf.elfclass, self.elf.little_endian)
                if v.name in converted
            ]
        except KlpkitError as e:
            self.errors.append(f"__versions: {e}")
            return []


@dataclass(slots=True)
class _Fate:
    """What happens to one relocation (the variable part of a PlannedReloc)."""

    category: Category
    action: Action
    reason: str
    new_symbol: str | None = None
    new_section: str | None = None
    symbol: str | None = None  # overrides the symbol name shown (annotation sections)

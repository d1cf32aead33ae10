"""The report of ``klpkit deps``: its verdicts, categories and graph kinds (string
enums: the JSON and the DOT carry their values), the references of each module, the
edges of the graph, and the whole report with its JSON form."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field


class Verdict(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    ERROR = "error"


class RefCategory(enum.StrEnum):
    """What a reference of a livepatch module leads to (after Petr Mladek's A-D)."""

    A = "A"  # export of vmlinux
    B = "B"  # export of a module the livepatch patches: a pin
    C = "C"  # export of the set's vmlinux livepatch, used by a per-object one
    D = "D"  # export of another livepatch module of the set
    OTHER = "other-module"
    LOCAL = "non-exported-unconverted"
    UNRESOLVED = "unresolved"
    KLP_OK = "klp-ok"
    KLP_WRONG = "klp-wrong-object"
    OBJECTS = "objects-contradicted"


class NodeKind(enum.StrEnum):
    VMLINUX = "vmlinux"
    PATCHED = "patched"
    LIVEPATCH = "livepatch"
    OTHER = "other"


class EdgeKind(enum.StrEnum):
    NEEDS = "needs"  # undefined symbols -> exporter, and depends=
    TRIGGERS = "triggers"  # a patched module's load loads its per-object livepatch
    OBJECT_DEP = "object-dep"  # a patched object's own dependency (symbol database)
    KLP = "klp"  # livepatch relocations gated on an object: no load dependency


OK, WARN, ERROR = Verdict.OK, Verdict.WARN, Verdict.ERROR
CAT_A, CAT_B, CAT_C, CAT_D = RefCategory.A, RefCategory.B, RefCategory.C, RefCategory.D
CAT_OTHER = RefCategory.OTHER
CAT_LOCAL = RefCategory.LOCAL
CAT_UNRESOLVED = RefCategory.UNRESOLVED
CAT_KLP_OK = RefCategory.KLP_OK
CAT_KLP_WRONG = RefCategory.KLP_WRONG
CAT_OBJECTS = RefCategory.OBJECTS
VMLINUX, PATCHED, LIVEPATCH, OTHER = (
    NodeKind.VMLINUX,
    NodeKind.PATCHED,
    NodeKind.LIVEPATCH,
    NodeKind.OTHER,
)
NEEDS, TRIGGERS, OBJECT_DEP, KLP = (
    EdgeKind.NEEDS,
    EdgeKind.TRIGGERS,
    EdgeKind.OBJECT_DEP,
    EdgeKind.KLP,
)

RANK: dict[str, int] = {OK: 0, WARN: 1, ERROR: 2}


def worst(verdicts: Iterable[str]) -> str:
    out: str = OK
    for v in verdicts:
        if RANK[v] > RANK[out]:
            out = v
    return out


@dataclass
class Reference:
    """One external reference of a module: an undefined symbol (all its relocation
    sites), or one livepatch relocation symbol (all its sites)."""

    module: str
    kind: str  # 'undefined' | 'klp' | 'depends' | 'objects'
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
    kind: str  # an EdgeKind
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
    nodes: dict[str, str]  # name -> NodeKind
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
        out: dict[str, int] = {OK: 0, WARN: 0, ERROR: 0}
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

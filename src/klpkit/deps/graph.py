"""The module dependency graph ``klpkit deps`` draws: the edges of a set (one per
(from, to, kind): the symbols and ``depends=`` of one dependency merge), its nodes,
the ``triggers`` and ``object-dep`` edges, the elementary cycles through the edges the
loader follows (load recursions), and the pins (B edges)."""

from __future__ import annotations

from collections.abc import Iterator

from klpkit.deps.model import (
    CAT_B,
    ERROR,
    LIVEPATCH,
    NEEDS,
    OBJECT_DEP,
    OK,
    OTHER,
    PATCHED,
    RANK,
    TRIGGERS,
    VMLINUX,
    Edge,
    ModuleInfo,
)
from klpkit.symbols.protocol import known_depends

# edges the loader follows (in this order of preference when a cycle step has several)
LOAD_KINDS = (NEEDS, TRIGGERS, OBJECT_DEP)


class EdgeSet:
    """The edges found so far, keyed by (src, dst, kind), in the order first found."""

    def __init__(self) -> None:
        self._edges: dict[tuple[str, str, str], Edge] = {}

    def get(self, src: str, dst: str, kind: str) -> Edge | None:
        return self._edges.get((src, dst, kind))

    def __contains__(self, key: tuple[str, str, str]) -> bool:
        return key in self._edges

    def __iter__(self) -> Iterator[Edge]:
        return iter(self._edges.values())

    def add(
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
        e = self._edges.get((src, dst, kind))
        if e is None:
            e = self._edges[(src, dst, kind)] = Edge(src, dst, kind, category, verdict, [], reason)
        elif RANK[verdict] > RANK[e.verdict]:
            e.verdict, e.category, e.reason = verdict, category, reason
        if symbol and symbol not in e.symbols:
            e.symbols.append(symbol)
        if via and via not in e.via:
            e.via.append(via)
        return e


def node_kind(name: str, patched: set[str]) -> str:
    return VMLINUX if name == "vmlinux" else PATCHED if name in patched else OTHER


def collect_nodes(modules: list[ModuleInfo], edges: EdgeSet) -> dict[str, str]:
    """The modules of the set, their patched objects, and whatever an edge reaches.
    A non-livepatch module of the set that a livepatch patches is a patched node."""
    patched = {o for m in modules for o in m.objects}
    out: dict[str, str] = {}
    for m in modules:
        out[m.name] = LIVEPATCH if m.livepatch else node_kind(m.name, patched)
    for m in modules:
        for o in m.objects:
            out.setdefault(o, node_kind(o, patched))
    for e in edges:
        out.setdefault(e.dst, node_kind(e.dst, patched))
    return out


def add_triggers(modules: list[ModuleInfo], edges: EdgeSet) -> None:
    """A per-object livepatch is loaded by its patched module's load: the edge that
    closes a B pin into a load recursion.  A normal livepatch has none."""
    for m in modules:
        if m.per_object:
            obj = m.objects[0]
            edges.add(
                obj, m.name, TRIGGERS, None, OK, None, f"loading {obj} loads its livepatch {m.name}"
            )


def add_object_deps(db, node_kinds: dict[str, str], edges: EdgeSet) -> None:
    """The patched objects' own dependencies (from the database): what a D edge
    must mirror, and part of the load order a cycle may run through."""
    for obj in sorted(o for o, kind in node_kinds.items() if kind == PATCHED):
        for d in known_depends(db, obj):
            if d in node_kinds:
                edges.add(obj, d, OBJECT_DEP, None, OK, None, f"{obj} depends on {d}")


def find_pins(edges: list[Edge]) -> list[dict]:
    """A B edge: the loader makes the livepatch depend on a module it patches."""
    return [
        {"livepatch": e.src, "module": e.dst, "symbols": e.symbols, "via": e.via}
        for e in edges
        if e.kind == NEEDS and e.category == CAT_B
    ]


# ---------------------------------------------------------------------------- cycles
def find_cycles(edges: list[Edge]) -> list[dict]:
    """Elementary cycles through needs/triggers/object-dep edges (small graphs), each
    with its steps and why the loader cannot get out of it."""
    adj: dict[str, list[str]] = {}
    kinds: dict[tuple[str, str], str] = {}
    for e in edges:
        if e.kind in LOAD_KINDS:
            adj.setdefault(e.src, [])
            if e.dst not in adj[e.src]:
                adj[e.src].append(e.dst)
            kinds.setdefault((e.src, e.dst), e.kind)
    starts = {e.src for e in edges if e.kind == NEEDS}
    return [_describe_cycle(cyc, kinds) for cyc in _elementary_cycles(adj, starts)]


def mark_cycles(edges: EdgeSet, cycles: list[dict]) -> None:
    """Every edge on a cycle is an error: any of them, removed, breaks it."""
    for cyc in cycles:
        path = cyc["path"]
        for a, b in zip(path, path[1:], strict=False):
            e = next((e for k in LOAD_KINDS if (e := edges.get(a, b, k)) is not None), None)
            if e is not None:
                e.verdict = ERROR
                if "cycle" not in e.reason:
                    e.reason += ("; " if e.reason else "") + "on a load cycle"


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
) -> Iterator[list[str]]:
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

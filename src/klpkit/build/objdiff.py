"""The object diff: which functions of a compiled kernel object a patch changed, and why.

Pure: two :class:`~klpkit.elf.ElfFile` objects in (the original and the patched
compile of one source file), an :class:`ObjectDiff` out.  No compiler, no tree, no
database: the unit tests drive it with objects they compile from a few lines of C.

How functions are compared.  Two compiles of one file differ in more than the patch:
GCC renumbers its per-file names (``.LC12`` -> ``.LC14``, ``CSWTCH.297`` -> ``.298``,
static locals ``var.N``, ``__UNIQUE_ID_ddebugN.M``), string literals move inside their
sections, and relocation addends depend on the instruction (``cmpb $0,x(%rip)`` has
-5, not -4).  So each function is reduced to a *fingerprint*: its bytes with every
relocation site zeroed, plus, per relocation, the offset, the type and what it points
at, named the way the original object names it (correlated symbol + offset; the text
of a string literal; the content of a per-call-site copy such as a ``_once`` flag or a
dynamic-debug descriptor), plus its entries in the special sections that carry
behaviour (a BUG's line and flags, an exception fixup, a jump label's key).  Equal
fingerprints: the function is unchanged.

Symbols are correlated by name; GCC's numbered names by their base name, the function
that refers to them first, and their order.

What cannot be livepatched is refused, one :class:`Refusal` each: changed
static/global data and new file-scope variables (the old value is live state, and
unchanged code cannot see a new variable: shadow variables are the tool; a new
function-scope static is the new code's own, and is carried), a
changed ``__init``/``__exit`` function (it has run), a changed function without an
``__fentry__`` call (ftrace cannot redirect it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from klpkit.build.objview import (
    ObjectView,
    Place,
    base_name,
    cold_parent,
    home,
    is_string_section,
    is_writable,
    string_at,
)
from klpkit.elf import ElfFile, Symbol
from klpkit.elf import constants as C
from klpkit.kernel.special_sections import (
    ENTRY_TABLES,
    FENTRY_RELOC_OFFSETS,
    FENTRY_SYMBOL,
    FRESH_COPY_PREFIXES,
    FRESH_COPY_SECTIONS,
    INIT_SECTION_PREFIXES,
    NEVER_COPIED_PREFIXES,
)


@dataclass
class FunctionChange:
    """A function of the patched object that the livepatch carries."""

    name: str  # in the patched object
    orig_name: str | None  # the correlated function of the original (None: new)
    status: str  # "changed" | "new" | "part" (a .cold part of one of those)
    reasons: list[str] = field(default_factory=list)
    size: int = 0
    orig_size: int = 0

    @property
    def original(self) -> str:
        """The original function a changed function replaces (every changed one has one)."""
        if self.orig_name is None:
            raise ValueError(f"{self.name}: a new function replaces nothing")
        return self.orig_name

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "orig_name": self.orig_name,
            "status": self.status,
            "size": self.size,
            "orig_size": self.orig_size,
            "reasons": self.reasons,
        }


@dataclass
class Refusal:
    """Something the patch changes that a livepatch cannot carry."""

    symbol: str
    kind: str  # "changed-data" | "new-data" | "init" | "no-fentry" | ...
    message: str

    def to_json(self) -> dict:
        return {"symbol": self.symbol, "kind": self.kind, "message": self.message}


@dataclass
class ObjectDiff:
    """What changed between two compiles of one source file."""

    source: str
    functions: list[FunctionChange] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    unchanged: int = 0
    correlation: dict[int, Symbol] = field(default_factory=dict)  # id(patched) -> orig
    changed_rodata: set[str] = field(default_factory=set)  # read-only data with new content

    @property
    def replaced(self) -> list[FunctionChange]:
        """The functions the livepatch replaces (one ``klp_func`` each)."""
        return [f for f in self.functions if f.status == "changed"]

    @property
    def carried(self) -> set[str]:
        """Names (patched object) of every function the livepatch object carries."""
        return {f.name for f in self.functions}

    def orig_of(self, sym: Symbol) -> Symbol | None:
        return self.correlation.get(id(sym))

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "unchanged_functions": self.unchanged,
            "functions": [f.to_json() for f in self.functions],
            "refusals": [r.to_json() for r in self.refusals],
        }


def is_fresh_copy(sym: Symbol) -> bool:
    """Per-call-site state a changed function gets its own copy of (see
    :data:`klpkit.kernel.special_sections.FRESH_COPY_PREFIXES`)."""
    sec = sym.section
    return sym.name.startswith(FRESH_COPY_PREFIXES) or (
        sec is not None and sec.name in FRESH_COPY_SECTIONS
    )


def _ignored_section(name: str) -> bool:
    return name.startswith(NEVER_COPIED_PREFIXES) and not name.startswith(INIT_SECTION_PREFIXES)


def is_init(sym: Symbol) -> bool:
    sec = sym.section
    return sec is not None and sec.name.startswith(INIT_SECTION_PREFIXES)


# ----------------------------------------------------------------- correlation
def _owners(view: ObjectView) -> dict[int, str]:
    """id(symbol) -> name of the first function that refers to it."""
    owners: dict[int, str] = {}
    for fn in view.functions():
        for r in view.relocs_in(home(fn), fn.value, fn.value + fn.size):
            t = view.place(r).symbol
            if t is not None and t.type != C.STT_FUNC:
                owners.setdefault(id(t), fn.name)
    return owners


def correlate(orig: ObjectView, patched: ObjectView) -> dict[int, Symbol]:
    """id(patched symbol) -> the original symbol it is, for every symbol that has one."""
    out: dict[int, Symbol] = {}
    o_owner, p_owner = _owners(orig), _owners(patched)

    def groups(view, owners):
        exact: dict[tuple[str, int], list[Symbol]] = {}
        numbered: dict[tuple[str, int, str | None], list[Symbol]] = {}
        for s in view.defined():
            base = base_name(s.name)
            if base == s.name:
                exact.setdefault((s.name, s.type), []).append(s)
            else:
                numbered.setdefault((base, s.type, owners.get(id(s))), []).append(s)
        return exact, numbered

    o_exact, o_num = groups(orig, o_owner)
    p_exact, p_num = groups(patched, p_owner)
    for key, psyms in p_exact.items():
        osyms = o_exact.get(key, [])
        if len(psyms) == 1 and len(osyms) == 1:
            out[id(psyms[0])] = osyms[0]
    for key, psyms in p_num.items():
        for p, o in zip(psyms, o_num.get(key, []), strict=False):
            out[id(p)] = o
    return out


# ----------------------------------------------------------------- fingerprints
class _Fingerprints:
    """Fingerprints of one side; ``canon`` names a symbol the original's way."""

    def __init__(self, view: ObjectView, canon):
        self.view = view
        self.canon = canon
        self._content: dict[int, tuple] = {}
        self._entries = self._special_entries()

    def _special_entries(self) -> dict[int, list[tuple]]:
        """id(function) -> its entries in the behaviour-carrying special sections."""
        view = self.view
        out: dict[int, list[tuple]] = {}
        for sec in view.elf.sections:
            table = ENTRY_TABLES.get(sec.name)
            if table is None or not table.fingerprint or not sec.size:
                continue
            for start in range(0, sec.size - table.size + 1, table.size):
                rels = view.relocs_in(sec, start, start + table.size)
                anchor = next((r for r in rels if r.offset == start + table.anchor), None)
                if anchor is None:
                    continue
                place = view.place(anchor)
                if place.symbol is None or place.symbol.type != C.STT_FUNC:
                    continue
                data, _ = view.masked_bytes(sec, start, start + table.size)
                keys = tuple(
                    (r.offset - start, r.type, self._entry_key(table, sec, start, r))
                    for r in rels
                    if r is not anchor
                )
                out.setdefault(id(place.symbol), []).append((sec.name, place.offset, data, keys))
        return out

    def _entry_key(self, table, sec, start: int, rel) -> tuple:
        """What an entry's reference means; a sized reference (an alternative's
        replacement) by the bytes and targets of the piece it points at."""
        if table.sized_ref is None or rel.offset != start + table.sized_ref[0]:
            return self.key(rel)
        place = self.view.place(rel)
        if place.section is None or place.symbol is not None:
            return self.key(rel)
        length = sec.data[start + table.sized_ref[1]]
        at = place.offset + place.bias
        data, rels = self.view.masked_bytes(place.section, at, at + length)
        return ("piece", data, tuple((r.offset - at, r.type, self.key(r)) for r in rels))

    def key(self, rel) -> tuple:
        return self.place_key(self.view.place(rel))

    def place_key(self, place: Place) -> tuple:
        sym = place.symbol
        if sym is None:
            sec = place.section
            if sec is None:
                return ("none", place.offset)
            if is_string_section(sec):
                return ("str", string_at(sec, place.offset + place.bias))
            # a place without a symbol: what is there, not where (it moves between
            # compiles); a mergeable constant is one entsize-long datum
            at = max(place.offset + place.bias, 0)
            size = sec.entsize if sec.flags & C.SHF_MERGE and sec.entsize else 16
            return ("sec", sec.name, bytes(sec.data[at : at + size]))
        if place.external:
            return ("ext", sym.name, place.offset)
        if sym.type == C.STT_OBJECT and (is_fresh_copy(sym) or not is_writable(home(sym))):
            return (
                "data",
                base_name(sym.name) if is_fresh_copy(sym) else self.canon(sym),
                place.offset,
                self.content(sym),
            )
        return ("sym", self.canon(sym), place.offset)

    def content(self, sym: Symbol) -> tuple:
        """A data symbol's bytes and what its relocations point at (memoised; a
        reference cycle reads as the symbol's name)."""
        got = self._content.get(id(sym))
        if got is not None:
            return got
        self._content[id(sym)] = ("cycle", base_name(sym.name))
        sec = home(sym)
        data, rels = self.view.masked_bytes(sec, sym.value, sym.value + sym.size)
        keys = tuple((r.offset - sym.value, r.type, self.key(r)) for r in rels)
        got = self._content[id(sym)] = (data, keys)
        return got

    def function(self, sym: Symbol) -> tuple:
        data, rels = self.view.masked_bytes(home(sym), sym.value, sym.value + sym.size)
        keys = tuple((r.offset - sym.value, r.type, self.key(r)) for r in rels)
        return data, keys, tuple(self._entries.get(id(sym), ()))


def _why(old: tuple, new: tuple, old_size: int, new_size: int) -> list[str]:
    """Human reasons for a fingerprint difference, most telling first."""
    reasons = []
    (ob, ok, oe), (nb, nk, ne) = old, new
    if old_size != new_size:
        reasons.append(f"size {old_size} -> {new_size} bytes")
    old_targets = {_describe(k[2]) for k in ok}
    new_targets = {_describe(k[2]) for k in nk}
    added = sorted(new_targets - old_targets)
    gone = sorted(old_targets - new_targets)
    if added:
        reasons.append(
            "now refers to "
            + ", ".join(added[:5])
            + (f" (+{len(added) - 5})" if len(added) > 5 else "")
        )
    if gone:
        reasons.append(
            "no longer refers to "
            + ", ".join(gone[:5])
            + (f" (+{len(gone) - 5})" if len(gone) > 5 else "")
        )
    if ob != nb and not reasons:
        first = next(
            (i for i, (a, b) in enumerate(zip(ob, nb, strict=False)) if a != b),
            min(len(ob), len(nb)),
        )
        reasons.append(f"code differs from offset {first:#x}")
    if ok != nk and not reasons:
        reasons.append("relocations differ (same targets, other places or addends)")
    if oe != ne:
        kinds = sorted({e[0] for e in set(oe) ^ set(ne)})
        reasons.append("entries of " + ", ".join(kinds) + " differ")
    return reasons or ["differs"]


def _describe(key: tuple) -> str:
    kind = key[0]
    if kind == "str":
        text = key[1].decode("utf-8", "backslashreplace")
        return f'string "{text[:40]}"' + ("..." if len(text) > 40 else "")
    if kind in ("sym", "ext", "data"):
        name = key[1] if isinstance(key[1], str) else key[1][1]
        return name
    if kind == "sec":
        return f"data in {key[1]}"
    return kind


# ----------------------------------------------------------------- the diff
def diff_objects(orig_elf: ElfFile, patched_elf: ElfFile, source: str = "") -> ObjectDiff:
    orig, patched = ObjectView(orig_elf), ObjectView(patched_elf)
    corr = correlate(orig, patched)
    result = ObjectDiff(source or (patched_elf.path or ""), correlation=corr)

    def canon_patched(sym):
        o = corr.get(id(sym))
        return o.name if o is not None else ("new", sym.name)

    ofp = _Fingerprints(orig, lambda s: s.name)
    pfp = _Fingerprints(patched, canon_patched)

    status: dict[str, FunctionChange] = {}
    unchanged = 0
    for fn in patched.functions():
        if _ignored_section(home(fn).name):
            continue
        o = corr.get(id(fn))
        if o is None:
            status[fn.name] = FunctionChange(fn.name, None, "new", ["new function"], fn.size)
            continue
        old, new = ofp.function(o), pfp.function(fn)
        if old == new:
            unchanged += 1
            continue
        status[fn.name] = FunctionChange(
            fn.name, o.name, "changed", _why(old, new, o.size, fn.size), fn.size, o.size
        )
    _fold_cold_parts(patched, corr, status)
    for fc in status.values():
        sym = patched.by_name[fc.name][0]
        if is_init(sym):
            result.refusals.append(
                Refusal(
                    fc.name,
                    "init",
                    f"{fc.name}: changed {home(sym).name} code runs only while the kernel or "
                    "a module initialises or unloads, which a livepatch cannot redo; patch a "
                    "function that runs later",
                )
            )
        elif fc.status == "changed" and not _has_fentry(patched, sym):
            result.refusals.append(
                Refusal(
                    fc.name,
                    "no-fentry",
                    f"{fc.name}: no __fentry__ call at its entry (notrace, noinstr or "
                    "compiled without -pg): ftrace cannot redirect it; patch its callers",
                )
            )
    result.refusals.extend(_data_refusals(orig, patched, corr, ofp, pfp))
    result.changed_rodata = {
        s.name
        for s in patched.objects()
        if not is_writable(home(s)) and id(s) in corr and ofp.content(corr[id(s)]) != pfp.content(s)
    }
    result.functions = sorted(
        status.values(), key=lambda f: ({"changed": 0, "part": 1, "new": 2}[f.status], f.name)
    )
    result.unchanged = unchanged
    return result


def _fold_cold_parts(patched: ObjectView, corr, status: dict[str, FunctionChange]) -> None:
    """A ``.cold`` part is never a function of its own: the livepatch carries it with
    its parent, and a change in it is a change of the parent."""
    for fn in patched.functions():
        parent = cold_parent(fn.name)
        if parent is None:
            continue
        mine = status.get(fn.name)
        if mine is not None and parent in patched.by_name and parent not in status:
            psym = patched.by_name[parent][0]
            o = corr.get(id(psym))
            status[parent] = FunctionChange(
                parent,
                o.name if o else None,
                "changed" if o else "new",
                [f"its part {fn.name} {mine.status}"],
                psym.size,
                o.size if o else 0,
            )
        if parent in status:
            reasons = mine.reasons if mine else []
            status[fn.name] = FunctionChange(
                fn.name,
                corr[id(fn)].name if id(fn) in corr else None,
                "part",
                [f"part of {parent}", *reasons],
                fn.size,
            )
        elif mine is not None and parent not in patched.by_name:
            mine.status = "part"


def _has_fentry(view: ObjectView, fn: Symbol) -> bool:
    for r in view.relocs_in(home(fn), fn.value, fn.value + max(FENTRY_RELOC_OFFSETS) + 4):
        if (
            r.offset - fn.value in FENTRY_RELOC_OFFSETS
            and r.symbol is not None
            and r.symbol.name == FENTRY_SYMBOL
        ):
            return True
    return False


def _data_refusals(orig, patched, corr, ofp, pfp) -> list[Refusal]:
    """Changed and new variables: their value is state the running kernel holds."""
    out = []
    for sym in patched.objects():
        sec = sym.section
        if _ignored_section(sec.name) or is_fresh_copy(sym) or sec.name in ENTRY_TABLES:
            continue
        if not is_writable(sec):
            continue  # read-only data: functions using a changed one change too
        o = corr.get(id(sym))
        if o is None and base_name(sym.name) != sym.name:
            continue  # a new function-scope static: the new code's own state
        if o is None:
            out.append(
                Refusal(
                    sym.name,
                    "new-data",
                    f"{sym.name}: new {'global' if sym.bind != C.STB_LOCAL else 'static'} "
                    f"variable in {sec.name}; a livepatch cannot add state to the patched "
                    "object: use shadow variables (klp_shadow_get_or_alloc)",
                )
            )
            continue
        if o.size != sym.size or ofp.content(o) != pfp.content(sym):
            out.append(
                Refusal(
                    sym.name,
                    "changed-data",
                    f"{sym.name}: its {'size' if o.size != sym.size else 'initial value'} "
                    "changed; the running kernel keeps the old one: leave the variable as it "
                    "is and use shadow variables for new state",
                )
            )
    return out

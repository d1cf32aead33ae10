"""The livepatch object of one compiled source file: the changed and new functions of
the patched object, with exactly what they need, and nothing else.

What a carried function needs, and what becomes of it:

* other carried functions (a changed function calling a new helper, a function and
  its ``.cold`` part): copied, referenced inside the object;
* string literals, ``__func__``, switch tables, ``_once`` flags, dynamic-debug
  descriptors — per-call-site data (:func:`klpkit.build.objdiff.is_fresh_copy`), and
  read-only data the patch changed or added: copied (a fresh copy per function, as
  upstream klp-build does);
* everything else of the original object (unchanged functions, variables, the
  object's exports, ``__this_module`` of a patched module): left *undefined*, named
  by :class:`Outside` — a plain name the module loader resolves (an export of
  vmlinux), or an intermediate ``.klp.sym.rela.<obj>.<obj>.<name>,<pos>`` name that
  ``klpkit convert`` turns into a livepatch relocation with the kernel's sympos;
* references the compiled object already left undefined: kept as they are;
* the function's entries of the special sections (:data:`ENTRY_TABLES`).

Each replaced function also gets a global alias (``Outside.alias``) that the
generated ``klp_func`` scaffolding refers to; every carried symbol stays local, so
two objects' ``static`` functions of the same name never clash when linked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from klpkit.build.objdiff import ObjectDiff, Refusal, is_fresh_copy
from klpkit.build.objview import ObjectView, Place, home, is_writable
from klpkit.elf import ElfFile, Relocation, RelocationSection, Section, Symbol, SymbolTable
from klpkit.elf import constants as C
from klpkit.errors import ElfError
from klpkit.kernel.special_sections import ENTRY_TABLES


@dataclass
class Outside:
    """How the livepatch names what stays in the original object.

    ``name(sym, orig)`` -> the undefined name for patched symbol ``sym`` (``orig``:
    its correlated original symbol, or None); ``alias(fn)`` -> the global name of
    replaced function ``fn``; ``module_owned(name)``: whether an undefined name is a
    symbol of a module (a jump label on such a key cannot be livepatched).
    """

    name: Callable[[Symbol, Symbol | None], str]
    alias: Callable[[str], str]
    module_owned: Callable[[str], bool] = lambda _name: False


@dataclass
class _OutSection:
    section: Section
    data: bytearray = field(default_factory=bytearray)
    size: int = 0  # NOBITS: bytes reserved
    relocs: list[tuple[int, int, Symbol | None, int]] = field(default_factory=list)
    symbol: Symbol = field(init=False)  # its STT_SECTION symbol

    def __post_init__(self) -> None:
        self.symbol = Symbol("", 0, 0, C.STB_LOCAL, C.STT_SECTION, 0, self.section)


@dataclass
class Extracted:
    """The livepatch object and what went into it."""

    elf: ElfFile
    functions: list[str]  # carried functions (patched names)
    copied_data: list[str]  # data symbols copied
    copied_sections: list[str]  # sections copied whole (strings, ...)
    special_entries: dict[str, int]  # table -> entries carried
    externals: dict[str, str]  # undefined name -> why
    aliases: dict[str, str]  # replaced function -> global alias
    refusals: list[Refusal]


class _Extractor:
    def __init__(self, view: ObjectView, diff: ObjectDiff, outside: Outside):
        self.view = view
        self.diff = diff
        self.outside = outside
        self.elf = ElfFile.new_relocatable(view.elf)
        self.outs: dict[str, _OutSection] = {}
        self.carried: dict[int, Symbol] = {}  # id(patched sym) -> out symbol
        self.whole: dict[int, _OutSection] = {}  # id(patched section) copied whole
        self.undefined: dict[str, Symbol] = {}
        self.externals: dict[str, str] = {}
        self.pending: list[tuple[Section, int, int, _OutSection, int]] = []
        self.copied_data: list[str] = []
        self.special: dict[str, int] = {}
        self.refusals: list[Refusal] = []
        self.locals: list[Symbol] = []

    # -- output sections ---------------------------------------------------------
    def _out(self, src: Section, name: str | None = None) -> _OutSection:
        name = name or src.name
        out = self.outs.get(name)
        if out is None:
            sec = Section(
                name,
                src.type,
                src.flags & ~C.SHF_GROUP,
                addralign=src.addralign,
                entsize=src.entsize,
            )
            out = self.outs[name] = _OutSection(sec)
        else:
            out.section.addralign = max(out.section.addralign, src.addralign)
        return out

    def _append(self, out: _OutSection, src: Section, lo: int, hi: int, align: int) -> int:
        align = max(align, 1)
        if out.section.type == C.SHT_NOBITS:
            at = -(-out.size // align) * align
            out.size = at + (hi - lo)
            return at
        at = -(-len(out.data) // align) * align
        out.data += bytes(at - len(out.data)) + src.data[lo:hi]
        return at

    # -- carrying ----------------------------------------------------------------
    def carry(self, sym: Symbol) -> Symbol:
        """Copy ``sym``'s range into the output; its relocations are queued."""
        got = self.carried.get(id(sym))
        if got is not None:
            return got
        src = home(sym)
        out = self._out(src)
        at = self._append(out, src, sym.value, sym.value + sym.size, src.addralign)
        new = Symbol(sym.name, at, sym.size, C.STB_LOCAL, sym.type, sym.other, out.section)
        self.carried[id(sym)] = new
        self.locals.append(new)
        self.pending.append((src, sym.value, sym.value + sym.size, out, at))
        if sym.type == C.STT_OBJECT:
            self.copied_data.append(sym.name)
        return new

    def carry_section(self, src: Section) -> _OutSection:
        """Copy a whole section that has no symbols of its own (string literals,
        constants, alternative replacements): what a reference into it means is
        only an offset."""
        out = self.whole.get(id(src))
        if out is None:
            if self.view.symbols_in(src):
                raise ElfError(
                    f"a reference into {src.name} matches none of its symbols; "
                    "klpkit cannot tell which variable it means",
                    path=self.view.path,
                )
            out = self._out(src, self._unique_name(src.name))
            self._append(out, src, 0, src.size, src.addralign)
            self.whole[id(src)] = out
            self.pending.append((src, 0, src.size, out, 0))
        return out

    def _unique_name(self, name: str) -> str:
        n, k = name, 1
        while n in self.outs:
            n, k = f"{name}.{k}", k + 1
        return n

    def _must_copy(self, t: Symbol) -> bool:
        if t.type == C.STT_FUNC:
            return t.name in self.diff.carried
        if is_fresh_copy(t) or self.diff.orig_of(t) is None:
            return True  # per-call-site state, or new (the differ refused new globals)
        # read-only data the patch changed: functions using it carry a copy
        return not is_writable(home(t)) and t.name in self.diff.changed_rodata

    def target(self, place: Place, rel: Relocation) -> tuple[Symbol | None, int]:
        """(output symbol, addend) for what ``rel`` pointed at."""
        sym = place.symbol
        if place.external and sym is not None:
            return self._undefined(
                self.outside.name(sym, None), "undefined in the object"
            ), place.offset
        if sym is None:
            if place.section is None:
                return None, place.offset
            out = self.carry_section(place.section)
            return out.symbol, place.offset
        if self._must_copy(sym):
            return self.carry(sym), place.offset
        orig = self.diff.orig_of(sym)
        name = self.outside.name(sym, orig)
        return self._undefined(name, f"{sym.name} stays in the original object"), place.offset

    def _undefined(self, name: str, why: str) -> Symbol:
        sym = self.undefined.get(name)
        if sym is None:
            sym = self.undefined[name] = Symbol(
                name, 0, 0, C.STB_GLOBAL, C.STT_NOTYPE, 0, C.SHN_UNDEF
            )
            self.externals[name] = why
        return sym

    def drain(self) -> None:
        while self.pending:
            src, lo, hi, out, at = self.pending.pop()
            for r in self.view.relocs_in(src, lo, hi):
                place = self.view.place(r)
                tsym, addend = self.target(place, r)
                out.relocs.append((r.offset - lo + at, r.type, tsym, addend))

    # -- special sections ----------------------------------------------------------
    def entries(self) -> None:
        view = self.view
        carried_funcs = {k for k, v in self.carried.items() if v.type == C.STT_FUNC}
        for src in view.elf.sections:
            table = ENTRY_TABLES.get(src.name)
            if table is None or not src.size:
                continue
            par_src = view.elf.section(table.parallel[0]) if table.parallel else None
            kept = 0
            for i, start in enumerate(range(0, src.size - table.size + 1, table.size)):
                rels = view.relocs_in(src, start, start + table.size)
                anchor = next((r for r in rels if r.offset == start + table.anchor), None)
                if anchor is None:
                    continue
                place = view.place(anchor)
                if place.symbol is None or id(place.symbol) not in carried_funcs:
                    continue
                if table.key is not None and not self._key_ok(table, rels, start):
                    continue
                out = self._out(src)
                at = self._append(out, src, start, start + table.size, 1)
                self.pending.append((src, start, start + table.size, out, at))
                if par_src is not None and table.parallel:
                    psize = table.parallel[1]
                    pout = self._out(par_src)
                    self._append(pout, par_src, i * psize, (i + 1) * psize, 1)
                kept += 1
            if kept:
                self.special[src.name] = kept
        self.drain()

    def _key_ok(self, table, rels: list[Relocation], start: int) -> bool:
        """A jump label or static call on a key that a module owns cannot be carried."""
        key = next((r for r in rels if r.offset == start + table.key), None)
        if key is None:
            return True
        place = self.view.place(key)
        sym = place.symbol
        if sym is None or self._must_copy(sym):
            return True
        name = sym.name if place.external else self.outside.name(sym, self.diff.orig_of(sym))
        if not self.outside.module_owned(name):
            return True
        code = self.view.place(next(r for r in rels if r.offset == start + table.anchor))
        where = code.symbol.name if code.symbol else "?"
        what = "static branch" if table.name == "__jump_table" else "static call"
        self.refusals.append(
            Refusal(
                where,
                "module-key",
                f"{where}: a {what} on key {sym.name}, which belongs to a module: the "
                f"livepatch's {table.name} is set up when it loads, before its module "
                "relocations are applied; test the key with static_key_enabled() or patch "
                "another function",
            )
        )
        return False

    # -- the object ------------------------------------------------------------------
    def build(self, aliases: dict[str, str]) -> ElfFile:
        elf = self.elf
        strtab = Section(".strtab", C.SHT_STRTAB, data=b"\0")
        symtab = SymbolTable(
            ".symtab", C.SHT_SYMTAB, addralign=8, entsize=elf.layout.sym.size, link=strtab
        )
        symtab._symbols = [Symbol("", 0, 0, C.STB_LOCAL, C.STT_NOTYPE, 0, C.SHN_UNDEF)]
        for out in self.outs.values():
            sec = out.section
            if sec.type == C.SHT_NOBITS:
                sec.nobits_size = out.size
            else:
                sec.data = bytes(out.data)
            elf.add_section(sec)
        elf.add_section(symtab)
        elf.add_section(strtab)
        syms = symtab._symbols
        syms.extend(o.symbol for o in self.outs.values())
        syms.extend(self.locals)
        for fn, alias in aliases.items():
            new = self.carried[id(self.view.by_name[fn][0])]
            syms.append(Symbol(alias, new.value, new.size, C.STB_GLOBAL, C.STT_FUNC, 0, new.shndx))
        syms.extend(self.undefined.values())
        for out in self.outs.values():
            if not out.relocs:
                continue
            rs = RelocationSection(
                ".rela" + out.section.name,
                C.SHT_RELA,
                C.SHF_INFO_LINK,
                addralign=8,
                entsize=elf.layout.rela.size,
                link=symtab,
                info=out.section,
            )
            rs._relocations = [
                Relocation(off, typ, sym, add)
                for off, typ, sym, add in sorted(out.relocs, key=lambda x: x[0])
            ]
            elf.add_section(rs)
        return elf


def extract(patched: ObjectView, diff: ObjectDiff, outside: Outside) -> Extracted:
    """Build the livepatch object of ``diff``'s carried functions from ``patched``."""
    ex = _Extractor(patched, diff, outside)
    for fc in diff.functions:
        ex.carry(patched.by_name[fc.name][0])
    ex.drain()
    ex.entries()
    aliases = {fc.name: outside.alias(fc.name) for fc in diff.replaced}
    elf = ex.build(aliases)
    return Extracted(
        elf,
        [fc.name for fc in diff.functions],
        ex.copied_data,
        [o.section.name for k, o in ex.whole.items()],
        ex.special,
        ex.externals,
        aliases,
        ex.refusals,
    )

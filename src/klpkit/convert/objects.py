"""Which objects a livepatch patches, read the way the kernel reads them: from the
``struct klp_patch`` the module hands to ``klp_enable_patch()``, its ``objs`` array, each
``klp_object``'s ``name`` (NULL: vmlinux) and ``funcs``.

A livepatch module describes what it patches in static data::

    static struct klp_func funcs[] = { { .old_name = "f", .new_func = lp_f }, { } };
    static struct klp_func no_funcs[] = { { } };          /* callbacks or states only */
    static struct klp_object objs[] = { { .name = "cdrom", .funcs = funcs },
                                        { .funcs = no_funcs, .callbacks = { ... } }, { } };
    static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, .states = ... };

In the relocatable ``.ko`` every pointer field is a relocation, so the structures are
recognised without knowing their sizes (which change with the kernel version and
config); only the order of their leading fields, the same from v4.5 to v6.x
(include/linux/livepatch.h), is assumed:

* ``struct klp_patch``: ``mod`` (a relocation to ``__this_module``), ``objs``,
  ``states``, ``replace``;
* ``struct klp_object``: ``name`` (a string, or no relocation: NULL, vmlinux),
  ``funcs`` (non-NULL: klp_enable_patch() refuses an object without it), then the
  four callbacks; the array ends with an entry whose ``name`` and ``funcs`` are both
  NULL (klp_for_each_object_static()), so its entries are the ``funcs`` slots at one
  stride from the head, inside the array's own symbol (``st_size``);
* ``struct klp_func``: ``old_name``, ``new_func``, ``old_sympos``; an empty array (a
  callbacks- or states-only object) is one all-zero terminator, often in ``.bss``.

A module whose ``klp_patch`` is built at run time has no such anchor: its objects are
then the ``klp_object`` entries found by their non-empty ``funcs`` (a slot pointing to
``(string, code)`` pairs), plus what the source's annotations name
(``.klp.module_relocs.<obj>``, the ``<lp_obj>`` of ``.klp.sym.rela.<lp_obj>.*``).

Pure: reads the model, never edits it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from klpkit.convert.annotations import (
    MODULE_RELOCS_PREFIX,
    Intermediate,
    parse_intermediate,
    valid_object_name,
)
from klpkit.elf import ElfFile
from klpkit.elf import constants as C
from klpkit.elf.relocation import Relocation, RelocationSection
from klpkit.elf.section import Section
from klpkit.kernel.klp import VMLINUX, registers_patch
from klpkit.kernel.livepatch import meant_as_klp_rela

THIS_MODULE = "__this_module"
CALLBACKS = ("pre_patch", "post_patch", "pre_unpatch", "post_unpatch")

# where the objects came from
FROM_PATCH = "klp_patch"  # klp_patch.objs: what klp_enable_patch() walks
FROM_ENTRIES = "klp_object"  # klp_object entries with funcs (no klp_patch anchor)
FROM_ANNOTATIONS = "annotations"  # only the annotations name them
FROM_NONE = "none"


@dataclass(frozen=True)
class PatchedObject:
    name: str  # "vmlinux" or the module name
    section: str  # where the klp_object entry is
    offset: int  # offset of its .name field
    funcs: int = 0  # klp_func entries (0: an empty array: callbacks or states only)
    callbacks: tuple[str, ...] = ()  # the callbacks it sets (pre_patch, ...)


@dataclass(frozen=True)
class PatchedFunction:
    """One ``struct klp_func`` entry: the function of ``object`` it replaces."""

    object: str  # "vmlinux" (klp_object .name NULL) or the module name
    old_name: str
    old_sympos: int
    new_func: str  # the replacement's symbol ("" when it cannot be named)
    section: str  # where the klp_func entry is (e.g. ".data")
    offset: int  # offset of its .old_name field
    name_section: str  # where the old_name string is (e.g. ".rodata.str1.1") ...
    name_offset: int  # ... and its offset there
    index: int = 0  # position in its klp_func array


@dataclass(frozen=True)
class KlpState:
    """One ``struct klp_state`` (v5.5+): a system state the livepatch modifies."""

    id: int
    version: int


@dataclass(frozen=True)
class KlpPatch:
    """A ``struct klp_patch`` of the module's data."""

    section: str
    offset: int
    objs: tuple[str, int] | None  # where its objs array is (None: NULL, set at run time)
    states: tuple[KlpState, ...]  # its .states array (empty: none)
    replace: bool  # .replace (atomic replace)


@dataclass
class PatchedObjects:
    """What the module says it patches, and how it says it."""

    objects: list[PatchedObject]  # the kernel's order, each name once
    source: str  # FROM_PATCH | FROM_ENTRIES | FROM_NONE
    patches: list[KlpPatch] = field(default_factory=list)
    annotated: list[str] = field(default_factory=list)  # objects annotations name
    registers: bool = False  # the module calls klp_enable_patch()

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objects]

    @property
    def known(self) -> bool:
        """Are the objects readable from the file (the klp_patch is static data)?"""
        return bool(self.objects)

    def effective(self) -> tuple[list[str], str]:
        """(objects, where from) a command works with: the klp_patch's objects (what the
        kernel walks: authoritative); without a klp_patch anchor, the entries found plus
        the objects annotations name (the entries may miss empty-funcs objects); else
        the annotations alone."""
        if self.source == FROM_PATCH and self.objects:
            return self.names, "klp_object"
        extra = [o for o in self.annotated if o not in self.names]
        if self.objects:
            return self.names + extra, "klp_object" + (", annotations" if extra else "")
        return (extra, FROM_ANNOTATIONS) if extra else ([], FROM_NONE)


def _is_string_section(sec: Section) -> bool:
    return bool(sec.flags & C.SHF_STRINGS) or sec.name.startswith((".rodata.str", ".str"))


def _is_code(sec: Section) -> bool:
    return bool(sec.flags & C.SHF_EXECINSTR)


class _Pointers:
    """Relocations of the allocated data sections, indexed by (section, offset)."""

    def __init__(self, elf: ElfFile):
        self.elf = elf
        self.by_section: dict[int, dict[int, tuple[Relocation, RelocationSection]]] = {}
        for rs in elf.relocation_sections():
            target = rs.target
            if target is None or not target.is_alloc or _is_code(target):
                continue
            if meant_as_klp_rela(rs):
                continue
            table = self.by_section.setdefault(id(target), {})
            for r in rs.relocations:
                table[r.offset] = (r, rs)
        self.ptr = 8 if elf.elfclass == 64 else 4
        self._starts: dict[int, list[tuple[int, int]]] | None = None

    def at(self, sec: Section, offset: int):
        return self.by_section.get(id(sec), {}).get(offset)

    def addend(self, rs: RelocationSection, r: Relocation) -> int:
        if r.addend is not None:
            return r.addend
        # SHT_REL: the addend is the word in place (none when sh_info names no section).
        target = rs.target
        if target is None or target.type == C.SHT_NOBITS:
            return 0
        data = target.data[r.offset : r.offset + self.ptr]
        if len(data) < self.ptr:
            return 0
        return int.from_bytes(data, _byteorder(self.elf), signed=True)

    def points_to(self, entry) -> tuple[Section, int] | None:
        """(section, offset) a pointer relocation designates, for a defined symbol."""
        if entry is None:
            return None
        r, rs = entry
        sym = r.symbol
        if sym is None or not isinstance(sym.shndx, Section):
            return None
        return sym.shndx, sym.value + self.addend(rs, r)

    def data_at(self, sec: Section, off: int) -> tuple[Section, int] | None:
        """Where the pointer at (sec, off) points when it points to data (not code, not
        a string), else None."""
        dest = self.points_to(self.at(sec, off))
        if dest is None or _is_code(dest[0]) or _is_string_section(dest[0]):
            return None
        return dest

    def symbol_size(self, sec: Section, off: int) -> int | None:
        """st_size of the data symbol that starts at (sec, off): an array itself."""
        symtab = self.elf.symtab
        if symtab is None:
            return None
        best = None
        for sym in symtab.symbols[1:]:
            if (
                sym.shndx is sec
                and sym.value == off
                and sym.size > 0
                and sym.type in (C.STT_OBJECT, C.STT_NOTYPE)
            ):
                best = max(best or 0, sym.size)
        return best

    def symbol_between(self, sec: Section, lo: int, hi: int) -> bool:
        """Does a data symbol start in (lo, hi] of ``sec``: another variable?"""
        if self._starts is None:
            self._starts = {}
            for sym in self.elf.symtab.symbols[1:] if self.elf.symtab else []:
                if (
                    isinstance(sym.shndx, Section)
                    and sym.type in (C.STT_OBJECT, C.STT_NOTYPE)
                    and sym.size > 0
                ):
                    self._starts.setdefault(id(sym.shndx), []).append((sym.value, sym.size))
        return any(lo < v <= hi for v, _s in self._starts.get(id(sec), []))


def _byteorder(elf: ElfFile) -> Literal["little", "big"]:
    return "little" if elf.little_endian else "big"


def _string_at(sec: Section, off: int) -> str | None:
    data = sec.data
    if not 0 <= off < len(data):
        return None
    end = data.find(b"\0", off)
    if end < 0:
        return None
    return data[off:end].decode("utf-8", "surrogateescape")


def _zero(ptrs: _Pointers, sec: Section, off: int, words: int) -> bool:
    """``words`` pointer-sized words at (sec, off) hold NULL: no relocation, zero bytes
    (or no bytes at all: .bss)."""
    if any(ptrs.at(sec, off + i * ptrs.ptr) is not None for i in range(words)):
        return False
    if sec.type == C.SHT_NOBITS:
        return 0 <= off and off + words * ptrs.ptr <= sec.size
    raw = sec.data[off : off + words * ptrs.ptr]
    return len(raw) == words * ptrs.ptr and not any(raw)


def _is_klp_func(ptrs: _Pointers, sec: Section, off: int) -> bool:
    """(sec, off) holds a klp_func entry: old_name -> a string, new_func -> code."""
    name = ptrs.points_to(ptrs.at(sec, off))
    func = ptrs.points_to(ptrs.at(sec, off + ptrs.ptr))
    return (
        name is not None and _is_string_section(name[0]) and func is not None and _is_code(func[0])
    )


def _is_funcs_array(ptrs: _Pointers, sec: Section, off: int) -> bool:
    """(sec, off) starts a klp_func array: a klp_func entry, or the terminator of an
    empty one (old_name, new_func, old_sympos all zero: klp_for_each_func_static())."""
    return _is_klp_func(ptrs, sec, off) or _zero(ptrs, sec, off, 3)


def _object_name(ptrs: _Pointers, sec: Section, entry: int) -> str | None:
    """The name of the klp_object at (sec, entry): its string, "vmlinux" for NULL, None
    when the slot is not a name."""
    slot = ptrs.at(sec, entry)
    if slot is None:
        return VMLINUX
    dest = ptrs.points_to(slot)
    if dest is None:
        return None
    name = _string_at(*dest)
    return name or None


# ------------------------------------------------------------------------- klp_patch
def _patches(ptrs: _Pointers) -> list[tuple[KlpPatch, tuple[Section, int] | None]]:
    """Every ``struct klp_patch``: a ``mod`` slot pointing to ``__this_module`` followed
    by an ``objs`` slot pointing to data (or NULL: filled at run time)."""
    out = []
    for sec in ptrs.elf.sections:
        table = ptrs.by_section.get(id(sec))
        if not table:
            continue
        for off in sorted(table):
            r, _rs = table[off]
            if r.symbol is None or r.symbol.name != THIS_MODULE:
                continue
            objs = ptrs.data_at(sec, off + ptrs.ptr)
            if objs is None and ptrs.at(sec, off + ptrs.ptr) is not None:
                continue  # .objs points to code or a string: another structure
            states = _states(ptrs, ptrs.data_at(sec, off + 2 * ptrs.ptr))
            raw = (
                sec.data[off + 3 * ptrs.ptr : off + 3 * ptrs.ptr + 1]
                if sec.type != C.SHT_NOBITS
                else b""
            )
            patch = KlpPatch(
                sec.name,
                off,
                (objs[0].name, objs[1]) if objs else None,
                states,
                bool(raw and raw[0]),
            )
            out.append((patch, objs))
    return out


def _states(ptrs: _Pointers, where: tuple[Section, int] | None) -> tuple[KlpState, ...]:
    """The klp_state array at ``where``: ``{ unsigned long id; unsigned int version; void
    *data; }`` entries (three words each), up to the one whose id is 0
    (klp_for_each_state())."""
    if where is None:
        return ()
    sec, off = where
    if sec.type == C.SHT_NOBITS:
        return ()
    order = _byteorder(ptrs.elf)
    data, word, out = sec.data, ptrs.ptr, []
    while off + 3 * word <= len(data):
        ident = int.from_bytes(data[off : off + word], order)
        if not ident:
            break
        out.append(KlpState(ident, int.from_bytes(data[off + word : off + word + 4], order)))
        off += 3 * word
    return tuple(out)


def _array_entries(ptrs: _Pointers, sec: Section, head: int) -> list[int]:
    """Offsets of the klp_object entries of the objs array at (sec, head): one ``funcs``
    slot (pointing to a klp_func array) per entry, at one stride, up to the terminator,
    inside the array's own symbol when it has one."""
    size = ptrs.symbol_size(sec, head)
    end = head + size if size else (sec.size if sec.type == C.SHT_NOBITS else len(sec.data))
    table = ptrs.by_section.get(id(sec), {})
    entries: list[int] = []
    for off in sorted(o for o in table if head + ptrs.ptr <= o < end):
        entry = off - ptrs.ptr
        dest = ptrs.data_at(sec, off)
        if (
            dest is None
            or not _is_funcs_array(ptrs, *dest)
            or _object_name(ptrs, sec, entry) is None
        ):
            continue
        if not entries:
            if entry != head:
                break  # entry 0 must start the array
        elif len(entries) >= 2 and entry - entries[-1] != entries[1] - entries[0]:
            break
        elif size is None and ptrs.symbol_between(sec, entries[-1], entry):
            break  # another variable: the array ended
        entries.append(entry)
    return entries


def _callbacks(ptrs: _Pointers, sec: Section, entry: int) -> tuple[str, ...]:
    """The callbacks a klp_object sets (``struct klp_callbacks`` follows ``funcs``)."""
    out = []
    for i, name in enumerate(CALLBACKS):
        dest = ptrs.points_to(ptrs.at(sec, entry + (2 + i) * ptrs.ptr))
        if dest is not None and _is_code(dest[0]):
            out.append(name)
    return tuple(out)


# --------------------------------------------------------------- klp_func arrays
def _func_entries(ptrs: _Pointers, sec: Section, head: int, heads: set[int]) -> list[int]:
    """Offsets of the klp_func entries of the array at (sec, head)."""
    table = ptrs.by_section.get(id(sec), {})
    pairs = [o for o in sorted(table) if o >= head and _is_klp_func(ptrs, sec, o)]
    size = ptrs.symbol_size(sec, head)
    if size is not None:
        return [o for o in pairs if o < head + size]
    # stripped: a run at one stride from the head, up to another array's head
    run = [head] if pairs and pairs[0] == head else []
    for o in pairs[1:]:
        if o in heads:
            break
        if len(run) >= 2 and o - run[-1] != run[1] - run[0]:
            break
        run.append(o)
    return run


# --------------------------------------------------------------- without klp_patch
def _entries_with_funcs(ptrs: _Pointers):
    """(section, entry offset) of every klp_object entry whose ``funcs`` points to
    klp_func entries, in file order: a module without a static klp_patch."""
    for sec in ptrs.elf.sections:
        table = ptrs.by_section.get(id(sec))
        if not table:
            continue
        for off in sorted(table):
            dest = ptrs.data_at(sec, off)
            if dest is None or not _is_klp_func(ptrs, *dest):
                continue
            entry = off - ptrs.ptr  # `off` is a funcs field: .name is one slot before
            if entry < 0 or _object_name(ptrs, sec, entry) is None:
                continue
            yield sec, entry


# ------------------------------------------------------------------------ the reader
@dataclass
class _Entry:
    name: str
    section: Section
    offset: int
    funcs: tuple[Section, int]


def _entries(ptrs: _Pointers) -> tuple[list[_Entry], str, list[KlpPatch]]:
    """Every klp_object entry, the kernel's order, and where they were found."""
    found = _patches(ptrs)
    patches = [p for p, _o in found]
    out: list[_Entry] = []
    for _p, objs in found:
        if objs is None:
            continue
        sec = objs[0]
        out.extend(_entry_list(ptrs, sec, _array_entries(ptrs, *objs)))
    if out:
        return out, FROM_PATCH, patches
    for sec, entry in _entries_with_funcs(ptrs):
        out.extend(_entry_list(ptrs, sec, [entry]))
    return out, (FROM_ENTRIES if out else FROM_NONE), patches


def _entry_list(ptrs: _Pointers, sec: Section, offsets: Iterable[int]) -> list[_Entry]:
    """The klp_object entries at ``offsets`` of ``sec`` that have a name and a ``funcs``
    pointer (the finders only return such entries)."""
    out = []
    for entry in offsets:
        name = _object_name(ptrs, sec, entry)
        funcs = ptrs.data_at(sec, entry + ptrs.ptr)
        if name is not None and funcs is not None:
            out.append(_Entry(name, sec, entry, funcs))
    return out


def _functions(ptrs: _Pointers, entries: list[_Entry]) -> list[list[int]]:
    """The klp_func entry offsets of each object entry's funcs array."""
    heads: dict[int, set[int]] = {}
    for e in entries:
        heads.setdefault(id(e.funcs[0]), set()).add(e.funcs[1])
    return [_func_entries(ptrs, e.funcs[0], e.funcs[1], heads[id(e.funcs[0])]) for e in entries]


def annotated_objects(elf: ElfFile) -> list[str]:
    """Objects the source's annotations name: ``KLP_MODULE_RELOC(obj)`` sections and
    the gating ``<lp_obj>`` of ``.klp.sym.rela.<lp_obj>.<obj>.<sym>,<pos>`` names (the
    objects their relocations are gated on, so the objects the author patches)."""
    out: dict[str, None] = {}
    for sec in elf.sections:
        if sec.name.startswith(MODULE_RELOCS_PREFIX):
            obj = sec.name[len(MODULE_RELOCS_PREFIX) :]
            if valid_object_name(obj):
                out[obj] = None
    for sym in elf.symtab.symbols[1:] if elf.symtab else []:
        if sym.is_undefined:
            inter = parse_intermediate(sym.name)
            if isinstance(inter, Intermediate):
                out[inter.lp_object] = None
    return list(out)


def _undefined_names(elf: ElfFile) -> set[str]:
    return {
        s.name for s in (elf.symtab.symbols[1:] if elf.symtab else []) if s.is_undefined and s.name
    }


def read_patched_objects(elf: ElfFile) -> PatchedObjects:
    """What the module patches, as the kernel will read it (see the module doc)."""
    ptrs = _Pointers(elf)
    entries, source, patches = _entries(ptrs)
    counts = _functions(ptrs, entries)
    objects: list[PatchedObject] = []
    seen: set[str] = set()
    for e, funcs in zip(entries, counts, strict=True):
        if e.name in seen:
            continue
        seen.add(e.name)
        objects.append(
            PatchedObject(
                e.name, e.section.name, e.offset, len(funcs), _callbacks(ptrs, e.section, e.offset)
            )
        )
    return PatchedObjects(
        objects, source, patches, annotated_objects(elf), registers_patch(_undefined_names(elf))
    )


def find_patched_objects(elf: ElfFile) -> list[PatchedObject]:
    """The objects named by the module's ``klp_object`` entries, in the kernel's order,
    without duplicates.  Empty when none is recognised."""
    return read_patched_objects(elf).objects


def find_patched_functions(elf: ElfFile) -> list[PatchedFunction]:
    """Every ``struct klp_func`` entry of every recognised ``klp_object``, in the
    order the kernel walks them (objects in array order, then their functions)."""
    ptrs = _Pointers(elf)
    entries, _source, _patches = _entries(ptrs)
    order = _byteorder(elf)
    out: list[PatchedFunction] = []
    for e, funcs in zip(entries, _functions(ptrs, entries), strict=True):
        fsec = e.funcs[0]
        data = fsec.data if fsec.type != C.SHT_NOBITS else b""
        for i, entry in enumerate(funcs):
            name_at = ptrs.points_to(ptrs.at(fsec, entry))
            old_name = _string_at(*name_at) if name_at is not None else None
            code = ptrs.at(fsec, entry + ptrs.ptr)
            code_at = ptrs.points_to(code)
            if old_name is None or name_at is None or code is None or code_at is None:
                continue  # not a klp_func entry (the finder returns only those)
            nsec, noff = name_at
            csec, coff = code_at
            pos_at = entry + 2 * ptrs.ptr
            raw = data[pos_at : pos_at + ptrs.ptr]
            sympos = int.from_bytes(raw, order) if len(raw) == ptrs.ptr else 0
            out.append(
                PatchedFunction(
                    e.name,
                    old_name,
                    sympos,
                    _function_symbol(csec, coff, code[0].symbol),
                    fsec.name,
                    entry,
                    nsec.name,
                    noff,
                    i,
                )
            )
    return out


def _function_symbol(sec: Section, off: int, sym) -> str:
    """The name a new_func pointer designates: its symbol, or the function symbol at
    that address when the relocation names a section symbol."""
    if sym is not None and sym.type != C.STT_SECTION and sym.name:
        return sym.name
    elf = sec.elf
    if elf is None or elf.symtab is None:
        return ""
    for s in elf.symtab.symbols[1:]:
        if s.shndx is sec and s.value == off and s.type == C.STT_FUNC:
            return s.name
    return ""

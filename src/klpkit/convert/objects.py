"""Which objects a livepatch patches, read from its own ``struct klp_object`` array.

A livepatch module describes what it patches in static data::

    static struct klp_func funcs[] = { { .old_name = "f", .new_func = lp_f }, { } };
    static struct klp_object objs[] = { { .name = "cdrom", .funcs = funcs }, { } };

In the relocatable ``.ko`` every pointer field is a relocation, so the array can be
recognised without knowing the layout of ``struct klp_object`` (which changes with
the kernel version and config): a *klp_object entry* is a slot ``o`` such that

* the slot after it (``o + pointer size``, the ``funcs`` field) points to data
  (not code, not a string) whose first slot points to a string (``old_name``) and
  whose second slot points to code (``new_func``) — a ``struct klp_func``;
* slot ``o`` (``name``) points to a string — the object's name — or holds no
  relocation at all, which is ``NULL``: the kernel image, ``vmlinux``.

The ``struct klp_func`` array an entry's ``funcs`` points to is read the same way
(include/linux/livepatch.h, v4.5 .. v6.x: ``old_name``, ``new_func``, ``old_sympos``
first, then internal fields the initializer leaves zero): an entry is a slot pair
(string, code); ``old_sympos`` is the plain word after them (no relocation), read with
the file's class and byte order; the array ends with an empty entry, so its entries are
the pairs inside the array's own symbol (``st_size`` covers entries + terminator) or,
for a stripped module, the run of pairs at a constant stride up to the next array.

Pure: reads the model, never edits it.
"""

from __future__ import annotations

from dataclasses import dataclass

from klpkit.elf import ElfFile
from klpkit.elf import constants as C
from klpkit.elf.relocation import Relocation, RelocationSection
from klpkit.elf.section import Section


@dataclass(frozen=True)
class PatchedObject:
    name: str           # "vmlinux" or the module name
    section: str        # where the klp_object entry is
    offset: int         # offset of its .name field


@dataclass(frozen=True)
class PatchedFunction:
    """One ``struct klp_func`` entry: the function of ``object`` it replaces."""

    object: str             # "vmlinux" (klp_object .name NULL) or the module name
    old_name: str
    old_sympos: int
    new_func: str           # the replacement's symbol ("" when it cannot be named)
    section: str            # where the klp_func entry is (e.g. ".data")
    offset: int             # offset of its .old_name field
    name_section: str       # where the old_name string is (e.g. ".rodata.str1.1") ...
    name_offset: int        # ... and its offset there
    index: int = 0          # position in its klp_func array


def _is_string_section(sec: Section) -> bool:
    return bool(sec.flags & C.SHF_STRINGS) or sec.name.startswith((".rodata.str", ".str"))


class _Pointers:
    """Relocations of the allocated data sections, indexed by (section, offset)."""

    def __init__(self, elf: ElfFile):
        self.elf = elf
        self.by_section: dict[int, dict[int, Relocation]] = {}
        for rs in elf.relocation_sections():
            target = rs.target
            if target is None or not target.is_alloc or target.flags & C.SHF_EXECINSTR:
                continue
            if rs.flags & C.SHF_RELA_LIVEPATCH:
                continue
            table = self.by_section.setdefault(id(target), {})
            for r in rs.relocations:
                table[r.offset] = (r, rs)
        self.ptr = 8 if elf.elfclass == 64 else 4

    def at(self, sec: Section, offset: int):
        return self.by_section.get(id(sec), {}).get(offset)

    def addend(self, rs: RelocationSection, r: Relocation) -> int:
        if r.addend is not None:
            return r.addend
        # SHT_REL: the addend is the word in place.
        target = rs.target
        data = target.data[r.offset:r.offset + self.ptr]
        if len(data) < self.ptr:
            return 0
        return int.from_bytes(data, "little" if self.elf.little_endian else "big", signed=True)

    def points_to(self, entry) -> tuple[Section, int] | None:
        """(section, offset) a pointer relocation designates, for a defined symbol."""
        r, rs = entry
        sym = r.symbol
        if sym is None or not isinstance(sym.shndx, Section):
            return None
        off = sym.value + self.addend(rs, r)
        return sym.shndx, off


def _string_at(sec: Section, off: int) -> str | None:
    data = sec.data
    if not 0 <= off < len(data):
        return None
    end = data.find(b"\0", off)
    if end < 0:
        return None
    return data[off:end].decode("utf-8", "surrogateescape")


def _is_klp_func(ptrs: _Pointers, sec: Section, off: int) -> bool:
    first = ptrs.at(sec, off)
    second = ptrs.at(sec, off + ptrs.ptr)
    if first is None or second is None:
        return False
    name = ptrs.points_to(first)
    func = ptrs.points_to(second)
    return (name is not None and _is_string_section(name[0])
            and func is not None and bool(func[0].flags & C.SHF_EXECINSTR))


def _object_entries(ptrs: _Pointers):
    """(name, section, offset of .name, (funcs section, funcs offset)) of every
    recognised klp_object entry, in file order (duplicates kept)."""
    elf = ptrs.elf
    for sec in elf.sections:
        table = ptrs.by_section.get(id(sec))
        if not table:
            continue
        for off in sorted(table):
            dest = ptrs.points_to(table[off])
            if dest is None:
                continue
            dsec, doff = dest
            if dsec.flags & C.SHF_EXECINSTR or _is_string_section(dsec):
                continue
            if not _is_klp_func(ptrs, dsec, doff):
                continue
            # `off` is a funcs field: the name field is one slot before it.
            name_off = off - ptrs.ptr
            if name_off < 0:
                continue
            name_entry = table.get(name_off)
            if name_entry is None:
                name = "vmlinux"
            else:
                target = ptrs.points_to(name_entry)
                if target is None or not _is_string_section(target[0]):
                    continue
                name = _string_at(*target)
                if not name:
                    continue
            yield name, sec, name_off, dest


def find_patched_objects(elf: ElfFile) -> list[PatchedObject]:
    """The objects named by the module's ``klp_object`` entries, in file order,
    without duplicates.  Empty when no entry is recognised."""
    ptrs = _Pointers(elf)
    found: list[PatchedObject] = []
    seen: set[str] = set()
    for name, sec, name_off, _funcs in _object_entries(ptrs):
        if name not in seen:
            seen.add(name)
            found.append(PatchedObject(name, sec.name, name_off))
    return found


def _array_size(elf: ElfFile, sec: Section, off: int) -> int | None:
    """st_size of the symbol that starts at (sec, off) -- the klp_func array itself."""
    symtab = elf.symtab
    if symtab is None:
        return None
    best = None
    for sym in symtab.symbols[1:]:
        if sym.shndx is sec and sym.value == off and sym.size > 0 \
                and sym.type in (C.STT_OBJECT, C.STT_NOTYPE):
            best = max(best or 0, sym.size)
    return best


def _func_entries(ptrs: _Pointers, sec: Section, head: int, heads: set[int]) -> list[int]:
    """Offsets of the klp_func entries of the array at (sec, head)."""
    table = ptrs.by_section.get(id(sec), {})
    pairs = [o for o in sorted(table) if o >= head and _is_klp_func(ptrs, sec, o)]
    size = _array_size(ptrs.elf, sec, head)
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


def find_patched_functions(elf: ElfFile) -> list[PatchedFunction]:
    """Every ``struct klp_func`` entry of every recognised ``klp_object``, in the
    order the kernel walks them (objects in array order, then their functions)."""
    ptrs = _Pointers(elf)
    objects = list(_object_entries(ptrs))
    heads: dict[int, set[int]] = {}
    for _n, _s, _o, (fsec, foff) in objects:
        heads.setdefault(id(fsec), set()).add(foff)
    order = "little" if elf.little_endian else "big"
    out: list[PatchedFunction] = []
    for name, _sec, _off, (fsec, foff) in objects:
        data = fsec.data
        for i, entry in enumerate(_func_entries(ptrs, fsec, foff, heads[id(fsec)])):
            nsec, noff = ptrs.points_to(ptrs.at(fsec, entry))
            old_name = _string_at(nsec, noff)
            if old_name is None:
                continue
            code = ptrs.at(fsec, entry + ptrs.ptr)
            csec, coff = ptrs.points_to(code)
            pos_at = entry + 2 * ptrs.ptr
            raw = data[pos_at:pos_at + ptrs.ptr]
            sympos = int.from_bytes(raw, order) if len(raw) == ptrs.ptr else 0
            out.append(PatchedFunction(name, old_name, sympos,
                                       _function_symbol(csec, coff, code[0].symbol),
                                       fsec.name, entry, nsec.name, noff, i))
    return out

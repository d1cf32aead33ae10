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


def find_patched_objects(elf: ElfFile) -> list[PatchedObject]:
    """The objects named by the module's ``klp_object`` entries, in file order,
    without duplicates.  Empty when no entry is recognised."""
    ptrs = _Pointers(elf)
    found: list[PatchedObject] = []
    seen: set[str] = set()
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
            if name not in seen:
                seen.add(name)
                found.append(PatchedObject(name, sec.name, name_off))
    return found

"""Breakages of a livepatch's ``struct klp_func`` entries, made with klpkit's ELF model
(shared by the check and e2e tests).

``set_old_name(elf, old, new)`` appends ``new`` to the string section that holds ``old``
and points the entry's ``old_name`` relocation at it (the other strings, possibly
shared, stay as they are); ``set_old_sympos(elf, name, pos)`` writes the plain
``old_sympos`` word, in the file's class and byte order.
"""

from __future__ import annotations

from klpkit.convert.objects import find_patched_functions


def _entry(elf, old_name: str):
    hits = [f for f in find_patched_functions(elf) if f.old_name == old_name]
    assert len(hits) == 1, f"{old_name}: {len(hits)} klp_func entries"
    return hits[0]


def _relocation_at(elf, section: str, offset: int):
    for rs in elf.relocation_sections():
        if rs.target is not None and rs.target.name == section:
            for r in rs.relocations:
                if r.offset == offset:
                    return r
    raise AssertionError(f"no relocation at {section}+{offset:#x}")


def set_old_name(elf, old: str, new: str) -> None:
    f = _entry(elf, old)
    r = _relocation_at(elf, f.section, f.offset)
    strings = elf.section(f.name_section)
    assert r.symbol.shndx is strings and r.addend is not None, "RELA to the string section"
    at = len(strings.data)
    strings.data = strings.data + new.encode() + b"\0"
    r.addend = at - r.symbol.value


def set_old_sympos(elf, name: str, pos: int) -> None:
    f = _entry(elf, name)
    sec = elf.section(f.section)
    word = 8 if elf.elfclass == 64 else 4
    at = f.offset + 2 * word
    data = bytearray(sec.data)
    data[at : at + word] = pos.to_bytes(word, "little" if elf.little_endian else "big")
    sec.data = bytes(data)

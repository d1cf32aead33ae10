"""Source annotations that choose a symbol's object and position.

Two generations of the kernel's klp-convert proposals (posted to the livepatching list):

* **v7 full klp-convert**: ``KLP_MODULE_RELOC(obj) relocs[] = { KLP_SYMPOS(sym, pos) }``
  puts 12-byte ``struct klp_module_reloc { u64 sym (via a relocation); u32 sympos; }``
  records (packed, target byte order) in ``.klp.module_relocs.<obj>``; the i-th record's
  relocation names the symbol, its ``sympos`` field the position.  The sections, their
  relocations and the symbols defined in them are removed from the output.
* **minimal klp-convert**: the source names the symbol with an assembler name
  ``.klp.sym.rela.<lp_obj>.<sym_obj>.<sym>,<pos>`` (v1/v2) or ``...<sym>.<pos>`` (v3);
  the intermediate undefined symbol is renamed to ``.klp.sym.<sym_obj>.<sym>,<pos>`` and
  its relocations gated on ``<lp_obj>``.

Pure parsers: they read the model and return values; errors are returned as text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from klpkit.elf import ElfFile, Relocation, Section
from klpkit.errors import InputError
from klpkit.kernel.livepatch import MODULE_NAME_MAX
from klpkit.numbers import SYMPOS_MAX, parse_decimal, shown

MODULE_RELOCS_PREFIX = ".klp.module_relocs."
MODULE_RELOC_SIZE = 12
INTERMEDIATE_PREFIX = ".klp.sym.rela."

_OBJ_RE = re.compile(rf"[^.]{{1,{MODULE_NAME_MAX}}}\Z")


def valid_object_name(obj: str) -> bool:
    """What the kernel's ``%55[^.]`` can match whole: 1-55 characters, no dot."""
    return bool(_OBJ_RE.match(obj))


@dataclass(frozen=True)
class Choice:
    """A user's answer to "which symbol is NAME": its object and (optional) position."""

    name: str
    object: str
    sympos: int | None
    source: str  # where the choice came from, for messages

    def __str__(self) -> str:
        pos = "" if self.sympos is None else f",{self.sympos}"
        return f"{self.name}={self.object}{pos} ({self.source})"


@dataclass
class ModuleRelocs:
    """What the v7 annotation sections say, and what must be removed with them."""

    choices: list[Choice]
    sections: list[str]  # annotation section names (removed with their relocations)
    symbol_names: set[str]  # symbols defined in them (removed)
    referenced: set[str]  # names the records point at
    errors: list[str]


def read_module_relocs(elf: ElfFile) -> ModuleRelocs:
    out = ModuleRelocs([], [], set(), set(), [])
    for sec in elf.sections:
        if sec.name.startswith(MODULE_RELOCS_PREFIX):
            out.sections.append(sec.name)
            _read_records(elf, sec, out)
    if out.sections and elf.symtab is not None:
        names = set(out.sections)
        for sym in elf.symtab.symbols:
            home = sym.section
            if home is not None and home.name in names and not sym.is_section_symbol:
                out.symbol_names.add(sym.name)
    return out


def _read_records(elf: ElfFile, sec: Section, out: ModuleRelocs) -> None:
    """The choices of one ``.klp.module_relocs.<obj>`` section, or its errors."""
    obj = sec.name[len(MODULE_RELOCS_PREFIX) :]
    if not valid_object_name(obj):
        out.errors.append(
            f"{sec.name}: '{obj}' is not a valid object name "
            f"(1-{MODULE_NAME_MAX} characters, no '.')"
        )
        return
    data = sec.data
    if len(data) % MODULE_RELOC_SIZE:
        out.errors.append(
            f"{sec.name}: size {len(data)} is not a multiple of "
            f"{MODULE_RELOC_SIZE} (struct klp_module_reloc)"
        )
        return
    relocs = _record_relocations(elf, sec, out)
    nrec = len(data) // MODULE_RELOC_SIZE
    if len(relocs) != nrec:
        out.errors.append(f"{sec.name}: {nrec} records but {len(relocs)} relocations")
        return
    byteorder: Literal["little", "big"] = "little" if elf.little_endian else "big"
    for i in range(nrec):
        r = relocs.get(i * MODULE_RELOC_SIZE)
        if r is None or r.symbol is None or not r.symbol.name:
            out.errors.append(f"{sec.name}: record {i} does not name a symbol")
            continue
        sympos = int.from_bytes(data[i * 12 + 8 : i * 12 + 12], byteorder)
        if not r.symbol.is_undefined:
            out.errors.append(
                f"{sec.name}: record {i} names '{r.symbol.name}', which the "
                "livepatch defines itself"
            )
            continue
        out.referenced.add(r.symbol.name)
        out.choices.append(
            Choice(r.symbol.name, obj, sympos, f"KLP_MODULE_RELOC({obj}) record {i}")
        )


def _record_relocations(elf: ElfFile, sec: Section, out: ModuleRelocs) -> dict[int, Relocation]:
    """Offset -> the relocation of each record's symbol field."""
    relocs: dict[int, Relocation] = {}
    for rs in elf.relocations_for(sec):
        for r in rs.relocations:
            if r.offset in relocs or r.offset % MODULE_RELOC_SIZE:
                out.errors.append(
                    f"{sec.name}: relocation at {r.offset:#x} is not the "
                    f"symbol field of a {MODULE_RELOC_SIZE}-byte record"
                )
                continue
            relocs[r.offset] = r
    return relocs


@dataclass(frozen=True)
class Intermediate:
    """A parsed ``.klp.sym.rela.<lp_obj>.<sym_obj>.<sym>,<pos>`` name."""

    lp_object: str  # the object gating the relocations (patched object)
    object: str  # the object defining the symbol
    name: str
    sympos: int
    form: str  # "v2" (',<pos>') or "v3" ('.<pos>')


def format_intermediate(lp_object: str, obj: str, name: str, sympos: int) -> str:
    """The v2 intermediate name (``<sym>,<pos>``: it carries dotted names such as
    ``var.12`` or ``foo.constprop.0``) that :func:`parse_intermediate` reads back."""
    return f"{INTERMEDIATE_PREFIX}{lp_object}.{obj}.{name},{sympos}"


def parse_intermediate(name: str) -> Intermediate | str | None:
    """None when ``name`` is not an intermediate symbol; an error text when it is one
    but malformed; else the parsed :class:`Intermediate`."""
    if not name.startswith(INTERMEDIATE_PREFIX):
        return None
    rest = name[len(INTERMEDIATE_PREFIX) :]
    parts = rest.split(".", 2)
    bad = (
        f"intermediate symbol '{name}' is not .klp.sym.rela.<lp_obj>.<sym_obj>.<sym>,<pos> "
        "(v1/v2) or .klp.sym.rela.<lp_obj>.<sym_obj>.<sym>.<pos> (v3)"
    )
    if len(parts) != 3 or not parts[2]:
        return bad
    lp_obj, sym_obj, tail = parts
    if "," in tail:
        sym, _, pos = tail.rpartition(",")
        form = "v2"
    else:
        sym, _, pos = tail.rpartition(".")
        form = "v3"
        if "." in sym:
            return (
                f"intermediate symbol '{name}': the v3 form '<sym>.<pos>' cannot carry a "
                f"dotted symbol name ('{sym}'; the kernel tool reads it with %511[^.]); "
                "use the v2 form '<sym>,<pos>' or --map"
            )
    if not sym or not pos.isdigit():
        return bad
    for obj in (lp_obj, sym_obj):
        if not valid_object_name(obj):
            return (
                f"intermediate symbol '{name}': '{obj}' is not a valid object name "
                f"(1-{MODULE_NAME_MAX} characters, no '.')"
            )
    try:
        sympos = parse_decimal(pos, "position", limit=SYMPOS_MAX)
    except InputError as e:
        return f"intermediate symbol {shown(name, 100)}: {e}"
    return Intermediate(lp_obj, sym_obj, sym, sympos, form)


def parse_map_entry(text: str, source: str) -> Choice | str:
    """``NAME=OBJ[,POS]`` -> Choice, or an error text."""
    name, sep, rhs = text.strip().partition("=")
    name = name.strip()
    obj, _, pos = rhs.strip().partition(",")
    obj = obj.strip()
    pos = pos.strip()
    if not sep or not name or not obj:
        return f"{source}: '{text.strip()}' is not NAME=OBJ[,POS]"
    if not valid_object_name(obj):
        return (
            f"{source}: '{obj}' is not a valid object name (1-{MODULE_NAME_MAX} characters, no '.')"
        )
    if not pos:
        return Choice(name, obj, None, source)
    try:
        return Choice(name, obj, parse_decimal(pos, "position", limit=SYMPOS_MAX), source)
    except InputError as e:
        return f"{source}: {e}"


def parse_map_text(text: str, path: str) -> tuple[list[Choice], list[str]]:
    """A map file: one ``NAME=OBJ[,POS]`` a line; blank lines and ``#`` comments ignored."""
    choices: list[Choice] = []
    errors: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0]
        if not line.strip():
            continue
        got = parse_map_entry(line, f"{path}:{lineno}")
        if isinstance(got, str):
            errors.append(got)
        else:
            choices.append(got)
    return choices, errors

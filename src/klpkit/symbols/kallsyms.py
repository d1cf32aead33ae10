"""Source: a saved ``/proc/kallsyms`` (kernel order as printed; module symbols carry
``[module]``) and optionally ``/proc/modules`` for dependencies."""

from __future__ import annotations

import os

from klpkit.errors import InputError
from klpkit.fileio import read_regular
from klpkit.numbers import parse_hex
from klpkit.symbols import rules
from klpkit.symbols.db import SymbolDB
from klpkit.symbols.finish import finish
from klpkit.symbols.model import ObjectRecord, SymbolSet
from klpkit.symbols.speed import gc_paused
from klpkit.symbols.symvers import Export

MAX_KALLSYMS = 1 << 30  # a distribution kernel's /proc/kallsyms: ~20 MiB
MAX_MODULES = 64 << 20  # /proc/modules: a line per loaded module


def build_from_kallsyms_file(
    kallsyms: str | os.PathLike,
    modules: str | os.PathLike | None = None,
    *,
    release: str | None = None,
    db: str | os.PathLike | None = None,
    symvers: str | os.PathLike | None = None,
) -> SymbolDB:
    """:func:`build_from_kallsyms` of the files (regular files, bounded in size: a FIFO
    or ``/dev/zero`` is refused)."""
    text = read_regular(kallsyms, MAX_KALLSYMS, "kallsyms file")
    mods = read_regular(modules, MAX_MODULES, "modules file") if modules else None
    return build_from_kallsyms(
        text.decode("utf-8", "surrogateescape"),
        mods.decode("utf-8", "surrogateescape") if mods is not None else None,
        release=release,
        db=db,
        symvers=symvers,
        sources=[os.path.abspath(p) for p in (kallsyms, modules) if p],
        where=os.fspath(kallsyms),
    )


@gc_paused
def build_from_kallsyms(
    kallsyms_text: str,
    modules_text: str | None = None,
    *,
    release: str | None = None,
    db: str | os.PathLike | None = None,
    symvers: str | os.PathLike | None = None,
    sources: list[str] | None = None,
    where: str = "/proc/kallsyms",
) -> SymbolDB:
    """A saved ``/proc/kallsyms`` (kernel order as printed) and optionally
    ``/proc/modules``; ``where`` names the kallsyms file in errors.

    In /proc/kallsyms a module symbol's letter case says *exported* (upper) rather
    than binding (``s_show()`` in kernel/kallsyms.c upper-cases the letter of a module
    symbol that is exported), so module bindings are recorded as 'unknown'.
    """
    if not release:
        release = os.uname().release
    pairs, exported = _parse(kallsyms_text, where)
    symset = SymbolSet(release, "kallsyms", "", list(sources or []))
    users = _users(modules_text) if modules_text else None
    for obj, rows in pairs.items():
        rec = ObjectRecord.from_pairs(
            obj,
            "vmlinux" if obj == "vmlinux" else "module",
            None,
            symset.next_oid,
            rows,
            where=where,
        )
        names = {n for n, _f in rows}
        ks = {n[len("__ksymtab_") :] for n in names if n.startswith("__ksymtab_")}
        rec.exports = [
            Export(n, obj, "", None, None)  # type unknown
            for n in sorted(ks | exported.get(obj, set()))
            if n in names
        ]
        if users is not None:
            rec.depends = sorted(users.get(obj, []))
        symset.add_object(rec)
    return finish(symset, symvers, db)


def _parse(text: str, where: str) -> tuple[dict[str, list[tuple[str, int]]], dict[str, set]]:
    """object -> [(name, flags)] in the file's order (vmlinux first), and object ->
    names its letters say are exported."""
    objs: dict[str, list[tuple[str, int]]] = {"vmlinux": []}
    exported: dict[str, set] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3 or len(parts[1]) != 1:
            raise InputError(f"line {lineno}: expected 'ADDRESS TYPE NAME [[MODULE]]'", path=where)
        parse_hex(parts[0], "address", where=f"{where}:{lineno}")
        letter, name = parts[1], parts[2]
        obj = "vmlinux"
        if len(parts) > 3:
            obj = parts[3].strip("[]")
            if obj.startswith("__builtin") or obj == "bpf":
                continue
        if letter in "Uu":
            continue
        rows = objs.setdefault(obj, [])
        if obj == "vmlinux":
            flags = rules.letter_flags(letter)
        else:
            flags = rules.KALLSYMS_BIND_UNKNOWN | (rules.letter_flags(letter) & 0xF0)
            if letter.isupper():
                exported.setdefault(obj, set()).add(name)
        rows.append((name, flags))
    return objs, exported


def _users(modules_text: str) -> dict[str, list[str]]:
    """module -> the modules it uses, from /proc/modules' "used by" column."""
    users: dict[str, list[str]] = {}
    for line in modules_text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            for user in parts[3].split(","):
                if user and user != "-":
                    users.setdefault(user, []).append(parts[0])
    return users

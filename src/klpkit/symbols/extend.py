"""Adding out-of-tree modules to a kernel's symbol database.

A livepatch for an out-of-tree module (a vendor driver, a test target) needs that
module's symbols exactly like those of an in-tree one: its kallsyms order for sympos,
its exports for case B. The module must be built for the database's kernel (its
vermagic names the same release), because sympos and exports are only meaningful
against the objects it will be loaded beside.
"""

from __future__ import annotations

import os
from pathlib import Path

from klpkit.errors import InputError
from klpkit.symbols.db import SymbolDB, add_objects
from klpkit.symbols.elf_objects import read_module
from klpkit.symbols.model import ObjectRecord


def add_modules(
    db: SymbolDB, modules: list[str | os.PathLike], dest: str | os.PathLike | None = None
) -> SymbolDB:
    """Add ``modules`` to ``db`` (in place, or into a copy at ``dest``); returns it opened.

    The new file is written next to its destination and renamed into place, so a
    failure (an unreadable module, one of another kernel, a name already present)
    leaves the database as it was.
    """
    target = Path(dest if dest is not None else db.path)
    release = db.release
    path = add_objects(db, _read_modules(db, modules), target)
    if dest is None:
        db.close()
    return SymbolDB.open(path, release=release)


def _read_modules(db: SymbolDB, modules: list[str | os.PathLike]) -> list[ObjectRecord]:
    known = set(db.objects())
    records = []
    for path in modules:
        oid = len(known)
        rec, modinfo = read_module(os.fspath(path), oid=oid)
        if modinfo.release and modinfo.release != db.release:
            raise InputError(
                f"module is built for kernel {modinfo.release}, the database is for {db.release}",
                path=path,
            )
        if rec.name in known:
            raise InputError(f"a module named {rec.name} is already in the database", path=path)
        known.add(rec.name)
        records.append(rec)
    return records

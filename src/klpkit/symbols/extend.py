"""Adding out-of-tree modules to a kernel's symbol database.

A livepatch for an out-of-tree module (a vendor driver, a test target) needs that
module's symbols exactly like those of an in-tree one: its kallsyms order for sympos,
its exports for case B. The module must be built for the database's kernel (its
vermagic names the same release), because sympos and exports are only meaningful
against the objects it will be loaded beside.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from klpkit.errors import InputError
from klpkit.symbols.build import read_module
from klpkit.symbols.db import SymbolDB
from klpkit.symbols.pages import make_pages, make_records


def add_modules(
    db: SymbolDB, modules: list[str | os.PathLike], dest: str | os.PathLike | None = None
) -> SymbolDB:
    """Add ``modules`` to ``db`` (in place, or into a copy at ``dest``); returns it opened.

    The new file is written next to its destination and renamed into place, so a
    failure (an unreadable module, one of another kernel, a name already present)
    leaves the database as it was.
    """
    target = Path(dest if dest is not None else db.path)
    records = _read_modules(db, modules)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(db.path, tmp)
        _insert(tmp, records, db.records())
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    if dest is None:
        db.close()
    return SymbolDB.open(target, release=db.release)


def _read_modules(db: SymbolDB, modules) -> list:
    known = set(db.objects())
    records = []
    for path in modules:
        rec, modinfo = read_module(os.fspath(path))
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


def _insert(path: str, records, rows: list[bytes]) -> None:
    """Add ``records`` to the copy at ``path``; ``rows`` are the symbol records it holds.
    The symbol pages are rewritten whole: new names fall between existing ones."""
    conn = sqlite3.connect(path)
    try:
        (next_id,) = conn.execute("SELECT COALESCE(MAX(id), -1) + 1 FROM objects").fetchone()
        for oid, rec in enumerate(records, next_id):
            conn.execute(
                "INSERT INTO objects VALUES (?,?,?,?,?)",
                (oid, rec.name, "module", rec.path, ",".join(rec.depends)),
            )
            rows.extend(make_records(oid, rec.pairs()))
            conn.executemany(
                "INSERT OR REPLACE INTO exports VALUES (?,?,?,?,?)",
                [(e.name, oid, e.export_type, e.namespace, e.crc) for e in rec.exports],
            )
        rows.sort()
        conn.execute("DELETE FROM symbol_pages")
        conn.executemany("INSERT INTO symbol_pages VALUES (?,?)", make_pages(rows))
        _update_meta(conn, records)
        conn.commit()
    finally:
        conn.close()


def _update_meta(conn: sqlite3.Connection, records) -> None:
    """Keep the provenance and the counts `symbols info` shows true."""
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    counts = json.loads(meta.get("counts", "{}"))
    counts["objects"] = conn.execute("SELECT COUNT(*) FROM objects").fetchone()[0]
    counts["symbols"] = counts.get("symbols", 0) + sum(len(r.rows) for r in records)
    counts["exports"] = conn.execute("SELECT COUNT(*) FROM exports").fetchone()[0]
    sources = json.loads(meta.get("sources", "[]")) + [os.path.abspath(r.path) for r in records]
    conn.executemany(
        "INSERT OR REPLACE INTO meta VALUES (?,?)",
        [("counts", json.dumps(counts)), ("sources", json.dumps(sources))],
    )

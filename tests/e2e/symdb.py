"""The Debian symbol database plus the test's own target modules.

The scenario targets (e2e_target, e2e_dup) are built in the test run, so they are not in
the Debian database; a livepatch author patching an out-of-tree module has the same
need.  :func:`with_modules` copies the session's database file and adds the modules'
rows with the builder's own reader (``read_module``: kernel-order symbols, exports with
CRCs), so the copy is a real :class:`SymbolDB` for ``convert`` and ``check``.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from klpkit.symbols import SymbolDB
from klpkit.symbols.build import read_module


def with_modules(base: SymbolDB, modules: list[Path], dest: Path) -> SymbolDB:
    shutil.copyfile(base.path, dest)
    conn = sqlite3.connect(dest)
    try:
        (next_id,) = conn.execute("SELECT COALESCE(MAX(id), -1) + 1 FROM objects").fetchone()
        for oid, path in enumerate(modules, next_id):
            rec, _modinfo = read_module(str(path), oid=oid)
            conn.execute("INSERT INTO objects VALUES (?,?,?,?,?)",
                         (oid, rec.name, "module", str(path), ",".join(rec.depends)))
            conn.executemany("INSERT INTO symbols VALUES (?,?,?,?)", rec.rows)
            conn.executemany("INSERT OR REPLACE INTO exports VALUES (?,?,?,?,?)",
                             [(e.name, oid, e.export_type, e.namespace, e.crc)
                              for e in rec.exports])
        conn.commit()
    finally:
        conn.close()
    return SymbolDB.open(dest)

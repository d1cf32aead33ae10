"""The kernel symbol database: every symbol of a target kernel with the livepatch
core's sympos semantics, exports and module dependencies.

    from klpkit.symbols import SymbolDB
    db = SymbolDB.open(path)
    db.lookup("cdrom_check_events", object="cdrom")  # -> [SymbolEntry(...)]

vmlinux's symbols can come from the kernel image alone (its kallsyms tables, see
:mod:`klpkit.symbols.vmlinuz`) or from an unstripped vmlinux; both give the same
database.  Builders (:mod:`klpkit.symbols.build`: one module per source) write one
SQLite file per kernel release (see :func:`default_db_path`) and return the opened
database; :mod:`klpkit.symbols.db` owns that file.  The sympos rules and the kernel
versions they hold for are documented in :mod:`klpkit.symbols.rules`; what the
policy code may ask of a database is :class:`SymbolLookup`.
"""

from klpkit.symbols.build import (
    build_from_debian,
    build_from_kallsyms,
    build_from_kallsyms_file,
    build_from_tree,
    build_from_vmlinuz,
    cache_dir,
    default_db_path,
)
from klpkit.symbols.db import SymbolDB, SymbolDBError, SymbolEntry
from klpkit.symbols.extend import add_modules
from klpkit.symbols.protocol import SymbolDatabase, SymbolLookup
from klpkit.symbols.symbols_list import export_symbols_list, import_symbols_list

__all__ = [
    "SymbolDB",
    "SymbolDBError",
    "SymbolDatabase",
    "SymbolEntry",
    "SymbolLookup",
    "add_modules",
    "build_from_debian",
    "build_from_kallsyms",
    "build_from_kallsyms_file",
    "build_from_tree",
    "build_from_vmlinuz",
    "cache_dir",
    "default_db_path",
    "export_symbols_list",
    "import_symbols_list",
]

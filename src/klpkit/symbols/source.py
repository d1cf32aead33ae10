"""Opening the symbol source a command is given: a klpkit database, or klp-convert's
Symbols.list (imported into a temporary database for the duration of the command), so
every command accepts the file a kernel build's klp-convert uses."""

from __future__ import annotations

import contextlib
import os
import tempfile

from klpkit.errors import KlpkitError
from klpkit.symbols.db import SymbolDB
from klpkit.symbols.paths import default_db_path
from klpkit.symbols.symbols_list import import_symbols_list, is_symbols_list


def module_release(path) -> str | None:
    """The kernel release a module was built for (vermagic), or None if unreadable.

    Reads only the section headers and .modinfo: the command reads the whole module
    itself afterwards (and reports it if it is unreadable)."""
    from klpkit.elf.fast import open_scan
    from klpkit.kernel.modinfo import Modinfo

    try:
        with open_scan(path, symbols=False) as scan:
            return Modinfo.parse(scan.section_data(".modinfo")).release
    except KlpkitError:
        return None


def open_symbols(path, module_path, stack: contextlib.ExitStack) -> SymbolDB:
    """The symbol database for ``module_path``: ``path`` (a database or a Symbols.list),
    else the cached database of the module's release. Closed when ``stack`` closes."""
    release = module_release(module_path)
    if path is None:
        path = default_db_path(release)
    if os.path.isfile(path) and is_symbols_list(path):
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="klpkit-symbols-"))
        db = import_symbols_list(path, release=release, db=os.path.join(tmp, "symbols.sqlite"))
    else:
        db = SymbolDB.open(path)
    stack.callback(db.close)
    return db

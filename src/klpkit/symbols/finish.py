"""What every builder ends with: the release settled, Module.symvers read, the
database written and opened."""

from __future__ import annotations

import os
from typing import Literal

from klpkit.errors import InputError, KlpkitError
from klpkit.symbols.db import SymbolDB, write_db
from klpkit.symbols.elf_objects import Progress
from klpkit.symbols.model import SymbolSet
from klpkit.symbols.paths import default_db_path
from klpkit.symbols.symvers import read_symvers

#: what the builders take for ``progress``: the command's callable, or nothing
ProgressArg = Progress | Literal[False] | None


def finish(
    symset: SymbolSet,
    symvers: str | os.PathLike | None,
    db: str | os.PathLike | None,
) -> SymbolDB:
    """Exports from ``symvers`` when given, then the database at ``db`` (else the
    release's cache file), opened."""
    if symvers is not None:
        symset.symvers = read_symvers(symvers)
        symset.symvers_path = os.path.abspath(symvers)
        symset.sources.append(symset.symvers_path)
    return SymbolDB.open(write_db(symset, default_db_path(symset.release, db)))


def settle_release(
    asked: str | None, found: str | None, source: str | os.PathLike, what: str
) -> str:
    """The release of a build: the one the input says, which must be the one asked for."""
    if asked and found and asked != found:
        raise KlpkitError(f"{source} is kernel {found}, not {asked}")
    if not (asked or found):
        raise InputError(
            f"cannot tell the kernel release of the {what}; pass --release", path=source
        )
    return asked or found or ""

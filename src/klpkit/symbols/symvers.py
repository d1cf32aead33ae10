"""Module.symvers: ``CRC<TAB>symbol<TAB>module path<TAB>export type<TAB>namespace``.

The module path is ``vmlinux`` or the module's path without ``.ko`` relative to
the build tree (``drivers/cdrom/cdrom``); the in-kernel object name is its base
name with ``-`` → ``_``.  Older files (< v5.4) have no namespace column.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import NamedTuple

from klpkit.errors import InputError
from klpkit.fileio import read_regular
from klpkit.numbers import parse_hex


class Export(NamedTuple):
    """One exported symbol. (A NamedTuple: a kernel has ~30,000 and a frozen
    dataclass costs several times more to make.)"""

    name: str
    object: str
    export_type: str
    namespace: str | None
    crc: int | None


@lru_cache(maxsize=8192)  # ~30,000 exports name ~4,000 objects
def object_name_of(module_path: str) -> str:
    if module_path == "vmlinux":
        return "vmlinux"
    base = module_path.rsplit("/", 1)[-1]
    if base.endswith(".ko"):
        base = base[:-3]
    return base.replace("-", "_")


def parse_symvers(text: str, path: str | None = None) -> dict[str, Export]:
    """name → Export.  Raises InputError naming the line for malformed input.

    (Comprehensions over all lines, the checks apart: a kernel's file has ~30,000
    lines and a symbol database build reads it.)"""
    rows = [line.split("\t") for line in text.splitlines()]
    for lineno in (i for i, cols in enumerate(rows, 1) if len(cols) < 4):
        if "".join(rows[lineno - 1]).strip():  # (blank lines are allowed)
            raise InputError(
                f"line {lineno}: expected CRC, symbol, module, export type separated by tabs",
                path=path,
            )
    crcs = [c[0] for c in rows if len(c) >= 4]
    if not all(map(_CRC.fullmatch, crcs)):  # (one C-level check per line; the message:)
        for lineno, cols in enumerate(rows, 1):
            if len(cols) >= 4:
                parse_hex(cols[0], "CRC", where=f"{path}:{lineno}", limit=0xFFFFFFFF)
    return {
        c[1]: Export(
            c[1],
            object_name_of(c[2]),
            c[3],
            c[4] if len(c) > 4 and c[4] else None,
            int(c[0], 16),
        )
        for c in rows
        if len(c) >= 4
    }


# what klpkit.numbers.parse_hex accepts of a 32-bit CRC (modpost writes 0x%08x)
_CRC = re.compile("(?:0[xX])?0*[0-9a-fA-F]{1,8}")
MAX_SYMVERS = 256 << 20  # a distribution kernel's Module.symvers: ~2 MiB


def read_symvers(path: str | os.PathLike) -> dict[str, Export]:
    data = read_regular(path, MAX_SYMVERS, "Module.symvers")
    return parse_symvers(data.decode("utf-8", "surrogateescape"), str(path))

"""Module.symvers: ``CRC<TAB>symbol<TAB>module path<TAB>export type<TAB>namespace``.

The module path is ``vmlinux`` or the module's path without ``.ko`` relative to
the build tree (``drivers/cdrom/cdrom``); the in-kernel object name is its base
name with ``-`` → ``_``.  Older files (< v5.4) have no namespace column.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from klpkit.errors import InputError
from klpkit.fileio import read_input


@dataclass(frozen=True, slots=True)
class Export:
    name: str
    object: str
    export_type: str
    namespace: str | None
    crc: int | None


def object_name_of(module_path: str) -> str:
    if module_path == "vmlinux":
        return "vmlinux"
    base = module_path.rsplit("/", 1)[-1]
    if base.endswith(".ko"):
        base = base[:-3]
    return base.replace("-", "_")


def parse_symvers(text: str, path: str | None = None) -> dict[str, Export]:
    """name → Export.  Raises InputError naming the line for malformed input."""
    out: dict[str, Export] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 4:
            raise InputError(f"line {lineno}: expected CRC, symbol, module, export type "
                             f"separated by tabs", path=path)
        crc_s, name, module, etype = cols[:4]
        ns = cols[4] if len(cols) > 4 and cols[4] else None
        try:
            crc = int(crc_s, 16)
        except ValueError:
            raise InputError(f"line {lineno}: bad CRC {crc_s!r}", path=path) from None
        out[name] = Export(name, object_name_of(module), etype, ns, crc)
    return out


def read_symvers(path: str | os.PathLike) -> dict[str, Export]:
    data = read_input(path)
    return parse_symvers(data.decode("utf-8", "surrogateescape"), str(path))

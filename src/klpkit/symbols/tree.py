"""Source: a kernel build tree (``vmlinux``, every ``*.ko`` under it, ``Module.symvers``,
``include/config/kernel.release``)."""

from __future__ import annotations

import os
from pathlib import Path

from klpkit.errors import InputError
from klpkit.fileio import read_regular
from klpkit.symbols.db import SymbolDB
from klpkit.symbols.elf_objects import find_modules, read_vmlinux, scan_modules
from klpkit.symbols.finish import ProgressArg, finish, settle_release
from klpkit.symbols.model import SymbolSet
from klpkit.symbols.speed import gc_paused

MAX_RELEASE_FILE = 4096  # include/config/kernel.release: one line


@gc_paused
def build_from_tree(
    tree: str | os.PathLike,
    *,
    symvers: str | os.PathLike | None = None,
    release: str | None = None,
    db: str | os.PathLike | None = None,
    skip_bad: bool = False,
    progress: ProgressArg = None,
) -> SymbolDB:
    """A kernel build tree: ``vmlinux``, every ``*.ko`` under it, ``Module.symvers``."""
    tree = Path(tree)
    vmlinux = tree / "vmlinux"
    if not vmlinux.is_file():
        raise InputError("no vmlinux in the build tree", path=tree)
    if symvers is None and (tree / "Module.symvers").is_file():
        symvers = tree / "Module.symvers"
    rec, build_id, banner_rel, vexports = read_vmlinux(vmlinux, derive_exports=symvers is None)
    rel_file = tree / "include" / "config" / "kernel.release"
    tree_rel = None
    if rel_file.is_file():
        raw = read_regular(rel_file, MAX_RELEASE_FILE, "kernel.release file")
        tree_rel = raw.decode("utf-8", "surrogateescape").strip() or None
    release = settle_release(release, tree_rel or banner_rel, tree, "tree")
    rec.exports = vexports
    symset = SymbolSet(release, "tree", build_id, [str(vmlinux.resolve())], [rec])
    mods = [p for p in find_modules(tree) if "/.tmp" not in p]
    scan_modules(
        mods,
        symset,
        release=release,
        skip_bad=skip_bad,
        derive_exports=symvers is None,
        progress=progress or None,
    )
    symset.sources.append(str(tree.resolve()))
    return finish(symset, symvers, db)

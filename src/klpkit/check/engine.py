"""``check_module()``: run every rule family over one module."""

from __future__ import annotations

import os

from klpkit.check import (
    deps_rules,
    elf_rules,
    func_rules,
    klp_rules,
    loaded_rules,
    modinfo_rules,
    symbol_rules,
)
from klpkit.check.context import Context
from klpkit.check.findings import Finding, Place, Severity
from klpkit.errors import KlpkitError
from klpkit.fileio import read_input
from klpkit.kernel.kver import kernel_version as _kernel_version
from klpkit.kernel.kver import parse_kernel_version  # noqa: F401 - klpkit.check's API
from klpkit.symbols.db import SymbolDBError
from klpkit.symbols.protocol import SymbolLookup

FAMILIES = (elf_rules, modinfo_rules, symbol_rules, klp_rules, func_rules, loaded_rules, deps_rules)

#: Families that are the livepatch core's alone: they run only for a module that
#: registers a livepatch (klp_enable_patch(): klpkit.kernel.klp.registers_patch); the
#: module loader's rules hold for every module.
LIVEPATCH_CORE = (func_rules, loaded_rules)


def check_bytes(
    data: bytes,
    db: SymbolLookup | None,
    kernel_version=None,
    *,
    path: str = "module.ko",
    name: str | None = None,
    loaded=(),
    running=None,
) -> list[Finding]:
    kver = _kernel_version(kernel_version, getattr(db, "release", None))
    ctx = Context(path=path, data=data, db=db, kver=kver, loaded=[os.fspath(p) for p in loaded])
    ctx.running = running  # check --loaded-from-sysfs: loaded_rules.read_sysfs()
    if name:
        ctx.name = name
    for family in FAMILIES:
        if family in LIVEPATCH_CORE and not ctx.registers:
            continue
        try:
            cont = family.run(ctx)
        except KlpkitError as e:  # a malformed part the model refuses: report, go on
            if ctx.elf is None or isinstance(e, SymbolDBError):
                raise  # the module itself, or the database, unreadable: check cannot judge
            ctx.add("elf.parse", Place(), f"{family.__name__.rsplit('.', 1)[-1]}: {e}")
            cont = False
        if cont is False:
            break
    return sort_findings(ctx.findings)


def check_module(
    path: str | os.PathLike,
    db: SymbolLookup | None,
    kernel_version=None,
    *,
    loaded=(),
    running=None,
) -> list[Finding]:
    """Every finding for the module at ``path`` against ``db`` (a SymbolDB) on kernel
    ``kernel_version`` (``"6.1"``, ``(6, 1)``; default: the database's release), loaded
    after the livepatches ``loaded`` (paths, in their load order) or into a running
    system's (``running``: :func:`klpkit.check.loaded_rules.read_sysfs`).

    Findings come in the order the kernel meets them: the first error is the failure
    a real load would report (``first_error()``)."""
    return check_bytes(
        read_input(path),
        db,
        kernel_version,
        path=os.fspath(path),
        loaded=loaded,
        running=running,
    )


_RANK = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.NOTE: 2}


def sort_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (f.stage, f.details.get("_order", 0)))


def first_error(findings: list[Finding]) -> Finding | None:
    """The error the kernel would hit first (findings in kernel order), or None."""
    return next((f for f in sort_findings(findings) if f.severity is Severity.ERROR), None)


def exit_code(findings: list[Finding]) -> int:
    """0: loads and resolves; 1: at least one error (as for ``klpkit deps``)."""
    return 1 if any(f.severity is Severity.ERROR for f in findings) else 0

"""``check_module()``: run every rule family over one module."""

from __future__ import annotations

import os

from klpkit.check import (
    deps_rules,
    elf_rules,
    func_rules,
    klp_rules,
    modinfo_rules,
    symbol_rules,
)
from klpkit.check.context import Context
from klpkit.check.findings import Finding, Place, Severity
from klpkit.errors import InputError, KlpkitError
from klpkit.fileio import read_input

FAMILIES = (elf_rules, modinfo_rules, symbol_rules, klp_rules, func_rules, deps_rules)


def parse_kernel_version(text) -> tuple[int, int]:
    """``"6.1"``, ``"6.1.0-47-amd64"``, ``(6, 1)`` -> ``(6, 1)``."""
    if isinstance(text, tuple):
        return tuple(text[:2])
    import re

    m = re.match(r"\s*(\d+)\.(\d+)", str(text))
    if not m:
        raise InputError(f"kernel version '{text}' is not MAJOR.MINOR (e.g. 6.1)")
    return int(m.group(1)), int(m.group(2))


def _default_kernel_version(db) -> tuple[int, int]:
    try:
        return parse_kernel_version(db.release)
    except (InputError, AttributeError, KeyError):
        return (6, 1)


def check_bytes(data: bytes, db, kernel_version=None, *, path: str = "module.ko",
                name: str | None = None) -> list[Finding]:
    kver = (parse_kernel_version(kernel_version) if kernel_version is not None
            else _default_kernel_version(db))
    ctx = Context(path=path, data=data, db=db, kver=kver)
    if name:
        ctx.name = name
    for family in FAMILIES:
        try:
            cont = family.run(ctx)
        except KlpkitError as e:  # a malformed part the model refuses: report, go on
            ctx.add("elf.parse", Place(), f"{family.__name__.rsplit('.', 1)[-1]}: {e}")
            cont = False
        if cont is False:
            break
    return sort_findings(ctx.findings)


def check_module(path: str | os.PathLike, db, kernel_version=None) -> list[Finding]:
    """Every finding for the module at ``path`` against ``db`` (a SymbolDB) on kernel
    ``kernel_version`` (``"6.1"``, ``(6, 1)``; default: the database's release).

    Findings come in the order the kernel meets them: the first error is the failure
    a real load would report (``first_error()``)."""
    return check_bytes(read_input(path), db, kernel_version, path=os.fspath(path))


_RANK = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.NOTE: 2}


def sort_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (f.stage, f.details.get("_order", 0)))


def first_error(findings: list[Finding]) -> Finding | None:
    """The error the kernel would hit first (findings in kernel order), or None."""
    return next((f for f in sort_findings(findings) if f.severity is Severity.ERROR), None)


def exit_code(findings: list[Finding]) -> int:
    """0: loads and resolves; 1: at least one error (as for ``klpkit deps``)."""
    return 1 if any(f.severity is Severity.ERROR for f in findings) else 0

"""``klpkit check``: predict, offline, whether a livepatch module loads and resolves
on a target kernel, by the module loader's and the livepatch core's own rules.

    from klpkit.check import check_module, first_error, RULES
    findings = check_module("lp.ko", db, "6.1")      # db: klpkit.symbols.SymbolDB
    for f in findings:
        f.severity, f.rule, f.place, f.message, f.kernel_message
        f.matches(dmesg_line)       # prediction == observation

Rule families (one module each): :mod:`.elf_rules` (ELF sanity, relocation types and
target bytes), :mod:`.modinfo_rules` (vermagic, module_layout, livepatch tag,
klp_object names), :mod:`.symbol_rules` (normal undefined symbols: exports, GPL,
namespaces, CRCs), :mod:`.klp_rules` (``.klp.rela`` sections and ``.klp.sym``
symbols), :mod:`.func_rules` (the replaced functions: each ``struct klp_func``'s
``old_name``/``old_sympos`` resolved as klp_init_object_loaded() does).  :data:`RULES` lists every rule with the kernel version it starts in.

Any module can be checked: the module loader's rules hold for every module; the
livepatch core's (the livepatch tag, the klp_objects and klp_funcs) only for a module
that registers a patch -- one that calls klp_enable_patch()
(:func:`klpkit.kernel.klp.registers_patch`): the core never sees the others.  The kernel
facts the rules apply (when a livepatch relocation section is applied, which symbols a
gate may reach, klp_find_object_symbol()'s count, kernel versions) are
:mod:`klpkit.kernel.klp`'s; ``klpkit deps`` takes its verdicts on livepatch relocations
from :func:`klpkit.check.klp_rules.reference_findings`.
"""

from klpkit.check.engine import (
    check_bytes,
    check_module,
    exit_code,
    first_error,
    parse_kernel_version,
    sort_findings,
)
from klpkit.check.findings import Finding, Place, Severity, Stage
from klpkit.check.rules import RULES, Rule

__all__ = [
    "RULES",
    "Finding",
    "Place",
    "Rule",
    "Severity",
    "Stage",
    "check_bytes",
    "check_module",
    "exit_code",
    "first_error",
    "parse_kernel_version",
    "sort_findings",
]

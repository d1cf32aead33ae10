"""How a module says what it exports: ``EXPORT_SYMBOL*()`` leaves a defined
``__ksymtab_<name>`` symbol (struct kernel_symbol, include/linux/export.h, v4.x .. 6.4),
which find_symbol() searches when another module needs ``<name>``."""

from __future__ import annotations

from klpkit.elf.section import Section

KSYMTAB_PREFIX = "__ksymtab_"


def exported_names(elf) -> list[str]:
    """Names ``elf`` exports (defined ``__ksymtab_<name>`` symbols), sorted, once."""
    symtab = elf.symtab
    if symtab is None:
        return []
    return sorted(
        {
            s.name[len(KSYMTAB_PREFIX) :]
            for s in symtab.symbols
            if s.name.startswith(KSYMTAB_PREFIX) and isinstance(s.shndx, Section)
        }
    )

"""Livepatch ELF naming: ``.klp.sym.<obj>.<name>,<pos>`` and ``.klp.rela.<obj>.<sec>``.

Parsing mirrors what the kernel's livepatch core accepts (kernel/livepatch/core.c,
klp_resolve_symbols / klp_apply_section_relocs), including its sscanf limits:
``.klp.sym.%55[^.].%127[^,],%lu`` before v6.1 and ``%511[^,]`` from v6.1
(KSYM_NAME_LEN 128 -> 512), ``.klp.rela.%55[^.]`` for sections. Formatting
always inserts the separator dot after the object name (``.klp.rela.cdrom..text``)
so names of sections without a leading dot still parse (``%55[^.]`` stops at the first
dot: ``.klp.rela.cdromtext`` would read as object ``cdromtext``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from klpkit.elf import constants as C
from klpkit.errors import InputError
from klpkit.kernel.kver import DEFAULT_KERNEL_VERSION
from klpkit.numbers import U64_MAX, parse_decimal

KLP_SYM_PREFIX = ".klp.sym."
KLP_RELA_PREFIX = ".klp.rela."
MODULE_NAME_MAX = 55  # %55 in the kernel's sscanf (MODULE_NAME_LEN - 1 on 64-bit)


def ksym_name_max(kernel_version: tuple[int, int] = DEFAULT_KERNEL_VERSION) -> int:
    """Longest symbol name the kernel's sscanf reads: KSYM_NAME_LEN - 1."""
    return 511 if kernel_version >= (6, 1) else 127


@dataclass(frozen=True)
class KlpSymbolName:
    object: str
    name: str
    sympos: int

    def __str__(self) -> str:
        return klp_symbol_name(self.object, self.name, self.sympos)


def klp_symbol_name(obj: str, name: str, sympos: int) -> str:
    return f"{KLP_SYM_PREFIX}{obj}.{name},{sympos}"


def klp_rela_section_name(obj: str, target_section: str) -> str:
    return f"{KLP_RELA_PREFIX}{obj}.{target_section}"


_SYM_RE = re.compile(r"\.klp\.sym\.([^.]+)\.([^,]+),([0-9]+)$")


def parse_klp_symbol_name(
    name: str, kernel_version: tuple[int, int] = DEFAULT_KERNEL_VERSION
) -> KlpSymbolName | None:
    """Parse as the kernel does; None when the kernel would say 'incorrectly formatted'.

    The kernel's sscanf stops at the field widths (55 / 127 or 511); a longer field
    makes the next literal fail to match, so it is rejected here too.  Its ``%lu``
    takes ASCII digits only; a position wider than ``unsigned long`` wraps there (the
    name never resolves to the symbol meant), so it is refused here as malformed.
    """
    m = _SYM_RE.match(name)
    if not m:
        return None
    obj, sym, pos = m.groups()
    if len(obj) > MODULE_NAME_MAX or len(sym) > ksym_name_max(kernel_version):
        return None
    try:
        sympos = parse_decimal(pos, "position", limit=U64_MAX)
    except InputError:
        return None
    return KlpSymbolName(obj, sym, sympos)


def parse_klp_rela_object(section_name: str) -> str | None:
    """The object a ``.klp.rela.`` section is gated on (``%55[^.]``), else None."""
    if not section_name.startswith(KLP_RELA_PREFIX):
        return None
    rest = section_name[len(KLP_RELA_PREFIX) :]
    obj = rest.split(".", 1)[0]
    if not obj:
        return None
    # sscanf takes at most 55 characters; the kernel then compares that prefix.
    return obj[:MODULE_NAME_MAX]


def is_klp_symbol(sym) -> bool:
    """A symbol the livepatch core resolves at load time: ``st_shndx == SHN_LIVEPATCH``
    (the module loader's simplify_symbols() skips it; klp_resolve_symbols() fills it)."""
    return sym.shndx == C.SHN_LIVEPATCH


def is_klp_rela(section) -> bool:
    """Is ``section`` a livepatch relocation section *to the kernel*: SHF_RELA_LIVEPATCH
    is the only test apply_relocations() (module loader) and klp_apply_object_relocs()
    (livepatch core) make; the name is parsed only afterwards."""
    return bool(section.flags & C.SHF_RELA_LIVEPATCH)


def meant_as_klp_rela(section) -> bool:
    """Was ``section`` meant as one: flagged, or named ``.klp.rela.*``.  A named section
    without the flag is the defect ``klp.rela.flags``: the loader applies it as a normal
    relocation section (with its livepatch symbols' value 0), so every command treats it
    as a broken livepatch relocation section rather than as ordinary relocations."""
    return is_klp_rela(section) or section.name.startswith(KLP_RELA_PREFIX)


def module_name_from_path(path: str) -> str:
    """The in-kernel module name (KBUILD_MODNAME): basename, no suffix, '-' -> '_'."""
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko", ".o"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")

"""The kernel's livepatch rules, each with the kernel function that decides it and the
version it holds from: the one place ``convert``, ``deps`` and ``check`` ask.

* **Who is a livepatch** (:func:`registers_patch`): the livepatch core only ever sees
  a module that calls ``klp_enable_patch()``; the module loader reads the
  ``livepatch`` modinfo tag only to taint the kernel (``check_modinfo_livepatch()``).
* **When a livepatch relocation section is applied** (:func:`when_applied`): by the
  module loader while the module loads (``apply_relocations()`` ->
  ``klp_apply_section_relocs(objname=NULL)``, vmlinux-gated sections, since 5.8), by the
  livepatch core when the patch is enabled or the gating module loads
  (``klp_init_object_loaded()`` -> ``klp_apply_object_relocs()``, only for objects the
  ``klp_patch`` lists), or never.
* **Which symbols a gate may reach** (:func:`gate_problem`, :func:`gate_for_vmlinux`):
  ``klp_resolve_symbols()`` refuses a vmlinux symbol in a module-gated section since
  5.8; a module symbol in a vmlinux-gated section is looked up while the livepatch
  loads; a symbol of another module is found only if that module is loaded when the
  gate's relocations are written (:func:`dependency_problem`).
* **Where a relocation can be applied at all** (:func:`site_problem`): SHT_RELA,
  allocated targets, not the special sections the kernel consumes when the livepatch
  loads, not init code for module-gated ones.
* **Which symbol (object, name, sympos) designates** (:func:`find_object_symbol`):
  ``klp_find_object_symbol()``'s count over the object's kallsyms.

Pure: the rules take names, versions and symbol entries, never files.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

VMLINUX = "vmlinux"

#: "livepatch: Apply vmlinux-specific KLP relocations early" (v5.8): apply_relocations()
#: calls klp_apply_section_relocs(objname=NULL) for every SHF_RELA_LIVEPATCH section, so
#: the module loader writes ``.klp.rela.vmlinux.*`` while any module loads, whatever its
#: klp_object list says.  Before, klp_init_object_loaded() wrote them for the patch's
#: vmlinux klp_object only.
VMLINUX_RELOCS_AT_LOAD = (5, 8)

#: "livepatch: Prevent module-specific KLP rela sections from referencing vmlinux
#: symbols" (v5.8): klp_resolve_symbols() refuses them ("invalid access to vmlinux
#: symbol ... from module-specific livepatch relocation section").
MODULE_GATE_REFUSES_VMLINUX = (5, 8)

#: clear_relocate_add() (v6.3): klp_cleanup_module_patches_limited() clears a module's
#: livepatch relocations when it unloads; before, reloading it meets nonzero targets.
CLEAR_RELOCATE_ADD = (6, 3)

#: "x86/ibt,ftrace: Search for __fentry__ location" (v5.18): klp_patch_func() finds the
#: ftrace site with ftrace_location() ("failed to find location for function");
#: before, ftrace_set_filter_ip() refused an address without one (-EINVAL).
FTRACE_LOCATION = (5, 18)

#: "x86: Add prefix symbols for function padding" (v6.2, CONFIG_CALL_PADDING): the
#: padding before each function is a symbol of its own, ``__pfx_<name>`` (type 't' in
#: kallsyms, counted apart from ``<name>`` by klp_find_object_symbol()); it holds no
#: __fentry__ call, so a klp_func naming it fails in klp_patch_func().
PREFIX_SYMBOLS = (6, 2)
PREFIX = "__pfx_"

#: The symbols through which a module registers a livepatch: klp_enable_patch() (the
#: only one since 5.1, and the one that enables it since 4.0); klp_register_patch()
#: before 5.1.
REGISTER_FUNCTIONS = ("klp_enable_patch", "klp_register_patch")


# --------------------------------------------------------------------- who is a livepatch
def registers_patch(undefined_names: Iterable[str]) -> bool:
    """Does the module hand a ``struct klp_patch`` to the livepatch core?

    The core knows a livepatch only from klp_enable_patch(patch) (klp_register_patch()
    before 5.1), called from the module's init: a module that never calls it is, to
    the kernel, a plain module whatever its modinfo says (check_modinfo_livepatch()
    only taints the kernel for ``livepatch=Y``)."""
    return any(n in REGISTER_FUNCTIONS for n in undefined_names)


# ------------------------------------------------------------------------ when applied
class When(enum.StrEnum):
    """When the kernel writes a livepatch relocation section."""

    LOAD = "load"  # apply_relocations() while the livepatch module loads
    ENABLE = "enable"  # klp_init_object_loaded() from klp_enable_patch()
    OBJECT = "object"  # klp_init_object_loaded() when the gating module is (or gets) loaded
    NEVER = "never"  # nothing ever writes it: its sites keep their zero bytes
    UNKNOWN = "unknown"  # the patched objects are not readable from the file


@dataclass(frozen=True)
class Application:
    """When a ``.klp.rela.<gate>.*`` section is applied, by which kernel function, why."""

    when: When
    by: str
    reason: str

    @property
    def applied(self) -> bool:
        return self.when not in (When.NEVER, When.UNKNOWN)


def when_applied(
    gate: str, objects: Sequence[str] | None, kver: tuple[int, int], registers: bool = True
) -> Application:
    """When the kernel of ``kver`` applies a section gated on ``gate`` in a module whose
    klp_patch lists ``objects`` (None: not readable) and that does (``registers``) or
    does not call klp_enable_patch()."""
    if gate == VMLINUX and kver >= VMLINUX_RELOCS_AT_LOAD:
        return Application(
            When.LOAD,
            "apply_relocations() -> klp_apply_section_relocs()",
            "the module loader applies vmlinux-gated livepatch relocations "
            "while the module loads (since 5.8), whatever its klp_objects",
        )
    if not registers:
        return Application(
            When.NEVER,
            "klp_apply_object_relocs()",
            "the module registers no livepatch (no klp_enable_patch() call): "
            f"the livepatch core never applies sections gated on {gate}",
        )
    if objects is None:
        return Application(
            When.UNKNOWN,
            "klp_apply_object_relocs()",
            "the patched objects are set at run time (not readable from the module's data)",
        )
    if gate not in objects:
        before = (
            " and before 5.8 vmlinux-gated ones only for a vmlinux klp_object"
            if gate == VMLINUX
            else ""
        )
        return Application(
            When.NEVER,
            "klp_apply_object_relocs()",
            f"the klp_patch has no klp_object {gate} "
            f"({', '.join(objects) or 'none'}): the livepatch core applies "
            f"a section only for the objects it patches{before}, so the "
            "sites stay zero",
        )
    if gate == VMLINUX:
        return Application(
            When.ENABLE,
            "klp_init_object_loaded() -> klp_write_object_relocations()",
            "applied by klp_enable_patch() for the vmlinux klp_object (before 5.8)",
        )
    return Application(
        When.OBJECT,
        "klp_init_object_loaded() -> klp_apply_object_relocs()",
        f"applied when the patch is enabled with {gate} loaded, or when {gate} "
        "loads later (klp_module_coming())",
    )


# --------------------------------------------------------------------------- gating
class Gravity(enum.StrEnum):
    REFUSED = "refused"  # the kernel refuses it (an error)
    RISK = "risk"  # works only if something else holds at run time (a warning)


@dataclass(frozen=True)
class GateProblem:
    rule: str  # the check rule that reports it
    gravity: Gravity
    reason: str
    kernel_message: str | None = None


def gate_problem(
    gate: str, sym_object: str, name: str, kver: tuple[int, int]
) -> GateProblem | None:
    """What klp_resolve_symbols() makes of a symbol of ``sym_object`` in a section gated
    on ``gate``."""
    if gate != VMLINUX and sym_object == VMLINUX and kver >= MODULE_GATE_REFUSES_VMLINUX:
        return GateProblem(
            "klp.rela.vmlinux-in-module",
            Gravity.REFUSED,
            f"vmlinux symbol '{name}' in a section gated on {gate}: refused since 5.8 "
            "(klp_resolve_symbols()); gate it on vmlinux (.klp.rela.vmlinux.*)",
            f"livepatch: invalid access to vmlinux symbol '{name}' from module-specific "
            "livepatch relocation section",
        )
    if gate == VMLINUX and sym_object != VMLINUX and kver >= VMLINUX_RELOCS_AT_LOAD:
        return GateProblem(
            "klp.rela.module-in-vmlinux",
            Gravity.RISK,
            f"{sym_object} symbol '{name}' in a vmlinux-gated section: looked up while the "
            f"livepatch loads (apply_relocations(), since 5.8), so {sym_object} must "
            "already be loaded; gate it on the module",
            f"livepatch: symbol '{name}' not found in symbol table",
        )
    return None


def gate_for_vmlinux(objects: Sequence[str], kver: tuple[int, int]) -> str | None:
    """The gate a vmlinux symbol's relocations need so that they are applied: ``vmlinux``
    since 5.8 (the loader writes them, and module gates refuse vmlinux symbols); before,
    ``vmlinux`` when the patch has a vmlinux klp_object, else the first patched module
    (its relocations may reference vmlinux then); None when nothing would apply them."""
    if kver >= VMLINUX_RELOCS_AT_LOAD or VMLINUX in objects:
        return VMLINUX
    return next((o for o in objects if o != VMLINUX), None)


def dependency_problem(gate: str, sym_object: str, gate_depends: Iterable[str]) -> str | None:
    """klp_find_object_symbol() finds a module's symbol only while that module is loaded:
    a symbol of ``sym_object`` in a section gated on module ``gate`` is safe when ``gate``
    depends on it (the loader loads dependencies first), a risk otherwise."""
    if sym_object in (VMLINUX, gate) or gate == VMLINUX or sym_object in gate_depends:
        return None
    return (
        f"'{sym_object}' is not a dependency of '{gate}' in the symbol database: the "
        "symbol may be missing when the relocation is applied"
    )


# --------------------------------------------------------------------- where applied
#: Sections the kernel processes while the *livepatch* module loads (module_finalize(),
#: jump-label/static-call/ftrace init...): a livepatch relocation there is applied too
#: late (module-gated) or into data the kernel already consumed.
SPECIAL_SECTIONS: dict[str, str] = {
    ".altinstructions": "apply_alternatives() consumes it in module_finalize() when the "
    "livepatch loads, before livepatch relocations are applied",
    ".altinstr_replacement": "alternatives are copied in module_finalize() when the "
    "livepatch loads, before livepatch relocations are applied",
    ".altinstr_aux": "alternatives are applied in module_finalize() when the livepatch loads",
    ".parainstructions": "apply_paravirt() patches these sites in module_finalize() when "
    "the livepatch loads",
    "__jump_table": "jump_label_add_module() reads the keys when the livepatch loads; only "
    "vmlinux-gated relocations (applied early, kernel >= 5.8) are there in time",
    ".static_call_sites": "static_call_add_module() resolves the keys when the livepatch "
    "loads, before livepatch relocations are applied",
    "__bug_table": "module_bug_finalize() uses the table from load time on; entries must "
    "point into the livepatch itself",
    "__ex_table": "the exception table is sorted and searched from load time on; entries "
    "must point into the livepatch itself",
    ".orc_unwind_ip": "unwind_module_init() sorts the ORC table when the livepatch loads",
    ".orc_unwind": "unwind_module_init() sorts the ORC table when the livepatch loads",
    ".retpoline_sites": "apply_retpolines() patches these sites in module_finalize() at load",
    ".return_sites": "apply_returns() patches these sites in module_finalize() at load",
    ".call_sites": "call thunks are patched in module_finalize() at load",
    ".ibt_endbr_seal": "apply_ibt_endbr() patches these sites in module_finalize() at load",
    "__mcount_loc": "ftrace_module_init() records these call sites when the livepatch loads",
    "__patchable_function_entries": "ftrace_module_init() records these call sites at load",
    ".smp_locks": "alternatives_smp_module_add() records these lock prefixes at load",
    "__tracepoints_ptrs": "tracepoint_module_coming() reads them when the livepatch loads",
    "__dyndbg": "ddebug_add_module() registers the descriptors when the livepatch loads",
    "__param": "module parameters are parsed when the livepatch loads",
    ".gnu.linkonce.this_module": "the loader reads struct module when the livepatch loads",
    "__ksymtab": "an export of the livepatch must point to its own symbol",
    "__ksymtab_gpl": "an export of the livepatch must point to its own symbol",
    "__kcrctab": "an export of the livepatch must point to its own symbol",
    "__kcrctab_gpl": "an export of the livepatch must point to its own symbol",
    ".static_call.text": "static call trampolines are patched at load",
    "_ftrace_events": "trace events are registered when the livepatch loads",
    "__bpf_raw_tp_map": "BPF raw tracepoints are registered when the livepatch loads",
}

#: The one special case proven safe: vmlinux-gated relocations are applied by the
#: module loader's apply_relocations() *before* module_finalize()/jump-label init (5.8+).
VMLINUX_GATED_ALLOWED = frozenset({"__jump_table"})

INIT_PREFIXES = (".init.", ".exit.")

REASON_INIT = (
    "module-gated livepatch relocations are written when the patched module "
    "loads, possibly after the livepatch's init code has run and been freed"
)
REASON_NOALLOC = (
    "the section is not SHF_ALLOC: the module loader never applies livepatch relocations there"
)
REASON_REL = (
    "SHT_REL: the kernel's livepatch core applies only SHT_RELA sections "
    "(klp_apply_section_relocs -> apply_relocate_add); REL architectures have no "
    "livepatch support, so klpkit does not invent RELA for them"
)


def special_section_problem(target: str, gate: str, kver: tuple[int, int]) -> str | None:
    """Why a livepatch relocation gated on ``gate`` cannot work in ``target``, one of the
    sections the kernel consumes while the livepatch loads (None: it can, or ``target``
    is not one of them)."""
    reason = SPECIAL_SECTIONS.get(target)
    if reason is None:
        return None
    if target in VMLINUX_GATED_ALLOWED and gate == VMLINUX and kver >= VMLINUX_RELOCS_AT_LOAD:
        return None
    return reason


def site_problem(
    target: str, target_alloc: bool, rela: bool, gate: str, kver: tuple[int, int]
) -> str | None:
    """Why a relocation into section ``target`` cannot become a livepatch relocation
    gated on ``gate`` (None when it can)."""
    if not rela:
        return REASON_REL
    if not target_alloc:
        return REASON_NOALLOC
    special = special_section_problem(target, gate, kver)
    if special is not None:
        return f"special section: {special}"
    if gate != VMLINUX and target.startswith(INIT_PREFIXES):
        return REASON_INIT
    return None


# ----------------------------------------------------------------------- resolution
class Found(enum.StrEnum):
    RESOLVED = "resolved"
    NOT_FOUND = "not-found"  # "symbol '%s' not found in symbol table"
    AMBIGUOUS = "ambiguous"  # "unresolvable ambiguity for symbol '%s' in object '%s'"
    POSITION = "position"  # "symbol position %lu for symbol '%s' in object '%s' not found"


#: a symbol database's entry (klpkit.symbols.SymbolEntry): kernel/ only counts them
E = TypeVar("E")


@dataclass(frozen=True)
class Resolution(Generic[E]):
    found: Found
    count: int
    entry: E | None = None  # the entry resolved to

    @property
    def ok(self) -> bool:
        return self.found is Found.RESOLVED


def find_object_symbol(entries: Sequence[E], sympos: int) -> Resolution[E]:
    """klp_find_object_symbol(): ``entries`` are the object's symbols of that name in
    kallsyms order (what the kernel's callback counts); sympos 0 needs exactly one,
    sympos N needs at least N and takes the N-th."""
    count = len(entries)
    if not count:
        return Resolution(Found.NOT_FOUND, 0)
    if sympos == 0 and count > 1:
        return Resolution(Found.AMBIGUOUS, count)
    if sympos > count:
        return Resolution(Found.POSITION, count)
    return Resolution(Found.RESOLVED, count, entries[max(sympos, 1) - 1])


def resolution_message(res: Resolution, obj: str, name: str, sympos: int) -> str | None:
    """The line klp_find_object_symbol() prints for a failed resolution (None if it
    resolved).  The kernel passes objname NULL for vmlinux: '(null)' in the ambiguity
    message, 'vmlinux' in the position one."""
    if res.found is Found.NOT_FOUND:
        return f"livepatch: symbol '{name}' not found in symbol table"
    if res.found is Found.AMBIGUOUS:
        shown = "(null)" if obj == VMLINUX else obj
        return f"livepatch: unresolvable ambiguity for symbol '{name}' in object '{shown}'"
    if res.found is Found.POSITION:
        return (
            f"livepatch: symbol position {sympos} for symbol '{name}' in object '{obj}' not found"
        )
    return None


# ------------------------------------------------------------------ the installed set
#: "livepatch: Add atomic replace" (v5.1): a klp_patch with ``replace`` set disables
#: every installed patch when its transition completes, and klp_add_nops() makes the
#: functions they patched and it does not run their original code again.
ATOMIC_REPLACE = (5, 1)

#: "livepatch: Basic API to track system state changes" (v5.5): klp_enable_patch()
#: refuses a patch klp_is_patch_compatible() rejects.
SYSTEM_STATES = (5, 5)


@dataclass(frozen=True)
class Installed:
    """A livepatch as the core keeps it in klp_patches: its name, states, replace flag
    and the functions it replaces ((object, old_name, sympos) with sympos 0 as 1)."""

    name: str
    states: tuple = ()  # (id, version) pairs
    replace: bool = False
    functions: frozenset = frozenset()


def state_problem(new: Installed, installed: Sequence[Installed]) -> str | None:
    """klp_is_patch_compatible(): every state of every installed patch must be one the
    new patch carries at the same or a later version; a patch without it is accepted
    only when it is not cumulative (replace)."""
    mine = dict(new.states)
    for old in installed:
        for ident, version in old.states:
            if ident not in mine:
                if new.replace:
                    return (
                        f"{old.name} modified system state {ident:#x} (version {version}) "
                        f"and {new.name}, a cumulative livepatch (replace), does not "
                        "handle it"
                    )
            elif mine[ident] < version:
                return (
                    f"{new.name} carries state {ident:#x} at version {mine[ident]}, "
                    f"older than {old.name}'s version {version}"
                )
    return None


def install(new: Installed, installed: Sequence[Installed]) -> list[Installed]:
    """The klp_patches list once ``new`` is enabled: a cumulative patch replaces them all
    (klp_free_replaced_patches_async()), any other one joins the top of the stack."""
    return [new] if new.replace else [*installed, new]


def reverted(new: Installed, installed: Sequence[Installed]) -> dict[str, list]:
    """Functions atomic replace returns to their original code: those the installed
    patches replace and the cumulative ``new`` does not (klp_add_nops())."""
    if not new.replace:
        return {}
    out: dict[str, list] = {}
    for old in installed:
        gone = sorted(old.functions - new.functions)
        if gone:
            out[old.name] = gone
    return out


def stacked_under(new: Installed, installed: Sequence[Installed]) -> dict[str, list]:
    """Functions ``new`` replaces that installed patches replace too: ``new``'s runs (the
    top of klp_ops' func_stack), theirs again once ``new`` is disabled."""
    if new.replace:
        return {}
    out: dict[str, list] = {}
    for old in installed:
        both = sorted(old.functions & new.functions)
        if both:
            out[old.name] = both
    return out

"""Every rule ``klpkit check`` applies, with the kernel version it holds from.

``since``/``until`` bound the kernel versions the rule applies to (``until`` exclusive);
``kernel`` is the message format the kernel prints (None: the kernel says nothing — it
misbehaves silently, or the rule is klpkit's own diagnosis).  Versions marked
``uncertain`` were read from trees whose exact release could not be confirmed.

Sources: kernel/module/main.c (v6.1 and newest; kernel/module.c in v5.4):
elf_validity_check, setup_load_info, check_modinfo, simplify_symbols, resolve_symbol,
verify_namespace_is_imported, apply_relocations; kernel/module/version.c: check_version,
same_magic, check_modstruct_version; arch/x86/kernel/module.c: __apply_relocate_add;
kernel/livepatch/core.c: klp_find_object_symbol, klp_resolve_symbols,
klp_write_section_relocs / klp_write_object_relocations, klp_enable_patch,
klp_init_func, klp_init_object_loaded, klp_module_coming; kernel/livepatch/patch.c:
klp_patch_func.
"""

from __future__ import annotations

from dataclasses import dataclass

from klpkit.check.findings import Severity, Stage
from klpkit.kernel import klp, relocs

E, W, N = Severity.ERROR, Severity.WARNING, Severity.NOTE


@dataclass(frozen=True)
class Rule:
    id: str
    family: str
    severity: Severity
    stage: Stage
    since: tuple[int, int]
    summary: str
    kernel: str | None = None
    until: tuple[int, int] | None = None
    uncertain: bool = False

    def applies(self, kver: tuple[int, int]) -> bool:
        return kver >= self.since and (self.until is None or kver < self.until)

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "family": self.family,
            "severity": str(self.severity),
            "stage": self.stage.name.lower(),
            "since": ".".join(map(str, self.since)),
            "until": ".".join(map(str, self.until)) if self.until else None,
            "uncertain": self.uncertain,
            "summary": self.summary,
            "kernel": self.kernel,
        }


_RULES = [
    # --- ELF as the module loader sees it --------------------------------------------------
    Rule(
        "elf.header",
        "elf",
        E,
        Stage.ELF,
        (4, 0),
        "ELF header: length, magic, ET_REL, architecture, e_shentsize, section header "
        "table inside the file (elf_validity_check)",
        "Invalid ELF header type: %u != %u",
    ),
    Rule(
        "elf.shstrtab",
        "elf",
        E,
        Stage.ELF,
        (5, 16),
        "section name table: valid index, inside the file, NUL-terminated",
        "ELF Spec violation: section name table isn't null terminated",
        uncertain=True,
    ),
    Rule(
        "elf.section",
        "elf",
        E,
        Stage.ELF,
        (5, 16),
        "every section's offset+size inside the file; symtab sh_link valid; allocated "
        "sections' names inside .shstrtab",
        "Invalid ELF section in module (section %u type %u)",
        uncertain=True,
    ),
    Rule(
        "elf.parse",
        "elf",
        E,
        Stage.ELF,
        (4, 0),
        "klpkit's ELF reader refuses the file (the kernel may crash or misbehave on it)",
    ),
    Rule(
        "elf.symtab",
        "elf",
        E,
        Stage.ELF,
        (4, 0),
        "a symbol table and .gnu.linkonce.this_module exist (setup_load_info)",
        "%s: module has no symbols (stripped?)",
    ),
    Rule(
        "elf.symbol-section",
        "elf",
        E,
        Stage.SYMBOLS,
        (6, 1),
        "a defined symbol's st_shndx is a real section (simplify_symbols)",
        "%s: Symbol %s has an invalid section index %u (max %u)",
        uncertain=True,
    ),
    Rule(
        "elf.common",
        "elf",
        E,
        Stage.SYMBOLS,
        (4, 0),
        "no SHN_COMMON symbols",
        "%s: please compile with -fno-common",
    ),
    Rule(
        "elf.reloc-symbol",
        "elf",
        E,
        Stage.RELOCATIONS,
        (4, 0),
        "relocation symbol index inside the symbol table (the kernel does not check: "
        "it reads past the table)",
    ),
    Rule(
        "elf.reloc-offset",
        "elf",
        E,
        Stage.RELOCATIONS,
        (4, 0),
        "relocation offset+size inside the target section (the kernel does not check: "
        "it writes past the section)",
    ),
    Rule(
        "elf.reloc-type",
        "elf",
        E,
        Stage.RELOCATIONS,
        (4, 0),
        "relocation type handled by x86_64 apply_relocate_add (NONE, 64, PC32, PLT32, 32, "
        "32S, PC64)",
        "%s: Unknown rela relocation: %llu",
    ),
    Rule(
        "elf.rel",
        "elf",
        E,
        Stage.RELOCATIONS,
        (4, 0),
        "SHT_REL relocations on x86_64 (apply_relocate is not implemented)",
        "module %s: REL relocation unsupported",
    ),
    Rule(
        "elf.reloc-nonzero",
        "elf",
        E,
        Stage.RELOCATIONS,
        (4, 17),
        "target bytes at a RELA offset are zero (x86 refuses to overwrite a nonzero value)",
        "module: x86/modules: Skipping invalid relocation target, existing value is nonzero "
        "for type %d, loc %p, val %Lx (6.3: 'Invalid relocation target, ...')",
    ),
    Rule(
        "rela.livepatch-symbol",
        "elf",
        E,
        Stage.RELOCATIONS,
        (4, 7),
        "a normal relocation uses an SHN_LIVEPATCH symbol (the loader writes its st_value, 0)",
    ),
    # --- modinfo / versions ------------------------------------------------------------
    Rule(
        "modversions.module_layout",
        "modinfo",
        E,
        Stage.MODSTRUCT,
        (4, 0),
        "the module_layout CRC in __versions matches the kernel's",
        "%s: disagrees about version of symbol module_layout",
    ),
    Rule(
        "vermagic",
        "modinfo",
        E,
        Stage.MODINFO,
        (4, 0),
        "vermagic matches the target kernel's (the release word is ignored when the "
        "module has __versions)",
        "%s: version magic '%s' should be '%s'",
    ),
    Rule(
        "vermagic.release",
        "modinfo",
        W,
        Stage.MODINFO,
        (4, 0),
        "the vermagic release differs from the symbol database's, but the kernel does "
        "not compare it (module has __versions)",
    ),
    Rule(
        "livepatch.support",
        "modinfo",
        E,
        Stage.MODINFO,
        (4, 7),
        "livepatch=Y on a kernel without CONFIG_LIVEPATCH",
        "%s: module is marked as livepatch module, but livepatch support is disabled",
    ),
    Rule(
        "livepatch.taint",
        "modinfo",
        N,
        Stage.MODINFO,
        (4, 7),
        "livepatch=Y: the module loader taints the kernel (check_modinfo_livepatch(); "
        "printed once a boot)",
        "%s: tainting kernel with TAINT_LIVEPATCH",
    ),
    Rule(
        "livepatch.modinfo",
        "livepatch",
        E,
        Stage.ENABLE,
        (4, 7),
        "a module that calls klp_enable_patch() carries livepatch=Y "
        '(MODULE_INFO(livepatch, "Y")); a module that does not is no livepatch to the '
        "kernel, and none of the livepatch core's rules apply to it",
        "livepatch: module %s is not marked as a livepatch module",
    ),
    Rule(
        "livepatch.objects",
        "livepatch",
        N,
        Stage.ENABLE,
        (4, 7),
        "the objects klp_enable_patch() walks: klp_patch.objs, each klp_object whatever "
        "its funcs hold (an empty array: callbacks or states only)",
    ),
    Rule(
        "livepatch.object",
        "livepatch",
        W,
        Stage.ENABLE,
        (4, 7),
        "each klp_object names vmlinux or a module of the target kernel (otherwise the "
        "patch never applies to it)",
    ),
    # --- normal undefined symbols ------------------------------------------------------
    Rule(
        "undef.missing",
        "symbols",
        E,
        Stage.SYMBOLS,
        (4, 0),
        "an undefined symbol is exported by vmlinux or a module of the target kernel",
        "%s: Unknown symbol %s (err -2)",
    ),
    Rule(
        "undef.unexported",
        "symbols",
        E,
        Stage.SYMBOLS,
        (4, 0),
        "an undefined symbol exists in the target kernel but is not exported (it must be "
        "converted to a livepatch relocation)",
        "%s: Unknown symbol %s (err -2)",
    ),
    Rule(
        "undef.gpl",
        "symbols",
        E,
        Stage.SYMBOLS,
        (4, 0),
        "a GPL-only export used by a module whose licence is not GPL-compatible",
        "%s: Unknown symbol %s (err -2)",
    ),
    Rule(
        "undef.namespace",
        "symbols",
        E,
        Stage.SYMBOLS,
        (5, 4),
        "an export in a symbol namespace the module does not import (import_ns)",
        "%s: module uses symbol (%s) from namespace %s, but does not import it.\n"
        "%s: Unknown symbol %s (err -22)",
    ),
    Rule(
        "undef.crc",
        "symbols",
        E,
        Stage.SYMBOLS,
        (4, 0),
        "the CRC in __versions equals the export's CRC (Module.symvers) on a MODVERSIONS kernel",
        "%s: disagrees about version of symbol %s\n%s: Unknown symbol %s (err -22)",
    ),
    Rule(
        "undef.no-version",
        "symbols",
        W,
        Stage.SYMBOLS,
        (4, 0),
        "a symbol of a CRC-carrying export has no __versions entry (warned once, loads)",
        "%s: no symbol version for %s",
    ),
    Rule(
        "undef.dependency",
        "symbols",
        N,
        Stage.SYMBOLS,
        (4, 0),
        "a normal reference to a module's export: the livepatch depends on that module",
    ),
    Rule(
        "undef.weak",
        "symbols",
        N,
        Stage.SYMBOLS,
        (4, 0),
        "a weak undefined symbol found nowhere resolves to 0",
    ),
    # --- the livepatches already loaded (check --loaded) ---------------------------------
    Rule(
        "loaded.duplicate",
        "loaded",
        E,
        Stage.ELF,
        (4, 0),
        "no module of the same name is loaded (the loader refuses a second: -EEXIST)",
    ),
    Rule(
        "loaded.order",
        "loaded",
        W,
        Stage.ENABLE,
        (4, 0),
        "each livepatch given as loaded could load after the ones before it",
    ),
    Rule(
        "loaded.transition",
        "loaded",
        E,
        Stage.ENABLE,
        (4, 12),
        "no livepatch is in transition: __klp_enable_patch() refuses a new one with "
        "-EBUSY while klp_transition_patch is set (check --loaded-from-sysfs)",
    ),
    Rule(
        "klp.state.incompatible",
        "loaded",
        E,
        Stage.ENABLE,
        klp.SYSTEM_STATES,
        "klp_is_patch_compatible(): every state of the installed livepatches is one the "
        "new livepatch carries at the same or a later version (a cumulative one must "
        "carry them all)",
        "livepatch: Livepatch patch (%s) is not compatible with the already installed livepatches.",
    ),
    Rule(
        "klp.replace.reverts",
        "loaded",
        W,
        Stage.ENABLE,
        klp.ATOMIC_REPLACE,
        "a cumulative livepatch (replace) disables the installed ones: the functions they "
        "replace and it does not run their original code again (klp_add_nops())",
    ),
    Rule(
        "klp.stack.top",
        "loaded",
        N,
        Stage.ENABLE,
        (4, 0),
        "a function an installed livepatch replaces too: the newest runs (func_stack), the "
        "older again once the newest is disabled",
    ),
    Rule(
        "loaded.set",
        "loaded",
        N,
        Stage.ENABLE,
        (4, 0),
        "the livepatches enabled once the module is loaded, bottom to top",
    ),
    # --- klpkit deps (imported verdicts) ----------------------------------------------
    Rule(
        "deps.pin",
        "deps",
        W,
        Stage.SYMBOLS,
        (4, 0),
        "a normal reference to (or depends= on) a patched module pins it: the target "
        "cannot be unloaded, the livepatch cannot load first (klpkit deps)",
    ),
    Rule(
        "deps.recursion",
        "deps",
        W,
        Stage.SYMBOLS,
        (4, 0),
        "a load recursion: the patched module's load triggers the livepatch, which needs "
        "that module (klpkit deps)",
    ),
    # --- .klp.sym ------------------------------------------------------------------------
    Rule(
        "klp.sym.format",
        "klp.sym",
        E,
        Stage.RELOCATIONS,
        (4, 7),
        ".klp.sym.<obj>.<name>,<pos> parses with the kernel's sscanf "
        "(%55[^.] / %127[^,] before 6.1, %511[^,] from 6.1)",
        "livepatch: symbol %s has an incorrectly formatted name",
    ),
    Rule(
        "klp.sym.shndx",
        "klp.sym",
        E,
        Stage.RELOCATIONS,
        (4, 7),
        "a .klp.sym. symbol has st_shndx SHN_LIVEPATCH (else the loader resolves it as a "
        "normal undefined symbol)",
        "%s: Unknown symbol %s (err -2)",
    ),
    Rule(
        "klp.sym.not-found",
        "klp.sym",
        E,
        Stage.RELOCATIONS,
        (4, 7),
        "the symbol exists in its object",
        "livepatch: symbol '%s' not found in symbol table",
    ),
    Rule(
        "klp.sym.ambiguous",
        "klp.sym",
        E,
        Stage.RELOCATIONS,
        (4, 7),
        "sympos 0 needs exactly one match",
        "livepatch: unresolvable ambiguity for symbol '%s' in object '%s'",
    ),
    Rule(
        "klp.sym.position",
        "klp.sym",
        E,
        Stage.RELOCATIONS,
        (4, 7),
        "sympos N needs at least N matches in the kernel's order",
        "livepatch: symbol position %lu for symbol '%s' in object '%s' not found",
    ),
    Rule(
        "klp.sym.late-load",
        "klp.sym",
        W,
        Stage.OBJECT,
        (4, 7),
        "a target loaded after the livepatch counts init-section symbols too: the "
        "position resolves differently",
    ),
    Rule(
        "klp.sym.object",
        "klp.sym",
        W,
        Stage.OBJECT,
        (4, 7),
        "the symbol's object is vmlinux or a module of the target kernel",
    ),
    Rule(
        "klp.sym.resolved",
        "klp.sym",
        N,
        Stage.RELOCATIONS,
        (4, 7),
        "what the symbol resolves to (object, name, position, binding, type)",
    ),
    # --- struct klp_func: the replaced functions ------------------------------------------
    # klp_init_object_loaded() resolves each old_name with klp_find_object_symbol():
    # vmlinux's in klp_enable_patch() (the livepatch's insmod fails), a module's when the
    # patch is enabled with it loaded, else in klp_module_coming() (the module's insmod
    # fails).  old_sympos arrived in 4.5 (before it: old_addr).
    Rule(
        "klp.func.not-found",
        "klp.func",
        E,
        Stage.ENABLE,
        (4, 5),
        "a klp_func's old_name is in its object's kallsyms (a typo, a function the "
        "target build does not have)",
        "livepatch: symbol '%s' not found in symbol table",
    ),
    Rule(
        "klp.func.inlined",
        "klp.func",
        E,
        Stage.ENABLE,
        (4, 5),
        "old_name is not in kallsyms but compiler clones of it are (.isra./.constprop./"
        ".part./...): GCC inlined or specialised the function in the target build",
        "livepatch: symbol '%s' not found in symbol table",
    ),
    Rule(
        "klp.func.ambiguous",
        "klp.func",
        E,
        Stage.ENABLE,
        (4, 5),
        "old_sympos 0 needs exactly one function of that name in the object",
        "livepatch: unresolvable ambiguity for symbol '%s' in object '%s'",
    ),
    Rule(
        "klp.func.position",
        "klp.func",
        E,
        Stage.ENABLE,
        (4, 5),
        "old_sympos N needs at least N symbols of that name in the object, kernel order",
        "livepatch: symbol position %lu for symbol '%s' in object '%s' not found",
    ),
    Rule(
        "klp.func.not-function",
        "klp.func",
        E,
        Stage.ENABLE,
        (4, 5),
        "the symbol old_name resolves to is a function: the livepatch core does not check "
        "the type, ftrace finds no __fentry__ site in data (before 5.18: 'failed to set "
        "ftrace filter for function '%s' (-22)'); a notype symbol is a warning",
        "livepatch: failed to find location for function '%s'\n"
        "livepatch: failed to patch object '%s'\nlivepatch: failed to enable patch '%s'",
        uncertain=True,
    ),
    Rule(
        "klp.func.prefix",
        "klp.func",
        E,
        Stage.ENABLE,
        klp.PREFIX_SYMBOLS,
        "old_name is a __pfx_ symbol (CONFIG_CALL_PADDING, 6.2+): the padding before the "
        "function, a function symbol to kallsyms that klp_find_object_symbol() resolves, "
        "with no __fentry__ site for klp_patch_func() (before 6.2 no such symbol: "
        "klp.func.not-found)",
        "livepatch: failed to find location for function '%s'\n"
        "livepatch: failed to patch object '%s'\nlivepatch: failed to enable patch '%s'",
    ),
    Rule(
        "klp.func.format",
        "klp.func",
        E,
        Stage.ENABLE,
        (4, 5),
        "strlen(old_name) < KSYM_NAME_LEN (128, 512 from 6.1) (klp_init_func: -EINVAL, "
        "nothing printed)",
    ),
    Rule(
        "klp.func.duplicate",
        "klp.func",
        E,
        Stage.ENABLE,
        (4, 5),
        "no two klp_funcs of one object share old_name and position (sympos 0 counts as "
        "1): their sysfs directories <function,sympos> collide",
        "sysfs: cannot create duplicate filename '%s'\n"
        "kobject_add_internal failed for %s with -EEXIST, don't try to register things "
        "with the same name in the same directory.",
        uncertain=True,
    ),
    Rule(
        "klp.func.clones",
        "klp.func",
        W,
        Stage.ENABLE,
        (4, 5),
        "old_name resolves, but the object also has compiler clones of it (.isra., "
        ".constprop., .part., ...): callers GCC redirected to a clone keep running the "
        "old code",
    ),
    Rule(
        "klp.func.late-load",
        "klp.func",
        W,
        Stage.OBJECT,
        (4, 5),
        "a target loaded after the livepatch counts init-section symbols too: old_sympos "
        "resolves differently",
    ),
    Rule(
        "klp.func.resolved",
        "klp.func",
        N,
        Stage.ENABLE,
        (4, 5),
        "the function a klp_func replaces (object, name, position, binding, type)",
    ),
    # --- .klp.rela -----------------------------------------------------------------------
    Rule(
        "klp.rela.name",
        "klp.rela",
        E,
        Stage.RELOCATIONS,
        (4, 7),
        '.klp.rela.<obj>.<section> parses with sscanf(".klp.rela.%55[^.]")',
        "livepatch: section %s has an incorrectly formatted name",
    ),
    Rule(
        "klp.rela.flags",
        "klp.rela",
        E,
        Stage.RELOCATIONS,
        (4, 7),
        "SHT_RELA with SHF_RELA_LIVEPATCH and SHF_ALLOC (without SHF_ALLOC the section is "
        "freed after load and module-gated relocations read freed memory; without "
        "SHF_RELA_LIVEPATCH the loader applies it as a normal section with value 0)",
    ),
    Rule(
        "klp.rela.target",
        "klp.rela",
        E,
        Stage.RELOCATIONS,
        (4, 7),
        "sh_info names an existing SHF_ALLOC section (otherwise never applied)",
    ),
    Rule(
        "klp.rela.link",
        "klp.rela",
        W,
        Stage.RELOCATIONS,
        (4, 7),
        "sh_link names the symbol table; sh_entsize and sh_size fit Elf_Rela",
    ),
    Rule(
        "klp.rela.symbol",
        "klp.rela",
        E,
        Stage.RELOCATIONS,
        (4, 7),
        "every relocation in a klp section uses an SHN_LIVEPATCH symbol",
        "livepatch: symbol %s is not marked as a livepatch symbol",
    ),
    Rule(
        "klp.rela.vmlinux-in-module",
        "klp.rela",
        E,
        Stage.OBJECT,
        klp.MODULE_GATE_REFUSES_VMLINUX,
        "a module-specific section references a vmlinux symbol",
        "livepatch: invalid access to vmlinux symbol '%s' from module-specific livepatch "
        "relocation section",
    ),
    Rule(
        "klp.rela.module-in-vmlinux",
        "klp.rela",
        W,
        Stage.RELOCATIONS,
        klp.VMLINUX_RELOCS_AT_LOAD,
        "a vmlinux-gated section references a module symbol: resolved when the livepatch "
        "loads, it fails unless that module is already loaded",
        "livepatch: symbol '%s' not found in symbol table",
    ),
    Rule(
        "klp.rela.object",
        "klp.rela",
        W,
        Stage.OBJECT,
        (4, 7),
        "the gating object is vmlinux or a module of the target kernel",
    ),
    Rule(
        "klp.rela.never-applied",
        "klp.rela",
        E,
        Stage.OBJECT,
        (4, 7),
        "the kernel applies the section: vmlinux-gated ones by the module loader "
        "(apply_relocations(), since 5.8), the others by klp_init_object_loaded() only "
        "for an object the module's klp_patch lists, in a module that calls "
        "klp_enable_patch() (otherwise its sites stay zero)",
    ),
    Rule(
        "klp.sym.dependency",
        "klp.sym",
        W,
        Stage.OBJECT,
        (4, 7),
        "a module symbol in a section gated on another module: found only if that module "
        "is loaded when the gate's relocations are written (the gate should depend on it)",
    ),
    Rule(
        "klp.rela.special",
        "klp.rela",
        W,
        Stage.OBJECT,
        (5, 8),
        "module-gated relocations in sections the kernel consumes when the livepatch "
        "loads (alternatives, jump labels, ...)",
    ),
    Rule(
        "klp.rela.reload",
        "klp.rela",
        W,
        Stage.LATER,
        (5, 8),
        "module-gated relocations on a kernel without clear_relocate_add: reloading the "
        "patched module fails",
        "module: x86/modules: Skipping invalid relocation target, "
        "existing value is nonzero for type %d, loc %p, val %Lx\n"
        "livepatch: failed to initialize patch '%s' for module '%s' (-8)\n"
        "livepatch: patch '%s' failed for module '%s', refusing to load module '%s'",
        until=klp.CLEAR_RELOCATE_ADD,
        uncertain=True,
    ),
]

RULES: dict[str, Rule] = {r.id: r for r in _RULES}

#: x86_64 relocation sizes: the kernel fact lives in kernel/relocs.py
X86_64_RELOC_SIZES = relocs.X86_64_RELOC_SIZES

#: The first kernel with clear_relocate_add() (reload of a patched module works).
CLEAR_RELOCATE_ADD = klp.CLEAR_RELOCATE_ADD


def nonzero_message(kver: tuple[int, int]) -> str:
    """The x86 message for a nonzero relocation target, as the kernel of ``kver`` words it."""
    if kver >= (6, 19):  # Josh Poimboeuf's klp-build series added sec/idx (uncertain)
        return (
            "module: x86/modules: Invalid relocation target, existing value is nonzero "
            "for sec %u, idx %u, type %d, loc %lx, val %llx"
        )
    word = "Invalid" if kver >= CLEAR_RELOCATE_ADD else "Skipping invalid"
    return (
        f"module: x86/modules: {word} relocation target, existing value is nonzero "
        "for type %d, loc %p, val %Lx"
    )

"""Mutation test: a good converted livepatch (the seed's cdrom example, built against
the Debian 6.1 headers and converted with klpkit.convert) passes; each single-rule
breakage, applied with klpkit's ELF model, is reported as exactly that rule with the
message the 6.1 kernel prints."""

from __future__ import annotations

import pytest

from klpkit.check import Severity, check_bytes, check_module, first_error
from klpkit.elf import ElfFile
from klpkit.elf import constants as C
from klpkit.kernel.modinfo import Modinfo
from klpkit.kernel.versions import parse_versions, serialize_versions
from tests.klp_edit import set_old_name, set_old_sympos

pytestmark = pytest.mark.slow

MOD = "lp_cdrom"
NONZERO_61 = (
    "module: x86/modules: Skipping invalid relocation target, existing value is "
    "nonzero for type 2, loc %p, val %Lx"
)


def _sym(elf, name):
    return next(s for s in elf.symtab.symbols if s.name == name)


def _rename(old, new):
    def mutate(elf):
        _sym(elf, old).name = new

    return mutate


def _modinfo(edit):
    def mutate(elf):
        sec = elf.section(".modinfo")
        mi = Modinfo.parse(sec.data)
        edit(mi)
        sec.data = mi.to_bytes()

    return mutate


def _crc(name, delta=1):
    def mutate(elf):
        sec = elf.section("__versions")
        vs = [
            (v.name, v.crc ^ delta if v.name == name else v.crc) for v in parse_versions(sec.data)
        ]
        sec.data = serialize_versions(vs)

    return mutate


def _unconvert(elf):
    """Undo the conversion of `debug`: a normal relocation to an undefined symbol."""
    sym = _sym(elf, ".klp.sym.cdrom.debug,0")
    sym.name, sym.shndx = "debug", C.SHN_UNDEF
    klp = elf.section(".klp.rela.cdrom..text")
    moved = [r for r in klp.relocations if r.symbol is sym]
    klp.relocations = [r for r in klp.relocations if r.symbol is not sym]
    rela = elf.section(".rela.text")
    rela.relocations = rela.relocations + moved


def _non_livepatch_symbol(elf):
    klp = elf.section(".klp.rela.cdrom..text")
    local = next(s for s in elf.symtab.symbols if s.name == "lp_cdrom_init")
    klp.relocations[0].symbol = local


def _clear_flag(section, flag):
    def mutate(elf):
        elf.section(section).flags &= ~flag

    return mutate


def _nonzero_target(elf):
    klp = elf.section(".klp.rela.cdrom..text")
    r = next(r for r in klp.relocations if r.type == 2)  # R_X86_64_PC32
    text = elf.section(".text")
    data = bytearray(text.data)
    data[r.offset] = 0x42
    text.data = bytes(data)


def _reloc_type(elf):
    elf.section(".klp.rela.cdrom..text").relocations[0].type = 3  # R_X86_64_GOT32


def _vermagic(mi):
    mi.set("vermagic", mi.vermagic.replace(" modversions", ""))


def _vmlinux_gated_ambiguous(elf):
    elf.section(".klp.rela.cdrom..text").name = ".klp.rela.vmlinux..text"
    _sym(elf, ".klp.sym.cdrom.debug,0").name = ".klp.sym.vmlinux.debug,0"


VM = "6.1.0-47-amd64 SMP preempt mod_unload modversions "
PATCHED = "cdrom_ioctl_media_changed"  # the seed livepatch's klp_func (cdrom, unique)

MUTATIONS = [
    (
        "wrong-sympos",
        _rename(".klp.sym.cdrom.debug,0", ".klp.sym.cdrom.debug,2"),
        "klp.sym.position",
        "livepatch: symbol position 2 for symbol 'debug' in object 'cdrom' not found",
    ),
    (
        "unknown-klp-symbol",
        _rename(".klp.sym.cdrom.debug,0", ".klp.sym.cdrom.klpkit_nope,0"),
        "klp.sym.not-found",
        "livepatch: symbol 'klpkit_nope' not found in symbol table",
    ),
    (
        "ambiguous-sympos-0",
        _vmlinux_gated_ambiguous,
        "klp.sym.ambiguous",
        "livepatch: unresolvable ambiguity for symbol 'debug' in object '(null)'",
    ),
    ("unconverted-static", _unconvert, "undef.unexported", f"{MOD}: Unknown symbol debug (err -2)"),
    (
        "vmlinux-symbol-in-module-section",
        _rename(".klp.sym.cdrom.debug,0", ".klp.sym.vmlinux.saved_command_line,0"),
        "klp.rela.vmlinux-in-module",
        "livepatch: invalid access to vmlinux symbol 'saved_command_line' from module-specific "
        "livepatch relocation section",
    ),
    (
        "missing-export",
        _rename("_printk", "klpkit_no_such_export"),
        "undef.missing",
        f"{MOD}: Unknown symbol klpkit_no_such_export (err -2)",
    ),
    (
        "crc-mismatch",
        _crc("_printk"),
        "undef.crc",
        f"{MOD}: disagrees about version of symbol _printk\n{MOD}: Unknown symbol _printk (err -22)",
    ),
    (
        "module_layout-crc",
        _crc("module_layout"),
        "modversions.module_layout",
        f"{MOD}: disagrees about version of symbol module_layout",
    ),
    (
        "gpl-only-export",
        _modinfo(lambda mi: mi.set("license", "Proprietary")),
        "undef.gpl",
        f"{MOD}: Unknown symbol klp_enable_patch (err -2)",
    ),
    (
        "bad-klp-symbol-name",
        _rename(".klp.sym.cdrom.debug,0", ".klp.sym.cdrom.debug"),
        "klp.sym.format",
        "livepatch: symbol .klp.sym.cdrom.debug has an incorrectly formatted name",
    ),
    (
        "bad-klp-section-name",
        lambda elf: setattr(elf.section(".klp.rela.cdrom..text"), "name", ".klp.rela..text"),
        "klp.rela.name",
        "livepatch: section .klp.rela..text has an incorrectly formatted name",
    ),
    (
        "missing-SHF_ALLOC",
        _clear_flag(".klp.rela.cdrom..text", C.SHF_ALLOC),
        "klp.rela.flags",
        None,
    ),
    (
        "missing-SHF_RELA_LIVEPATCH",
        _clear_flag(".klp.rela.cdrom..text", C.SHF_RELA_LIVEPATCH),
        "klp.rela.flags",
        None,
    ),
    (
        "non-livepatch-symbol-in-klp-section",
        _non_livepatch_symbol,
        "klp.rela.symbol",
        "livepatch: symbol lp_cdrom_init is not marked as a livepatch symbol",
    ),
    (
        "klp-symbol-not-SHN_LIVEPATCH",
        lambda elf: setattr(_sym(elf, ".klp.sym.cdrom.debug,0"), "shndx", C.SHN_UNDEF),
        # the loader meets it first, in simplify_symbols(), as a normal undefined symbol;
        # klp.rela.symbol would follow if it got that far
        ("klp.sym.shndx", "klp.rela.symbol"),
        f"{MOD}: Unknown symbol .klp.sym.cdrom.debug,0 (err -2)",
    ),
    (
        "missing-livepatch-tag",
        _modinfo(lambda mi: mi.remove("livepatch")),
        "livepatch.modinfo",
        f"livepatch: module {MOD} is not marked as a livepatch module",
    ),
    (
        "wrong-vermagic",
        _modinfo(_vermagic),
        "vermagic",
        f"{MOD}: version magic '6.1.0-47-amd64 SMP preempt mod_unload ' should be '{VM}'",
    ),
    ("nonzero-relocation-target", _nonzero_target, "elf.reloc-nonzero", NONZERO_61),
    (
        "unsupported-relocation-type",
        _reloc_type,
        "elf.reloc-type",
        f"{MOD}: Unknown rela relocation: 3",
    ),
    # the replaced function (struct klp_func): resolved by klp_init_object_loaded()
    (
        "old-name-typo",
        lambda elf: set_old_name(elf, PATCHED, "cdrom_ioctl_media_changd"),
        "klp.func.not-found",
        "livepatch: symbol 'cdrom_ioctl_media_changd' not found in symbol table",
    ),
    (
        "old-name-inlined",
        lambda elf: set_old_name(elf, PATCHED, "cdrom_get_track_info"),
        "klp.func.inlined",
        "livepatch: symbol 'cdrom_get_track_info' not found in symbol table",
    ),
    (
        "old-sympos-beyond-count",
        lambda elf: set_old_sympos(elf, PATCHED, 3),
        "klp.func.position",
        f"livepatch: symbol position 3 for symbol '{PATCHED}' in object 'cdrom' not found",
    ),
    (
        "old-name-is-data",
        lambda elf: set_old_name(elf, PATCHED, "debug"),
        "klp.func.not-function",
        "livepatch: failed to find location for function 'debug'\n"
        f"livepatch: failed to patch object 'cdrom'\nlivepatch: failed to enable patch '{MOD}'",
    ),
]


def test_good_module_loads(good_cdrom, debian_symdb):
    findings = check_module(good_cdrom, debian_symdb, "6.1")
    errors = [f for f in findings if f.severity is Severity.ERROR]
    assert errors == [], [f.as_dict() for f in errors]
    resolved = {f.place.symbol: f.details for f in findings if f.rule == "klp.sym.resolved"}
    assert resolved[".klp.sym.cdrom.debug,0"]["object"] == "cdrom"
    assert resolved[".klp.sym.cdrom.cdrom_check_events,0"]["exported"] is True
    # the observed 6.1.170 behaviour: module-gated relocations break a target reload
    reload = [f for f in findings if f.rule == "klp.rela.reload"]
    assert reload and reload[0].severity is Severity.WARNING
    assert reload[0].matches(
        "[   12.3] module: x86/modules: Skipping invalid relocation target, existing value is "
        "nonzero for type 2, loc 00000000ba0302e9, val ffffffffa03e293c"
    )
    # ... and a kernel with clear_relocate_add does not warn
    assert not [
        f for f in check_module(good_cdrom, debian_symdb, "6.5") if f.rule == "klp.rela.reload"
    ]


@pytest.mark.parametrize(
    "name, mutate, rule, kernel_message", MUTATIONS, ids=[m[0] for m in MUTATIONS]
)
def test_single_rule_breakage(good_cdrom, debian_symdb, name, mutate, rule, kernel_message):
    elf = ElfFile.read(good_cdrom)
    mutate(elf)
    findings = check_bytes(elf.to_bytes(), debian_symdb, "6.1", path=str(good_cdrom))
    rule, *also = (rule,) if isinstance(rule, str) else rule
    errors = [f for f in findings if f.severity is Severity.ERROR]
    assert {f.rule for f in errors} == {rule, *also}, [f.as_dict() for f in errors]
    first = first_error(findings)
    assert first.rule == rule
    assert first.kernel_message == kernel_message


def test_unconverted_build_is_refused_like_the_kernel_did(lp_modules, debian_symdb):
    """The harness README: unconverted, the cdrom livepatch fails with 'Unknown symbol ...
    (err -2)' for the statics and depends on cdrom."""
    findings = check_module(lp_modules["lp_cdrom"], debian_symdb, "6.1")
    errors = {f.place.symbol: f for f in findings if f.severity is Severity.ERROR}
    assert set(errors) == {"debug", "cdrom_read_mech_status"}
    assert errors["debug"].matches("[    3.1] lp_cdrom: Unknown symbol debug (err -2)")
    dep = [f for f in findings if f.rule == "undef.dependency"]
    assert [f.details["exporter"] for f in dep] == ["cdrom"]
    # klpkit deps' verdicts, imported: the livepatch pins cdrom (observed: rmmod EAGAIN)
    pins = [f for f in findings if f.rule == "deps.pin"]
    assert pins and "pins cdrom" in pins[0].message


def test_kernel_versions_change_the_verdict(good_cdrom, debian_symdb):
    elf = ElfFile.read(good_cdrom)
    _rename(".klp.sym.cdrom.debug,0", ".klp.sym.vmlinux.saved_command_line,0")(elf)
    data = elf.to_bytes()
    # before 5.8 a module-gated section may reference vmlinux symbols
    rules_54 = {
        f.rule for f in check_bytes(data, debian_symdb, "5.4") if f.severity is Severity.ERROR
    }
    assert "klp.rela.vmlinux-in-module" not in rules_54
    # a 300-character symbol name fits 6.1's %511 but not 5.4's %127
    elf = ElfFile.read(good_cdrom)
    _rename(".klp.sym.cdrom.debug,0", ".klp.sym.cdrom." + "x" * 300 + ",0")(elf)
    data = elf.to_bytes()
    assert "klp.sym.format" in {f.rule for f in check_bytes(data, debian_symdb, "5.4")}
    r61 = {f.rule for f in check_bytes(data, debian_symdb, "6.1")}
    assert "klp.sym.format" not in r61 and "klp.sym.not-found" in r61

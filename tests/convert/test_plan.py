"""The conversion policy on small objects compiled in the test run, with a hand-written
Symbols.list database (fast; no kernel data).  Real-kernel modules: test_real_kernel.py."""

from __future__ import annotations

import subprocess

import pytest

from klpkit.convert import (
    Action,
    Category,
    Choice,
    Classifier,
    ConvertError,
    PlanOptions,
    apply_plan,
    make_plan,
    parse_map_entry,
    parse_map_text,
)
from klpkit.convert.annotations import parse_intermediate
from klpkit.convert.apply import KLP_RELA_FLAGS
from klpkit.elf import ElfFile
from klpkit.elf import constants as C
from klpkit.kernel.modinfo import Modinfo
from klpkit.kernel.versions import parse_versions

HOW = (
    "choose with --map {n}=OBJ,POS (or a --map-file line), KLP_MODULE_RELOC(OBJ) "
    "{{ KLP_SYMPOS({n}, POS) }} or KLP_RELOC_SYMBOL_POS(PATCHED_OBJ, OBJ, {n}, POS)"
)

BASE = r"""
extern int printk(const char *, ...);
extern unsigned int cdrom_check_events(void *, unsigned int);
extern int cdrom_read_mech_status(void *, void *);
extern int scsi_device_get(void *);
extern int cmdline_proc_show(void);
extern char *saved_command_line;
static int internal_helper(int x) { return x * 3; }
int lp_func(void *p)
{
    printk("%lx %s\n", (unsigned long) cdrom_check_events, saved_command_line);
    if (p == 0)
        return scsi_device_get(p);
    return cdrom_read_mech_status(p, 0) + cmdline_proc_show()
        + cdrom_read_mech_status(p, p) + internal_helper((long) p);
}
const char modinfo[] __attribute__((section(".modinfo"), used, aligned(1))) =
    "livepatch=Y\0depends=cdrom,scsi_mod\0name=lp_test";
struct mv { unsigned long crc; char name[56]; };
const struct mv versions[] __attribute__((section("__versions"), used)) =
    { {1, "printk"}, {2, "cdrom_check_events"}, {3, "scsi_device_get"} };
"""


def plan_of(path, db, **kw):
    return make_plan(ElfFile.read(path), db, PlanOptions(**kw))


def decisions(plan):
    return {
        n: (str(d.category), str(d.action), d.klp_symbol, d.gate) for n, d in plan.symbols.items()
    }


def convert(path, db, out, **kw):
    elf = ElfFile.read(path)
    plan = make_plan(elf, db, PlanOptions(**kw))
    assert plan.ok, plan.errors
    res = apply_plan(elf, plan)
    elf.write(out)
    return plan, res, ElfFile.read(out)


def klp_sections(elf):
    return {s.name: s for s in elf.sections if s.name.startswith(".klp.rela.")}


# ----------------------------------------------------------------- policy branches
def test_every_policy_branch(cc, small_db, tmp_path):
    obj = cc(BASE)
    plan = plan_of(obj, small_db, objects=["cdrom"])
    assert plan.ok, plan.errors
    assert decisions(plan) == {
        "printk": ("A", "keep", None, None),
        "cdrom_check_events": ("B", "convert", ".klp.sym.cdrom.cdrom_check_events,0", "cdrom"),
        "cdrom_read_mech_status": (
            "local",
            "convert",
            ".klp.sym.cdrom.cdrom_read_mech_status,0",
            "cdrom",
        ),
        "scsi_device_get": ("C-D", "keep", None, None),
        # vmlinux symbols are gated on vmlinux even though the livepatch patches cdrom
        "cmdline_proc_show": (
            "local",
            "convert",
            ".klp.sym.vmlinux.cmdline_proc_show,0",
            "vmlinux",
        ),
        "saved_command_line": (
            "local",
            "convert",
            ".klp.sym.vmlinux.saved_command_line,0",
            "vmlinux",
        ),
    }
    sd = plan.symbols["scsi_device_get"]
    assert sd.reason == (
        "exported by scsi_mod, which this livepatch does not patch: a normal "
        "reference; the livepatch depends on scsi_mod"
    )
    assert any(w == f"scsi_device_get: {sd.reason}" for w in plan.warnings)
    assert plan.drop_versions == ["cdrom_check_events"]
    assert plan.drop_depends == ["cdrom"]
    # every relocation is in the plan, internal ones too
    internal = [r for r in plan.relocations if r.category is Category.INTERNAL]
    assert internal and all(r.action is Action.KEEP for r in internal)


def test_apply_moves_every_relocation_and_renames_once(cc, small_db, tmp_path):
    obj = cc(BASE)
    before = ElfFile.read(obj)
    n_rms = sum(
        1
        for rs in before.relocation_sections()
        for r in rs.relocations
        if r.symbol is not None and r.symbol.name == "cdrom_read_mech_status"
    )
    assert n_rms == 2
    plan, res, out = convert(obj, small_db, tmp_path / "out.o", objects=["cdrom"])
    syms = {s.name: s for s in out.symtab.symbols}
    for name in (
        "cdrom_check_events",
        "cdrom_read_mech_status",
        "cmdline_proc_show",
        "saved_command_line",
    ):
        assert name not in syms
    klp = [s for s in out.symtab.symbols if s.name.startswith(".klp.sym.")]
    assert sorted(s.name for s in klp) == [
        ".klp.sym.cdrom.cdrom_check_events,0",
        ".klp.sym.cdrom.cdrom_read_mech_status,0",
        ".klp.sym.vmlinux.cmdline_proc_show,0",
        ".klp.sym.vmlinux.saved_command_line,0",
    ]
    assert all(s.shndx == C.SHN_LIVEPATCH and s.bind == C.STB_GLOBAL for s in klp)
    secs = klp_sections(out)
    assert set(secs) == {".klp.rela.cdrom..text", ".klp.rela.vmlinux..text"}
    for s in secs.values():
        assert s.type == C.SHT_RELA and s.flags == KLP_RELA_FLAGS
        assert s.info is out.section(".text") and s.link is out.symtab
        assert s.entsize == 24 and s.addralign == 8
        assert all(r.symbol.shndx == C.SHN_LIVEPATCH for r in s.relocations)
    got = sorted(r.symbol.name for r in secs[".klp.rela.cdrom..text"].relocations)
    assert got == [
        ".klp.sym.cdrom.cdrom_check_events,0",
        ".klp.sym.cdrom.cdrom_read_mech_status,0",
        ".klp.sym.cdrom.cdrom_read_mech_status,0",
    ]
    # no normal relocation is left on an SHN_LIVEPATCH symbol
    for rs in out.relocation_sections():
        if rs.name.startswith(".klp.rela."):
            continue
        assert all(r.symbol is None or r.symbol.shndx != C.SHN_LIVEPATCH for r in rs.relocations)
    mi = Modinfo.parse(out.section(".modinfo").data)
    assert mi.depends == ["scsi_mod"] and mi.is_livepatch and mi.name == "lp_test"
    assert len(out.section(".modinfo").data) == len(before.section(".modinfo").data)
    names = [v.name for v in parse_versions(out.section("__versions").data)]
    assert names == ["printk", "scsi_device_get"]
    assert next(s for s in out.symtab.symbols if s.name == "versions").size == 128
    assert res.moved == 5
    # readelf agrees
    r = subprocess.run(
        ["readelf", "-W", "-s", str(tmp_path / "out.o")], capture_output=True, text=True, check=True
    )
    assert "OS [0xff20] .klp.sym.cdrom.cdrom_check_events,0" in r.stdout


def test_keep_exports_keeps_case_b(cc, small_db):
    plan = plan_of(cc(BASE), small_db, objects=["cdrom"], keep_exports=True)
    d = plan.symbols["cdrom_check_events"]
    assert (d.category, d.action) == (Category.B, Action.KEEP)
    assert d.reason == (
        "exported by patched module cdrom; kept normal by --keep-exports: "
        "the livepatch depends on cdrom"
    )
    assert plan.drop_depends == [] and plan.drop_versions == []


def test_objects_from_klp_object_names(cc, small_db):
    src = (
        BASE
        + r"""
struct klp_func { const char *old_name; void *new_func; long pad[8]; };
struct klp_object { const char *name; struct klp_func *funcs; void *cb[4]; long pad[12]; };
static struct klp_func funcs[] = { { .old_name = "cdrom_ioctl_media_changed", .new_func = lp_func }, { } };
static struct klp_func vfuncs[] = { { .old_name = "cmdline_proc_show", .new_func = lp_func }, { } };
struct klp_object objs[] = { { .funcs = vfuncs }, { .name = "cdrom", .funcs = funcs }, { } };
"""
    )
    plan = plan_of(cc(src), small_db)
    assert (plan.objects, plan.objects_source) == (["vmlinux", "cdrom"], "klp_object")
    assert plan.symbols["cdrom_check_events"].category is Category.B


def test_no_objects_found_searches_vmlinux_only(cc, small_db):
    plan = plan_of(cc(BASE), small_db)
    assert plan.objects_source == "none"
    assert (
        "no klp_object names found in the module: automatic resolution searches vmlinux "
        "only (pass --object OBJ)"
    ) in plan.warnings
    d = plan.symbols["cdrom_check_events"]
    assert (d.category, d.action) == (Category.CD, Action.KEEP)
    assert plan.errors == [
        "cdrom_read_mech_status: not exported, and found only in objects this livepatch does "
        "not patch (patched: none found): cdrom (unknown, sympos 1); pass --object OBJ if the "
        "livepatch patches it, or " + HOW.format(n="cdrom_read_mech_status")
    ]


# ----------------------------------------------------------------- choosing
AMBIG = r"""
extern int state_show(void);
extern int klpkit_nope(void);
extern int debug;
extern int dup_static(void);
int f(void) { return state_show() + klpkit_nope() + debug + dup_static(); }
"""


def test_unknown_and_ambiguous_errors_list_candidates(cc, small_db):
    plan = plan_of(cc(AMBIG), small_db, objects=["cdrom"])
    assert plan.errors == [
        "state_show: ambiguous: 2 candidates in vmlinux: vmlinux (unknown, sympos 1), "
        "vmlinux (unknown, sympos 2); " + HOW.format(n="state_show"),
        "klpkit_nope: not found in any object of the symbol database; define it in the "
        "livepatch, or " + HOW.format(n="klpkit_nope"),
        "dup_static: ambiguous: 2 candidates in patched modules: cdrom (unknown, sympos 1), "
        "cdrom (unknown, sympos 2); " + HOW.format(n="dup_static"),
    ]
    # the patched module's static wins over vmlinux's
    d = plan.symbols["debug"]
    assert (d.klp_symbol, d.gate) == (".klp.sym.cdrom.debug,0", "cdrom")
    cands = [str(c) for c in plan.symbols["state_show"].candidates]
    assert cands == ["vmlinux (unknown, sympos 1)", "vmlinux (unknown, sympos 2)"]


def test_map_choices_resolve(cc, small_db, tmp_path):
    src = cc(AMBIG.replace("+ klpkit_nope() ", ""))
    choices = [
        parse_map_entry("state_show=vmlinux,2", "--map"),
        parse_map_entry("dup_static = cdrom , 1", "--map"),
        parse_map_entry("debug=vmlinux", "--map"),
    ]
    plan, _res, out = convert(src, small_db, tmp_path / "o.o", objects=["cdrom"], choices=choices)
    got = {d.name: d.klp_symbol for d in plan.symbols.values()}
    assert got == {
        "state_show": ".klp.sym.vmlinux.state_show,2",
        "debug": ".klp.sym.vmlinux.debug,0",
        "dup_static": ".klp.sym.cdrom.dup_static,1",
    }
    assert plan.symbols["state_show"].source == "--map"
    assert set(klp_sections(out)) == {".klp.rela.vmlinux..text", ".klp.rela.cdrom..text"}


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            "state_show=vmlinux,3",
            "state_show: --map gives sympos 3, but 'vmlinux' has only 2 "
            "symbol(s) named 'state_show': vmlinux (unknown, sympos 1), vmlinux (unknown, sympos 2)",
        ),
        (
            "state_show=vmlinux,0",
            "state_show: --map gives sympos 0, which needs a unique symbol, "
            "but 'vmlinux' has 2: vmlinux (unknown, sympos 1), vmlinux (unknown, sympos 2)",
        ),
        (
            "state_show=vmlinux",
            "state_show: --map names 'vmlinux' without a position, but "
            "'vmlinux' has 2: vmlinux (unknown, sympos 1), vmlinux (unknown, sympos 2); add the "
            "position: state_show=vmlinux,POS",
        ),
        (
            "state_show=cdrom,1",
            "state_show: --map names object 'cdrom', which has no symbol "
            "'state_show'; candidates: vmlinux (unknown, sympos 1), vmlinux (unknown, sympos 2)",
        ),
    ],
)
def test_map_choice_errors(cc, small_db, entry, message):
    src = cc("extern int state_show(void); int f(void) { return state_show(); }")
    plan = plan_of(src, small_db, objects=["cdrom"], choices=[parse_map_entry(entry, "--map")])
    assert plan.errors == [message]


def test_map_to_unpatched_module_static_is_gated_on_the_patched_module(cc, small_db):
    src = cc("extern int other_static(void); int f(void) { return other_static(); }")
    plan = plan_of(src, small_db, objects=["cdrom"])
    assert plan.errors == [
        "other_static: not exported, and found only in objects this livepatch does not patch "
        "(patched: cdrom): othermod (unknown, sympos 1); pass --object OBJ if the livepatch "
        "patches it, or " + HOW.format(n="other_static")
    ]
    plan = plan_of(
        src,
        small_db,
        objects=["cdrom"],
        choices=[parse_map_entry("other_static=othermod", "--map")],
    )
    d = plan.symbols["other_static"]
    assert plan.ok and (d.klp_symbol, d.gate) == (".klp.sym.othermod.other_static,0", "cdrom")
    assert d.reason.endswith(
        "(warning: 'othermod' is not a dependency of 'cdrom' in the "
        "symbol database: the symbol may be missing when the relocation "
        "is applied)"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("foo", "--map: 'foo' is not NAME=OBJ[,POS]"),
        ("foo=", "--map: 'foo=' is not NAME=OBJ[,POS]"),
        ("foo=a.b", "--map: 'a.b' is not a valid object name (1-55 characters, no '.')"),
        ("foo=vmlinux,x", "--map: position 'x': not a decimal number (ASCII digits only)"),
        (
            "foo=" + "m" * 56,
            "--map: '" + "m" * 56 + "' is not a valid object name (1-55 characters, no '.')",
        ),
    ],
)
def test_map_entry_errors(text, message):
    assert parse_map_entry(text, "--map") == message


def test_map_file():
    choices, errors = parse_map_text("# comment\n\nstate_show=vmlinux,2  # why\nbad\n", "m.txt")
    assert choices == [Choice("state_show", "vmlinux", 2, "m.txt:3")]
    assert errors == ["m.txt:4: 'bad' is not NAME=OBJ[,POS]"]


# ----------------------------------------------------------------- annotations
V7 = r"""
struct klp_module_reloc { union { void *sym; unsigned long long sym64; }; unsigned int sympos; }
    __attribute__((packed));
extern int state_show(void);
extern int dup_static(void);
struct klp_module_reloc vm_relocs[] __attribute__((section(".klp.module_relocs.vmlinux"),
    used, aligned(4))) = { { .sym = state_show, .sympos = 2 } };
struct klp_module_reloc cd_relocs[] __attribute__((section(".klp.module_relocs.cdrom"),
    used, aligned(4))) = { { .sym = dup_static, .sympos = 1 } };
int f(void) { return state_show() + dup_static(); }
"""


@pytest.mark.parametrize("arch", ["x86_64", "s390x"])
def test_v7_module_relocs_annotations(cc, small_db, tmp_path, arch):
    plan, res, out = convert(cc(V7, arch), small_db, tmp_path / "o.o", objects=["cdrom"])
    assert {d.name: d.klp_symbol for d in plan.symbols.values()} == {
        "state_show": ".klp.sym.vmlinux.state_show,2",
        "dup_static": ".klp.sym.cdrom.dup_static,1",
    }
    assert plan.symbols["state_show"].source == "KLP_MODULE_RELOC(vmlinux) record 0"
    names = [s.name for s in out.sections]
    assert not any("module_relocs" in n for n in names)
    assert not {"vm_relocs", "cd_relocs"} & {s.name for s in out.symtab.symbols}
    assert set(klp_sections(out)) == {".klp.rela.vmlinux..text", ".klp.rela.cdrom..text"}
    assert out.little_endian is (arch == "x86_64")


def test_v7_annotation_errors(cc, small_db):
    src = V7.replace(
        "int f(void) { return state_show() + dup_static(); }",
        "int f(void) { return state_show(); }",
    )
    src += r"""
struct klp_module_reloc vm2[] __attribute__((section(".klp.module_relocs.vmlinux"),
    used, aligned(4))) = { { .sym = state_show, .sympos = 1 } };
"""
    plan = plan_of(cc(src), small_db, objects=["cdrom"])
    assert plan.errors == [
        # (gcc emits vm2 first in the section)
        "state_show: conflicting annotations: vmlinux,1 (KLP_MODULE_RELOC(vmlinux) record 0) "
        "vs vmlinux,2 (KLP_MODULE_RELOC(vmlinux) record 1)",
        "dup_static: annotated in .klp.module_relocs but no relocation uses it",
    ]


def test_v7_annotation_record_size_error(cc, small_db):
    src = r"""
extern int state_show(void);
struct r { void *sym; unsigned int sympos; };   /* 16 bytes: not packed */
struct r rel[] __attribute__((section(".klp.module_relocs.vmlinux"), used)) = { { state_show, 2 } };
int f(void) { return state_show(); }
"""
    plan = plan_of(cc(src), small_db, objects=["cdrom"])
    assert plan.errors[0] == (
        ".klp.module_relocs.vmlinux: size 16 is not a multiple of 12 (struct klp_module_reloc)"
    )


MINIMAL = r"""
extern int rms(void *, void *) __asm__("\".klp.sym.rela.cdrom.cdrom.cdrom_read_mech_status,0\"");
extern int rms2(void *, void *) __asm__("\".klp.sym.rela.vmlinux.cdrom.cdrom_read_mech_status,0\"");
extern int st(void) __asm__(".klp.sym.rela.vmlinux.vmlinux.state_show.2");
extern int cps(void) __asm__(".klp.sym.rela.cdrom.vmlinux.cmdline_proc_show.0");
int f(void *p) { return rms(p, p) + rms2(p, p) + st() + cps(); }
"""


def test_minimal_intermediate_symbols(cc, small_db, tmp_path):
    plan, res, out = convert(cc(MINIMAL), small_db, tmp_path / "o.o")
    d = {n: (x.klp_symbol, x.gate) for n, x in plan.symbols.items()}
    assert d == {
        ".klp.sym.rela.cdrom.cdrom.cdrom_read_mech_status,0": (
            ".klp.sym.cdrom.cdrom_read_mech_status,0",
            "cdrom",
        ),
        ".klp.sym.rela.vmlinux.cdrom.cdrom_read_mech_status,0": (
            ".klp.sym.cdrom.cdrom_read_mech_status,0",
            "vmlinux",
        ),
        ".klp.sym.rela.vmlinux.vmlinux.state_show.2": (".klp.sym.vmlinux.state_show,2", "vmlinux"),
        # a vmlinux symbol gated on a module is re-gated on vmlinux (kernel >= 5.8)
        ".klp.sym.rela.cdrom.vmlinux.cmdline_proc_show.0": (
            ".klp.sym.vmlinux.cmdline_proc_show,0",
            "vmlinux",
        ),
    }
    assert plan.symbols[".klp.sym.rela.cdrom.vmlinux.cmdline_proc_show.0"].reason.endswith(
        "; gated on vmlinux, not cdrom: since 5.8 the kernel refuses vmlinux symbols in a "
        "module-gated section"
    )
    # two intermediates naming one kernel symbol become one symbol
    klp = [s.name for s in out.symtab.symbols if s.name.startswith(".klp.sym.")]
    assert sorted(klp) == [
        ".klp.sym.cdrom.cdrom_read_mech_status,0",
        ".klp.sym.vmlinux.cmdline_proc_show,0",
        ".klp.sym.vmlinux.state_show,2",
    ]
    assert set(klp_sections(out)) == {".klp.rela.cdrom..text", ".klp.rela.vmlinux..text"}


def test_minimal_mode_without_database(cc, tmp_path):
    plan, _res, out = convert(cc(MINIMAL), None, tmp_path / "o.o")
    assert (
        plan.symbols[".klp.sym.rela.vmlinux.vmlinux.state_show.2"].klp_symbol
        == ".klp.sym.vmlinux.state_show,2"
    )
    assert set(klp_sections(out)) == {".klp.rela.cdrom..text", ".klp.rela.vmlinux..text"}


@pytest.mark.parametrize(
    "name, message",
    [
        (
            ".klp.sym.rela.cdrom.cdrom.foo.isra.0.1",
            "intermediate symbol '.klp.sym.rela.cdrom.cdrom.foo.isra.0.1': the v3 form '<sym>.<pos>' "
            "cannot carry a dotted symbol name ('foo.isra.0'; the kernel tool reads it with "
            "%511[^.]); use the v2 form '<sym>,<pos>' or --map",
        ),
        (
            ".klp.sym.rela.cdrom.foo",
            "intermediate symbol '.klp.sym.rela.cdrom.foo' is not "
            ".klp.sym.rela.<lp_obj>.<sym_obj>.<sym>,<pos> (v1/v2) or "
            ".klp.sym.rela.<lp_obj>.<sym_obj>.<sym>.<pos> (v3)",
        ),
        (
            ".klp.sym.rela.cdrom.cdrom.foo,x",
            "intermediate symbol '.klp.sym.rela.cdrom.cdrom.foo,x' "
            "is not .klp.sym.rela.<lp_obj>.<sym_obj>.<sym>,<pos> (v1/v2) or "
            ".klp.sym.rela.<lp_obj>.<sym_obj>.<sym>.<pos> (v3)",
        ),
    ],
)
def test_intermediate_errors(name, message):
    assert parse_intermediate(name) == message


def test_dotted_name_in_v2_form_is_fine():
    got = parse_intermediate(".klp.sym.rela.cdrom.cdrom.foo.isra.0,1")
    assert (got.object, got.name, got.sympos, got.form) == ("cdrom", "foo.isra.0", 1, "v2")


# ----------------------------------------------------------------- where relocations are
SPECIAL = r"""
extern int cdrom_read_mech_status(void);
extern int cmdline_proc_show(void);
void *entries[] __attribute__((section("{sec}"), used)) = {{ (void *) {sym} }};
"""


@pytest.mark.parametrize(
    "sec, sym, error",
    [
        ("__jump_table", "cmdline_proc_show", None),  # vmlinux-gated: applied early (5.8+)
        (
            "__jump_table",
            "cdrom_read_mech_status",
            "jump_label_add_module() reads the keys when the livepatch loads; only vmlinux-gated "
            "relocations (applied early, kernel >= 5.8) are there in time",
        ),
        (
            ".altinstructions",
            "cmdline_proc_show",
            "apply_alternatives() consumes it in module_finalize() when the livepatch loads, before "
            "livepatch relocations are applied",
        ),
        (
            ".static_call_sites",
            "cdrom_read_mech_status",
            "static_call_add_module() resolves the keys when the livepatch loads, before livepatch "
            "relocations are applied",
        ),
        (
            "__ex_table",
            "cmdline_proc_show",
            "the exception table is sorted and searched from load time on; entries must point into "
            "the livepatch itself",
        ),
        (
            ".parainstructions",
            "cdrom_read_mech_status",
            "apply_paravirt() patches these sites in module_finalize() when the livepatch loads",
        ),
    ],
)
def test_special_sections(cc, small_db, sec, sym, error):
    plan = plan_of(cc(SPECIAL.format(sec=sec, sym=sym)), small_db, objects=["cdrom"])
    if error is None:
        assert plan.ok, plan.errors
        assert any(r.new_section == f".klp.rela.vmlinux.{sec}" for r in plan.relocations)
        return
    assert plan.errors == [
        f".rela{sec}: {sec}+0x0: relocation to {sym} cannot be converted: special section: {error}"
    ]


def test_vmlinux_gated_jump_table_refused_before_5_8(cc, small_db):
    src = cc(SPECIAL.format(sec="__jump_table", sym="cmdline_proc_show"))
    plan = plan_of(src, small_db, objects=["cdrom"], kernel_version=(5, 7))
    assert len(plan.errors) == 1 and "special section: jump_label_add_module()" in plan.errors[0]


def test_non_alloc_and_init_sections(cc, small_db):
    src = r"""
extern int cdrom_read_mech_status(void);
extern int cmdline_proc_show(void);
__asm__(".section .klpkit_note,\"\",@progbits\n.quad cmdline_proc_show\n.previous");
__attribute__((section(".init.text"))) int lp_init(void) { return cdrom_read_mech_status(); }
__attribute__((section(".init.text.v"))) int lp_init2(void) { return cmdline_proc_show(); }
"""
    plan = plan_of(cc(src), small_db, objects=["cdrom"])
    assert plan.errors == [
        ".rela.klpkit_note: .klpkit_note+0x0: relocation to cmdline_proc_show cannot be "
        "converted: the section is not SHF_ALLOC: the module loader never applies livepatch "
        "relocations there",
        ".rela.init.text: .init.text+0x1: relocation to cdrom_read_mech_status cannot be "
        "converted: module-gated livepatch relocations are written when the patched module "
        "loads, possibly after the livepatch's init code has run and been freed",
    ]
    # the vmlinux-gated one in .init.text.v is fine
    assert any(r.new_section == ".klp.rela.vmlinux..init.text.v" for r in plan.relocations)


def test_rel_input_is_refused_when_it_needs_conversion(cc, small_db, tmp_path):
    obj = cc(
        "extern int cdrom_read_mech_status(void); extern int printk(const char *, ...);\n"
        'int f(void) { printk("x"); return cdrom_read_mech_status(); }',
        arch="i386",
    )
    elf = ElfFile.read(obj)
    assert elf.elfclass == 32 and elf.section(".rel.text") is not None
    plan = make_plan(elf, small_db, PlanOptions(objects=["cdrom"]))
    assert plan.errors == [
        ".rel.text: .text+0x11: relocation to cdrom_read_mech_status cannot be converted: "
        "SHT_REL: the kernel's livepatch core applies only SHT_RELA sections "
        "(klp_apply_section_relocs -> apply_relocate_add); REL architectures have no "
        "livepatch support, so klpkit does not invent RELA for them"
    ]
    with pytest.raises(ConvertError, match="the plan has 1 error"):
        apply_plan(elf, plan)
    # a REL object whose references all stay normal converts (to an identical file)
    ok = cc(
        'extern int printk(const char *, ...); int f(void) { return printk("x"); }', arch="i386"
    )
    plan, _res, out = convert(ok, small_db, tmp_path / "rel.o", objects=["cdrom"])
    assert (tmp_path / "rel.o").read_bytes() == ok.read_bytes()


PPC = """
        .section .text
        .globl f
        .type f, @function
f:      mflr 0
        bl cdrom_read_mech_status
        bl printk
        lis 9,cmdline_proc_show@ha
        addi 9,9,cmdline_proc_show@l
        blr
        .size f, .-f
"""


def test_elf32_big_endian_rela(cc, small_db, tmp_path):
    plan, _res, out = convert(cc(PPC, arch="ppc"), small_db, tmp_path / "ppc.o", objects=["cdrom"])
    assert (out.elfclass, out.little_endian) == (32, False)
    secs = klp_sections(out)
    assert set(secs) == {".klp.rela.cdrom..text", ".klp.rela.vmlinux..text"}
    assert all(s.entsize == 12 and s.addralign == 4 for s in secs.values())
    assert [r.symbol.name for r in secs[".klp.rela.vmlinux..text"].relocations] == [
        ".klp.sym.vmlinux.cmdline_proc_show,0"
    ] * 2
    r = subprocess.run(
        ["readelf", "-W", "-r", str(tmp_path / "ppc.o")], capture_output=True, text=True, check=True
    )
    assert "R_PPC_ADDR16_HA" in r.stdout and ".klp.sym.vmlinux.cmdline_proc_show,0" in r.stdout


def test_s390x_big_endian(cc, small_db, tmp_path):
    plan, _res, out = convert(cc(BASE, arch="s390x"), small_db, tmp_path / "s.o", objects=["cdrom"])
    assert not out.little_endian
    assert Modinfo.parse(out.section(".modinfo").data).depends == ["scsi_mod"]
    names = [v.name for v in parse_versions(out.section("__versions").data, 64, False)]
    assert names == ["printk", "scsi_device_get"]


# ----------------------------------------------------------------- malformed inputs
def test_normal_relocation_on_livepatch_symbol_is_an_error(cc, small_db):
    elf = ElfFile.read(cc(BASE))
    sym = next(s for s in elf.symtab.symbols if s.name == "printk")
    sym.shndx = C.SHN_LIVEPATCH
    plan = make_plan(elf, small_db, PlanOptions(objects=["cdrom"]))
    assert plan.errors and all(
        "normal relocation on livepatch symbol printk (the loader would resolve it to 0)" in e
        for e in plan.errors
    )


def test_reconverting_is_a_no_op_and_bad_klp_sections_are_reported(cc, small_db, tmp_path):
    _plan, _res, out = convert(cc(BASE), small_db, tmp_path / "o.o", objects=["cdrom"])
    plan = make_plan(out, small_db, PlanOptions(objects=["cdrom"]))
    assert plan.ok and not plan.changed()
    assert {str(r.category) for r in plan.relocations} >= {"klp", "A", "internal"}
    ks = klp_sections(out)[".klp.rela.cdrom..text"]
    ks.relocations[0].symbol = next(s for s in out.symtab.symbols if s.name == "printk")
    plan = make_plan(out, small_db, PlanOptions(objects=["cdrom"]))
    assert plan.errors[0].startswith(".klp.rela.cdrom..text+0x")
    assert len(plan.errors) == 1
    assert plan.errors[0].endswith(
        ": symbol printk is not marked as a livepatch symbol (the kernel refuses the module)"
    )


def test_missing_livepatch_tag_warns(cc, small_db):
    plan = plan_of(
        cc('extern int printk(const char *, ...); int f(void){return printk("");}'),
        small_db,
        objects=["cdrom"],
    )
    assert plan.ok
    assert (
        'no livepatch=Y in .modinfo (MODULE_INFO(livepatch, "Y")): klp_enable_patch() '
        "will refuse the module"
    ) in plan.warnings


def test_symbol_name_too_long_for_the_kernel(cc, small_db):
    long = "x" * 600
    src = cc(
        f'extern int f1(void) __asm__("\\".klp.sym.rela.vmlinux.vmlinux.{long},0\\"");\n'
        "int f(void) { return f1(); }"
    )
    plan = make_plan(ElfFile.read(src), None, PlanOptions())
    assert plan.errors == [
        f".klp.sym.rela.vmlinux.vmlinux.{long},0: '{long}' cannot be a "
        "livepatch symbol name on kernel 6.1 (at most 511 characters, no ',')"
    ]


# ----------------------------------------------------------------- classifier API
def test_classifier_api(small_db):
    clf = Classifier(small_db, ["cdrom"])
    d = clf.classify("cdrom_check_events")
    assert (d.category, d.action, d.object, d.sympos, d.gate, d.klp_symbol) == (
        Category.B,
        Action.CONVERT,
        "cdrom",
        0,
        "cdrom",
        ".klp.sym.cdrom.cdrom_check_events,0",
    )
    assert clf.classify("printk").category is Category.A
    assert clf.classify("klpkit_weak", weak=True).action is Action.KEEP
    assert Classifier(None, []).classify("printk").category is Category.UNCHECKED
    assert d.as_dict()["klp_symbol"] == ".klp.sym.cdrom.cdrom_check_events,0"


@pytest.mark.parametrize("machine", [0, 0xFFFE])
def test_no_architecture_machine_is_an_error(cc, small_db, machine):
    """e_machine 0 (EM_NONE) or a number no kernel builds for: elf_check_arch() refuses
    the module, and its relocation types mean nothing to carry into .klp.rela."""
    elf = ElfFile.read(cc(BASE))
    elf.machine = machine
    plan = make_plan(elf, small_db, PlanOptions(objects=["cdrom"]))
    assert not plan.ok
    assert f"e_machine {machine} is no architecture the kernel builds for" in plan.errors

"""Conversion on the real Debian 6.1.0-47-amd64 kernel: livepatch modules built in the
test run against the headers (KBUILD_MODPOST_WARN=1), the symbol database built from
the Debian image + -dbg packages.  Slow; with CI=true a missing prerequisite fails."""

from __future__ import annotations

import re
import subprocess

import pytest
from tests.convert.conftest import digest, tool

from klpkit.cli import klp_convert_main, main
from klpkit.convert import PlanOptions, make_plan, parse_map_entry
from klpkit.elf import ElfFile
from klpkit.kernel.modinfo import Modinfo

pytestmark = pytest.mark.slow


def run(*cmd) -> str:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def cdrom_converted(lp_modules, debian_symdb, tmp_path_factory):
    src = lp_modules["lp_cdrom"]
    out = tmp_path_factory.mktemp("cdrom") / "lp_cdrom.klp.ko"
    before = digest(src)
    rc = main(["convert", str(src), "-o", str(out), "--symbols", str(debian_symdb.path)])
    assert rc == 0
    assert digest(src) == before
    return src, out


def test_cdrom_seed_case_symbols(cdrom_converted, debian_symdb):
    src, out = cdrom_converted
    syms = run(tool("readelf"), "--wide", "--symbols", out)
    lines = {
        ln.split()[-1]: " ".join(ln.split()[3:8]) for ln in syms.splitlines() if ".klp.sym." in ln
    }
    assert lines[".klp.sym.cdrom.cdrom_check_events,0"] == "FUNC GLOBAL DEFAULT OS [0xff20]"
    # every static of cdrom the copy uses (what the real 6.1 function calls: the local
    # cdrom_read_mech_status and the local `debug`) became .klp.sym.cdrom.<name>,0
    undefined = [s.name for s in ElfFile.read(src).symtab.symbols if s.is_undefined and s.name]
    statics = [
        n
        for n in undefined
        if any(
            e.object == "cdrom" and e.bind == "local"
            for e in debian_symdb.lookup(n, object="cdrom")
        )
    ]
    assert sorted(statics) == ["cdrom_read_mech_status", "debug"]
    for name in statics:
        assert f".klp.sym.cdrom.{name},0" in lines
    assert lines[".klp.sym.cdrom.cdrom_read_mech_status,0"] == "FUNC GLOBAL DEFAULT OS [0xff20]"
    assert lines[".klp.sym.cdrom.debug,0"] == "OBJECT GLOBAL DEFAULT OS [0xff20]"
    # the real cdrom.ko defines what we resolve to
    real = ElfFile.read(_cdrom_ko())
    real_locals = {s.name for s in real.symtab.symbols if s.bind == 0}
    assert {"cdrom_ioctl_media_changed", "cdrom_read_mech_status", "debug"} <= real_locals


def _cdrom_ko():
    from klpkit import debian

    return debian.find_module("cdrom")


def test_cdrom_seed_case_relocations(cdrom_converted):
    _src, out = cdrom_converted
    text = run(tool("readelf"), "--wide", "--relocs", out)
    blocks = re.split(r"\n(?=Relocation section )", text)
    klp = {
        re.match(r"Relocation section '([^']+)'", b).group(1): b
        for b in blocks
        if b.startswith("Relocation section '.klp.rela.")
    }
    assert klp and all(name.startswith(".klp.rela.cdrom..text") for name in klp)
    body = "\n".join(klp.values())
    for name in ("cdrom_check_events", "cdrom_read_mech_status", "debug"):
        assert f".klp.sym.cdrom.{name},0" in body
    normal = "\n".join(
        b
        for n, b in ((re.match(r"Relocation section '([^']+)'", b), b) for b in blocks)
        if n and not n.group(1).startswith(".klp")
    )
    assert ".klp.sym." not in normal
    secs = run(tool("readelf"), "--wide", "--sections", out)
    for ln in secs.splitlines():
        if ".klp.rela." in ln:
            assert re.search(r"\bRELA\b", ln) and " AIo " in ln


def test_cdrom_seed_case_modinfo(cdrom_converted):
    src, out = cdrom_converted
    modinfo = tool("modinfo")
    assert re.search(r"^depends:\s+cdrom$", run(modinfo, src), re.M)
    after = run(modinfo, out)
    assert re.search(r"^depends:\s*$", after, re.M)
    assert not re.search(r"^depends:.*cdrom", after, re.M)
    assert re.search(r"^livepatch:\s+Y$", after, re.M)
    mi = Modinfo.parse(ElfFile.read(out).section(".modinfo").data)
    assert mi.depends == [] and mi.is_livepatch
    from klpkit.kernel.versions import parse_versions

    names = {v.name for v in parse_versions(ElfFile.read(out).section("__versions").data)}
    assert "cdrom_check_events" not in names and "_printk" in names


ALLOWED_ELFLINT = [
    re.compile(
        r"^section \[\s*\d+\] '\.symtab': symbol \d+ \(\.klp\.sym\.[^)]+\): "
        r"invalid section index$"
    ),
    re.compile(
        r"^section \[\s*\d+\] '\.klp\.rela\.[^']+' contains unknown flag\(s\) "
        r"0x100000$"
    ),
]


def test_cdrom_seed_case_elflint(cdrom_converted):
    src, out = cdrom_converted
    elflint = tool("eu-elflint")
    before = set(run(elflint, "--gnu-ld", src).splitlines())
    after = run(elflint, "--gnu-ld", out).splitlines()
    new = [ln for ln in after if ln not in before]
    assert new, "expected the livepatch messages"
    unexpected = [ln for ln in new if not any(p.match(ln) for p in ALLOWED_ELFLINT)]
    assert unexpected == []


def test_cdrom_keep_exports_keeps_the_dependency(lp_modules, debian_symdb, tmp_path):
    out = tmp_path / "keep.ko"
    assert (
        main(
            [
                "convert",
                str(lp_modules["lp_cdrom"]),
                "-o",
                str(out),
                "--symbols",
                str(debian_symdb.path),
                "--keep-exports",
            ]
        )
        == 0
    )
    mi = Modinfo.parse(ElfFile.read(out).section(".modinfo").data)
    assert mi.depends == ["cdrom"]
    names = {s.name for s in ElfFile.read(out).symtab.symbols}
    assert "cdrom_check_events" in names and ".klp.sym.cdrom.debug,0" in names


def test_policy_branches_on_a_built_module(lp_modules, debian_symdb, tmp_path):
    src = lp_modules["lp_policy"]
    plan = make_plan(ElfFile.read(src), debian_symdb)
    assert plan.ok, plan.errors
    assert (plan.objects, plan.objects_source) == (["cdrom"], "klp_object")
    got = {
        n: (str(d.category), d.klp_symbol)
        for n, d in plan.symbols.items()
        if n
        in (
            "_printk",
            "cdrom_check_events",
            "cdrom_read_mech_status",
            "debug",
            "cmdline_proc_show",
            "saved_command_line",
            "scsi_device_get",
        )
    }
    assert got == {
        "_printk": ("A", None),
        "cdrom_check_events": ("B", ".klp.sym.cdrom.cdrom_check_events,0"),
        "cdrom_read_mech_status": ("local", ".klp.sym.cdrom.cdrom_read_mech_status,0"),
        "debug": ("local", ".klp.sym.cdrom.debug,0"),  # not one of vmlinux's two
        "cmdline_proc_show": ("local", ".klp.sym.vmlinux.cmdline_proc_show,0"),
        "saved_command_line": ("local", ".klp.sym.vmlinux.saved_command_line,0"),
        "scsi_device_get": ("C-D", None),
    }
    out = tmp_path / "lp_policy.klp.ko"
    assert main(["convert", str(src), "-o", str(out), "--symbols", str(debian_symdb.path)]) == 0
    elf = ElfFile.read(out)
    assert Modinfo.parse(elf.section(".modinfo").data).depends == ["scsi_mod"]
    names = {s.name for s in elf.sections}
    # gcc may place the function in .text.unlikely; the klp section follows it
    assert any(n.startswith(".klp.rela.cdrom..text") for n in names)
    assert any(n.startswith(".klp.rela.vmlinux..text") for n in names)


def test_ambiguous_and_unknown_on_the_real_kernel(lp_modules, debian_symdb, capsys, tmp_path):
    src = lp_modules["lp_ambig"]
    plan = make_plan(ElfFile.read(src), debian_symdb)
    assert plan.objects == ["vmlinux"]
    how = (
        "choose with --map {n}=OBJ,POS (or a --map-file line), KLP_MODULE_RELOC(OBJ) "
        "{{ KLP_SYMPOS({n}, POS) }} or KLP_RELOC_SYMBOL_POS(PATCHED_OBJ, OBJ, {n}, POS)"
    )
    assert plan.errors == [
        "state_show: ambiguous: 5 candidates in vmlinux: "
        + ", ".join(f"vmlinux (local, sympos {i})" for i in range(1, 6))
        + "; "
        + how.format(n="state_show"),
        "klpkit_no_such_symbol: not found in any object of the symbol database; define it "
        "in the livepatch, or " + how.format(n="klpkit_no_such_symbol"),
    ]
    out = tmp_path / "o.ko"
    rc = main(
        [
            "convert",
            str(src),
            "-o",
            str(out),
            "--symbols",
            str(debian_symdb.path),
            "--map",
            "state_show=vmlinux,3",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert err.splitlines()[0].startswith("klpkit: error: klpkit_no_such_symbol: not found")
    plan = make_plan(
        ElfFile.read(src),
        debian_symdb,
        PlanOptions(
            choices=[
                parse_map_entry("state_show=vmlinux,3", "--map"),
                parse_map_entry("klpkit_no_such_symbol=vmlinux", "--map"),
            ]
        ),
    )
    assert plan.symbols["state_show"].klp_symbol == ".klp.sym.vmlinux.state_show,3"
    assert plan.errors == [
        "klpkit_no_such_symbol: --map names object 'vmlinux', which has no "
        "symbol 'klpkit_no_such_symbol'"
    ]


def test_annotations_on_a_built_module(lp_modules, debian_symdb, tmp_path):
    src = lp_modules["lp_annot"]
    out = tmp_path / "lp_annot.klp.ko"
    elf = ElfFile.read(src)
    plan = make_plan(elf, debian_symdb)
    assert plan.ok, plan.errors
    assert plan.objects == ["vmlinux", "cdrom"]
    assert (
        'no livepatch=Y in .modinfo (MODULE_INFO(livepatch, "Y")): klp_enable_patch() '
        "will refuse the module"
    ) in plan.warnings
    assert main(["convert", str(src), "-o", str(out), "--symbols", str(debian_symdb.path)]) == 0
    conv = ElfFile.read(out)
    klp = sorted(s.name for s in conv.symtab.symbols if s.name.startswith(".klp.sym."))
    assert klp == [
        ".klp.sym.cdrom.cdrom_read_mech_status,0",
        ".klp.sym.vmlinux.enabled_show,4",
        ".klp.sym.vmlinux.state_show,3",
    ]
    assert not any("module_relocs" in s.name for s in conv.sections)
    assert any(s.name.startswith(".klp.rela.cdrom..text") for s in conv.sections)


def test_klp_convert_dropin_with_a_symbols_list(lp_modules, debian_symdb, tmp_path, capsys):
    """The kernel Makefile's Symbols.list format (names only, __ksymtab_ marks exports),
    restricted to the objects defining what lp_cdrom uses (a full list takes minutes)."""
    src = lp_modules["lp_cdrom"]
    objs: dict[str, list[str]] = {}
    for sym in ElfFile.read(src).symtab.symbols:
        if sym.is_undefined and sym.name:
            for e in debian_symdb.lookup(sym.name):
                lines = objs.setdefault(e.object, [])
                if e.exported:
                    lines.append(f"__ksymtab_{e.name}")
                lines.append(e.name)
    order = ["vmlinux"] + sorted(o for o in objs if o != "vmlinux")
    lst = tmp_path / "Symbols.list"
    lst.write_text(
        "klp-convert-symbol-data.0.1\n"
        + "".join(f"*{o}\n" + "".join(f"{n}\n" for n in objs.get(o, [])) for o in order)
    )
    out = tmp_path / "lp_cdrom.ko"
    assert klp_convert_main([str(lst), str(src), str(out)]) == 0
    assert capsys.readouterr().err == ""
    names = {s.name for s in ElfFile.read(out).symtab.symbols}
    assert {
        ".klp.sym.cdrom.cdrom_check_events,0",
        ".klp.sym.cdrom.debug,0",
        ".klp.sym.cdrom.cdrom_read_mech_status,0",
    } <= names


def test_module_of_another_architecture_is_refused(cc, debian_symdb, tmp_path):
    """The database knows its kernel's architecture (from vmlinux): an i386 object
    converted against the x86_64 kernel is refused, and nothing is written."""
    assert debian_symdb.machine == 62  # EM_X86_64
    obj = cc(
        'extern int printk(const char *, ...);\nint f(void) { return printk("x"); }\n', arch="i386"
    )
    out = tmp_path / "out.ko"
    plan = make_plan(ElfFile.read(obj), debian_symdb, PlanOptions(objects=["vmlinux"]))
    assert (
        "the module is for i386, the symbol database's kernel 6.1.0-47-amd64 is for x86_64"
    ) in plan.errors
    rc = main(["convert", str(obj), "-o", str(out), "--symbols", str(debian_symdb.path)])
    assert rc == 1 and not out.exists()

"""``klpkit convert`` and ``klp-convert``: output, exit codes, error lines, atomicity."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.convert.conftest import digest

from klpkit.cli import klp_convert_main, main
from klpkit.elf import ElfFile
from klpkit.kernel.signature import ModuleSignature

SRC = r"""
extern int printk(const char *, ...);
extern unsigned int cdrom_check_events(void *, unsigned int);
extern int cdrom_read_mech_status(void *, void *);
int lp_func(void *p)
{
    printk("%lx\n", (unsigned long) cdrom_check_events);
    return cdrom_read_mech_status(p, 0);
}
const char modinfo[] __attribute__((section(".modinfo"), used, aligned(1))) =
    "livepatch=Y\0depends=cdrom\0vermagic=6.1.0-test SMP mod_unload ";
"""
BAD = SRC.replace(
    "return cdrom_read_mech_status(p, 0);", "extern int state_show(void); return state_show();"
)


@pytest.fixture
def mod(cc):
    return cc(SRC, name="lp_cli")


@pytest.fixture
def dbpath(small_db):
    return str(small_db.path)


def run_cli(capsys, *argv):
    rc = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return rc, out, err


def test_convert_prints_the_plan_and_writes(capsys, mod, dbpath, tmp_path):
    before = digest(mod)
    out_path = tmp_path / "out.ko"
    rc, out, err = run_cli(
        capsys, "convert", mod, "-o", out_path, "--symbols", dbpath, "--object", "cdrom"
    )
    assert rc == 0, err
    assert digest(mod) == before
    lines = out.splitlines()
    assert lines[0] == "lp_cli: livepatch for cdrom (from --object), kernel 6.1"
    assert lines[1].split() == ["Site", "Old", "symbol", "New", "symbol", "Section", "Cat", "Why"]
    assert any(
        line.startswith(".text+0x")
        and "cdrom_read_mech_status" in line
        and ".klp.sym.cdrom.cdrom_read_mech_status,0" in line
        and ".klp.rela.cdrom..text" in line
        and " local " in line
        for line in lines
    )
    assert lines[-1] == (
        "wrote " + str(out_path) + ": 1 livepatch relocation section(s), 2 "
        "relocation(s) converted; depends: removed cdrom"
    )
    assert err == ""
    assert ElfFile.read(out_path).section(".klp.rela.cdrom..text") is not None
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_symbols_list_is_accepted(capsys, mod, small_list, tmp_path):
    rc, out, err = run_cli(
        capsys,
        "convert",
        mod,
        "-o",
        tmp_path / "o.ko",
        "--symbols",
        small_list,
        "--object",
        "cdrom",
    )
    assert rc == 0, err
    assert ".klp.sym.cdrom.cdrom_check_events,0" in out


def test_json_and_dry_run(capsys, mod, dbpath, tmp_path):
    out_path = tmp_path / "out.ko"
    rc, out, err = run_cli(
        capsys,
        "convert",
        mod,
        "-o",
        out_path,
        "--symbols",
        dbpath,
        "--object",
        "cdrom",
        "--dry-run",
        "--json",
    )
    assert rc == 0
    doc = json.loads(out)
    assert doc["written"] is False and not out_path.exists()
    assert doc["ok"] and doc["objects"] == ["cdrom"] and doc["drop_depends"] == ["cdrom"]
    conv = [r for r in doc["relocations"] if r["action"] == "convert"]
    assert {r["new_symbol"] for r in conv} == {
        ".klp.sym.cdrom.cdrom_check_events,0",
        ".klp.sym.cdrom.cdrom_read_mech_status,0",
    }
    assert all(
        set(r) >= {"section", "target", "offset", "symbol", "category", "reason"}
        for r in doc["relocations"]
    )


def test_plan_errors_exit_1_and_write_nothing(capsys, cc, dbpath, tmp_path):
    bad = cc(BAD, name="lp_bad")
    before = digest(bad)
    out_path = tmp_path / "out.ko"
    rc, out, err = run_cli(
        capsys, "convert", bad, "-o", out_path, "--symbols", dbpath, "--object", "cdrom"
    )
    assert rc == 1
    assert err.splitlines() == [
        "klpkit: error: state_show: ambiguous: 2 candidates in vmlinux: vmlinux (unknown, "
        "sympos 1), vmlinux (unknown, sympos 2); choose with --map state_show=OBJ,POS (or a "
        "--map-file line), KLP_MODULE_RELOC(OBJ) { KLP_SYMPOS(state_show, POS) } or "
        "KLP_RELOC_SYMBOL_POS(PATCHED_OBJ, OBJ, state_show, POS)",
        "klpkit: 1 error(s): nothing written",
    ]
    assert not out_path.exists() and digest(bad) == before
    assert os.listdir(tmp_path) == [] or not [p for p in os.listdir(tmp_path) if "out" in p]
    # the same with a map file: converted
    mapf = tmp_path / "map.txt"
    mapf.write_text("state_show=vmlinux,2\n")
    rc, out, err = run_cli(
        capsys,
        "convert",
        bad,
        "-o",
        out_path,
        "--symbols",
        dbpath,
        "--object",
        "cdrom",
        "--map-file",
        mapf,
    )
    assert rc == 0, err
    assert ".klp.sym.vmlinux.state_show,2" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--map", "oops"], "klpkit: error: --map: 'oops' is not NAME=OBJ[,POS]"),
        (["--map-file", "/nonexistent/m"], "klpkit: error: /nonexistent/m: no such file"),
        (
            ["--symbols", "/nonexistent/db"],
            "klpkit: error: /nonexistent/db: no symbol database here; build one with 'klpkit symbols "
            "build'",
        ),
    ],
)
def test_bad_arguments_exit_2(capsys, mod, dbpath, tmp_path, extra, message):
    argv = ["convert", mod, "-o", tmp_path / "o.ko", "--symbols", dbpath, *extra]
    rc, out, err = run_cli(capsys, *argv)
    assert (rc, err.strip()) == (2, message)
    assert not (tmp_path / "o.ko").exists()


def test_bad_inputs_exit_2(capsys, mod, dbpath, tmp_path):
    files = set(os.listdir(tmp_path))
    rc, _o, err = run_cli(
        capsys, "convert", tmp_path / "none.ko", "-o", tmp_path / "o.ko", "--symbols", dbpath
    )
    assert (rc, err.strip()) == (2, f"klpkit: error: {tmp_path / 'none.ko'}: no such file")
    junk = tmp_path / "junk.ko"
    junk.write_bytes(b"not an elf at all")
    rc, _o, err = run_cli(capsys, "convert", junk, "-o", tmp_path / "o.ko", "--symbols", dbpath)
    assert (rc, err.strip()) == (2, f"klpkit: error: {junk}: not an ELF file (bad magic)")
    rc, _o, err = run_cli(capsys, "convert", mod, "--symbols", dbpath)
    assert (rc, err.strip()) == (2, "klpkit: error: -o OUT.ko is required (or --dry-run)")
    before = digest(mod)
    rc, _o, err = run_cli(capsys, "convert", mod, "-o", mod, "--symbols", dbpath)
    assert (rc, err.strip()) == (
        2,
        f"klpkit: error: {mod}: output is the same file as the module input",
    )
    assert digest(mod) == before
    rc, _o, err = run_cli(
        capsys,
        "convert",
        mod,
        "-o",
        tmp_path / "nodir" / "o.ko",
        "--symbols",
        dbpath,
        "--object",
        "cdrom",
    )
    assert (rc, err.strip()) == (
        2,
        f"klpkit: error: {tmp_path / 'nodir'}: output directory does not exist",
    )
    assert set(os.listdir(tmp_path)) == files | {"junk.ko"}


def test_klp_convert_dropin(capsys, mod, small_list, tmp_path):
    out_path = tmp_path / "o.ko"
    rc = klp_convert_main([str(small_list), str(mod), str(out_path)])
    out, err = capsys.readouterr()
    # no klp_object in this object: cdrom's static is then not resolvable
    assert rc == 1 and out == "" and not out_path.exists()
    assert err.splitlines()[0] == (
        "klp-convert: warning: no klp_object names found in the "
        "module: automatic resolution searches vmlinux only (pass "
        "--object OBJ)"
    )
    assert err.splitlines()[-1].startswith("klp-convert: cdrom_read_mech_status: not exported")


def test_klp_convert_usage(capsys):
    for argv in ([], ["a"], ["a", "b", "c", "d"], ["--help"]):
        assert klp_convert_main(argv) == 2
        assert capsys.readouterr().err == (
            "klp-convert: Usage: klp-convert <symbols.klp> <input.ko> <output.ko>\n"
        )
    assert klp_convert_main(["/nonexistent.ko", "/tmp/x.ko"]) == 2
    assert capsys.readouterr().err == "klp-convert: /nonexistent.ko: no such file\n"


def test_klp_convert_minimal_two_arguments(cc, tmp_path):
    obj = cc(
        'extern int st(void) __asm__(".klp.sym.rela.vmlinux.vmlinux.state_show.2");\n'
        "int f(void) { return st(); }"
    )
    out_path = tmp_path / "o.ko"
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from klpkit.cli import klp_convert_main as m; sys.exit(m(sys.argv[1:]))",
            str(obj),
            str(out_path),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    elf = ElfFile.read(out_path)
    assert elf.section(".klp.rela.vmlinux..text") is not None
    assert any(s.name == ".klp.sym.vmlinux.state_show,2" for s in elf.symtab.symbols)


def test_dropped_signature_is_reported(capsys, mod, dbpath, tmp_path):
    import struct

    from klpkit.kernel.signature import MARKER

    signed = tmp_path / "signed.ko"
    blob = b"S" * 32
    signed.write_bytes(
        mod.read_bytes() + blob + struct.pack(">BBBBB3xI", 0, 0, 2, 0, 0, len(blob)) + MARKER
    )
    assert ModuleSignature.from_trailer(ElfFile.read(signed).trailer) is not None
    out_path = tmp_path / "o.ko"
    rc, out, err = run_cli(
        capsys, "convert", signed, "-o", out_path, "--symbols", dbpath, "--object", "cdrom"
    )
    assert rc == 0, err
    assert out.splitlines()[-1].endswith(
        "; module signature dropped (it signed the old contents; re-sign)"
    )
    assert ModuleSignature.from_trailer(ElfFile.read(out_path).trailer) is None

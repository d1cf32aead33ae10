"""Issue 12 on real modules (tests/convert/lp_issue12.py) built against the Debian 6.1
headers: the patched objects read the way the kernel reads them, ``klpkit convert`` and
the drop-in ``klp-convert Symbols.list IN OUT`` writing the same module, and ``check`` and
``deps`` agreeing with them; a contradicting ``--object`` refused."""

from __future__ import annotations

import json

import pytest
from tests.convert.conftest import digest
from tests.convert.lp_issue12 import LIVEPATCHES

from klpkit.check import Severity, check_module
from klpkit.cli import klp_convert_main, main
from klpkit.convert.objects import read_patched_objects
from klpkit.deps import analyze
from klpkit.elf import ElfFile

pytestmark = pytest.mark.slow


def _objects(path):
    po = read_patched_objects(ElfFile.read(path))
    return [(o.name, o.funcs, o.callbacks) for o in po.objects], po


def test_objects_as_the_kernel_reads_them(issue12_modules):
    m = issue12_modules
    got, po = _objects(m["lp_empty"])
    assert got == [
        ("vmlinux", 1, ()),
        ("cdrom", 0, ("pre_patch", "post_unpatch")),
        ("sr_mod", 0, ()),
    ]
    assert po.source == "klp_patch" and po.registers and po.patches[0].states
    got, po = _objects(m["lp_annotonly"])
    assert got == [] and po.registers and po.annotated == ["cdrom"]
    assert po.effective() == (["cdrom"], "annotations")
    for name in ("lp_vmkey", "lp_datarel"):
        assert _objects(m[name])[0] == [("cdrom", 1, ())], name
    for name in ("plain_target", "lp_tagonly"):
        got, po = _objects(m[name])
        assert got == [] and not po.registers and po.effective() == ([], "none"), name


# what each conversion must write: (objects, their source, klp sections)
EXPECTED = {
    "lp_empty": (["vmlinux", "cdrom", "sr_mod"], "klp_object", {".klp.rela.cdrom..text"}),
    "lp_annotonly": (["cdrom"], "annotations", {".klp.rela.cdrom..text"}),
    "lp_vmkey": (
        ["cdrom"],
        "klp_object",
        {".klp.rela.vmlinux..text", ".klp.rela.vmlinux.__jump_table"},
    ),
    "lp_datarel": (
        ["cdrom"],
        "klp_object",
        {
            ".klp.rela.cdrom..data",
            ".klp.rela.cdrom..rodata",
            ".klp.rela.vmlinux..rodata",
            ".klp.rela.vmlinux..data..read_mostly",
        },
    ),
}


def _klp_sections(path) -> set[str]:
    # gcc places the small functions in .text or .text.unlikely: one name for both
    return {
        s.name.replace(".text.unlikely", ".text")
        for s in ElfFile.read(path).sections
        if s.name.startswith(".klp.rela.")
    }


@pytest.mark.parametrize("name", LIVEPATCHES)
def test_convert_dropin_check_deps_agree(
    name, issue12_modules, debian_symdb, debian_symbols_list, tmp_path, capsys
):
    src = issue12_modules[name]
    before = digest(src)
    objects, source, sections = EXPECTED[name]
    out = tmp_path / f"{name}.klp.ko"
    assert (
        main(["convert", str(src), "-o", str(out), "--symbols", str(debian_symdb.path), "--json"])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert (doc["objects"], doc["objects_source"]) == (objects, source)
    assert sections <= _klp_sections(out), _klp_sections(out)
    # the drop-in, with the whole kernel's Symbols.list: the same bytes
    dropped = tmp_path / f"{name}.dropin.ko"
    assert klp_convert_main([str(debian_symbols_list), str(src), str(dropped)]) == 0
    assert capsys.readouterr().err == ""
    assert dropped.read_bytes() == out.read_bytes()
    assert digest(src) == before
    # check: loads and resolves; deps: no error
    errors = [
        f.as_dict() for f in check_module(out, debian_symdb, "6.1") if f.severity is Severity.ERROR
    ]
    assert errors == []
    report = analyze([out], debian_symdb)
    assert report.verdict != "error", [
        r.as_dict() for r in report.references if r.verdict == "error"
    ]
    assert main(["deps", str(out), "--symbols", str(debian_symdb.path)]) == 0


def test_vmlinux_gated_sections_of_a_module_only_livepatch(issue12_converted, debian_symdb):
    """Since 5.8 the module loader applies .klp.rela.vmlinux.* whatever the klp_objects
    say: deps calls them klp-ok like check (they were 'never applied' errors)."""
    out = issue12_converted["lp_vmkey"]
    report = analyze([out], debian_symdb)
    klp = {r.symbol: r for r in report.references if r.kind == "klp"}
    assert set(klp) == {
        ".klp.sym.vmlinux.sched_schedstats,0",
        ".klp.sym.vmlinux.saved_command_line,0",
    }
    assert all(
        r.category == "klp-ok" and r.verdict == "ok" and r.gate == "vmlinux" for r in klp.values()
    )
    # on a 5.7 kernel nothing would apply them: convert refuses, check and deps say so
    rules = {f.rule for f in check_module(out, debian_symdb, "5.7") if f.severity is Severity.ERROR}
    assert "klp.rela.never-applied" in rules


def test_contradicting_object_is_refused(lp_modules, debian_symdb, tmp_path, capsys):
    src = lp_modules["lp_cdrom"]
    db = str(debian_symdb.path)
    out = tmp_path / "lp_cdrom.srmod.ko"
    assert main(["convert", str(src), "-o", str(out), "--symbols", db, "--object", "sr_mod"]) == 1
    err = capsys.readouterr().err
    assert (
        "klpkit: error: --object sr_mod contradicts the module, which patches cdrom "
        "(its klp_object): the kernel never applies relocations gated on an object its "
        "klp_patch does not list; pass --force to convert anyway"
    ) in err.splitlines()
    assert not out.exists()
    # --force: written, with a warning
    assert (
        main(
            [
                "convert",
                str(src),
                "-o",
                str(out),
                "--symbols",
                db,
                "--object",
                "sr_mod",
                "--object",
                "cdrom",
                "--force",
            ]
        )
        == 0
    )
    assert "(--force)" in capsys.readouterr().err
    assert (
        main(
            [
                "convert",
                str(src),
                "-o",
                str(tmp_path / "x.ko"),
                "--symbols",
                db,
                "--object",
                "cdrom",
            ]
        )
        == 0
    )  # naming its own object: fine
    capsys.readouterr()


def test_object_forced_onto_a_module_check_and_deps_agree(lp_modules, debian_symdb, tmp_path):
    """A relocation gated on an object the klp_patch does not list: convert refuses to
    write it (the gate rule), check and deps both call it an error."""
    from klpkit.convert import PlanOptions, convert_file, parse_map_entry

    src = lp_modules["lp_policy"]  # patches cdrom; uses scsi_mod's export
    out = tmp_path / "forced.ko"
    options = PlanOptions(
        objects=["cdrom", "scsi_mod"],
        force=True,
        choices=[parse_map_entry("scsi_device_get=scsi_mod", "--map")],
        keep_exports=False,
    )
    plan, result, _elf = convert_file(src, out, debian_symdb, options)
    assert plan.ok, plan.errors
    assert any(".klp.rela.scsi_mod." in s for s in result.klp_sections)
    rules = {f.rule for f in check_module(out, debian_symdb, "6.1") if f.severity is Severity.ERROR}
    assert rules == {"klp.rela.never-applied"}
    report = analyze([out], debian_symdb)
    wrong = [r for r in report.references if r.category == "klp-wrong-object"]
    assert [r.gate for r in wrong] == ["scsi_mod"] and report.verdict == "error"
    assert "klp.rela.never-applied" in wrong[0].reason


def test_dropin_imports_no_database(lp_modules, debian_symbols_list, tmp_path, monkeypatch):
    """The drop-in streams the Symbols.list: no temporary database is built."""
    import klpkit.symbols.source as source

    def boom(*_a, **_k):
        raise AssertionError("imported the whole Symbols.list")

    monkeypatch.setattr(source, "import_symbols_list", boom)
    out = tmp_path / "lp_cdrom.ko"
    assert klp_convert_main([str(debian_symbols_list), str(lp_modules["lp_cdrom"]), str(out)]) == 0
    names = {s.name for s in ElfFile.read(out).symtab.symbols}
    assert ".klp.sym.cdrom.cdrom_check_events,0" in names

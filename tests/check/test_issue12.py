"""check on issue 12's modules (tests/convert/lp_issue12.py): the livepatch core's rules
only for a module that registers a patch, the module loader's for every module, and the
objects klp_enable_patch() walks, empty-funcs ones included."""

from __future__ import annotations

import pytest

from klpkit.check import Severity, check_module, first_error
from klpkit.cli import main

pytestmark = pytest.mark.slow


def _rules(findings, severity=None):
    return {f.rule for f in findings if severity is None or f.severity is severity}


def test_plain_modules_get_the_loaders_rules_only(issue12_modules, debian_symdb, capsys):
    """A module that never calls klp_enable_patch() is no livepatch to the kernel: it
    loads (it used to be refused: 'not marked as a livepatch module')."""
    plain = check_module(issue12_modules["plain_target"], debian_symdb, "6.1")
    assert first_error(plain) is None
    assert not {r for r in _rules(plain) if r.startswith(("livepatch.", "klp."))}
    assert (
        main(["check", str(issue12_modules["plain_target"]), "--symbols", str(debian_symdb.path)])
        == 0
    )
    assert "loads and resolves" in capsys.readouterr().out
    # livepatch=Y without klp_enable_patch(): the loader taints, nothing else
    tag = check_module(issue12_modules["lp_tagonly"], debian_symdb, "6.1")
    assert first_error(tag) is None
    taint = [f for f in tag if f.rule == "livepatch.taint"]
    assert len(taint) == 1 and "never sees it" in taint[0].message
    assert taint[0].matches("[    4.2] lp_tagonly: tainting kernel with TAINT_LIVEPATCH")


def test_empty_funcs_objects_are_seen(issue12_modules, issue12_converted, debian_symdb):
    findings = check_module(issue12_converted["lp_empty"], debian_symdb, "6.1")
    assert first_error(findings) is None, [
        f.as_dict() for f in findings if f.severity is Severity.ERROR
    ]
    [objs] = [f for f in findings if f.rule == "livepatch.objects"]
    assert objs.details["objects"] == ["vmlinux", "cdrom", "sr_mod"] and objs.details["states"]
    assert "cdrom (no function; callbacks pre_patch, post_unpatch)" in objs.message
    # the callbacks-only object gates the relocation of its callback: applied, not 'never'
    assert "klp.rela.never-applied" not in _rules(findings)
    resolved = [f.place.symbol for f in findings if f.rule == "klp.sym.resolved"]
    assert resolved == [".klp.sym.cdrom.autoclose,0"]
    # its functions: only vmlinux's has one
    funcs = [
        (f.details["object"], f.details["name"]) for f in findings if f.rule == "klp.func.resolved"
    ]
    assert funcs == [("vmlinux", "cmdline_proc_show")]


def test_objects_set_at_run_time(issue12_converted, debian_symdb):
    """lp_annotonly's klp_objects are filled by its init: check cannot say a gate is
    never applied, and says why."""
    findings = check_module(issue12_converted["lp_annotonly"], debian_symdb, "6.1")
    assert first_error(findings) is None
    [objs] = [f for f in findings if f.rule == "livepatch.objects"]
    assert "not readable" in objs.message
    assert "klp.rela.never-applied" not in _rules(findings)


def test_relocations_in_data_sections(issue12_converted, debian_symdb):
    findings = check_module(issue12_converted["lp_datarel"], debian_symdb, "6.1")
    assert first_error(findings) is None
    resolved = {f.place.symbol for f in findings if f.rule == "klp.sym.resolved"}
    assert resolved == {
        ".klp.sym.cdrom.cdrom_read_mech_status,0",
        ".klp.sym.cdrom.debug,0",
        ".klp.sym.vmlinux.saved_command_line,0",
        ".klp.sym.vmlinux.cmdline_proc_show,0",
    }

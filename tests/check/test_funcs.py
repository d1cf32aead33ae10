"""The klp.func rules: each struct klp_func's old_name/old_sympos resolved as
klp_init_object_loaded() does, on the shared test livepatches against the real Debian
6.1 database (slow), and the rules the database cannot exercise (duplicates, name
length, clones, versions) on a compiled stand-in with a hand-made database (fast)."""

from __future__ import annotations

import pytest

from klpkit.check import RULES, Severity, Stage, check_bytes, check_module, first_error, func_rules
from klpkit.check.context import Context
from klpkit.elf import ElfFile
from klpkit.symbols.db import SymbolEntry
from tests.convert.test_objects import LAYOUT
from tests.klp_edit import set_old_name, set_old_sympos

PATCHED = "cdrom_ioctl_media_changed"


def _func_findings(findings):
    return [f for f in findings if f.rule.startswith("klp.func.")]


# ------------------------------------------------------------------ real modules, real DB
@pytest.mark.slow
def test_test_livepatches_resolve(lp_modules, good_cdrom, debian_symdb):
    want = {
        "lp_cdrom": [("cdrom", PATCHED)],
        "lp_policy": [("cdrom", PATCHED)],
        "lp_ambig": [("vmlinux", "cmdline_proc_show")],
        "lp_annot": [("vmlinux", "cmdline_proc_show"), ("cdrom", PATCHED)],
    }
    for name, funcs in want.items():
        found = _func_findings(check_module(lp_modules[name], debian_symdb, "6.1"))
        assert [(f.details["object"], f.details["name"]) for f in found] == funcs, name
        assert all(
            f.rule == "klp.func.resolved"
            and f.severity is Severity.NOTE
            and f.details["sympos"] == f.details["count"] == 1
            for f in found
        )
    resolved = _func_findings(check_module(good_cdrom, debian_symdb, "6.1"))
    assert [f.details["new_func"] for f in resolved] == ["lp_cdrom_ioctl_media_changed"]
    # vmlinux functions resolve at enable time, module functions with their object
    stages = {
        f.details["object"]: f.stage
        for f in _func_findings(check_module(lp_modules["lp_annot"], debian_symdb, "6.1"))
    }
    assert stages == {"vmlinux": Stage.ENABLE, "cdrom": Stage.OBJECT}


def _mutated(path, db, *edits, kver="6.1"):
    elf = ElfFile.read(path)
    for e in edits:
        e(elf)
    return check_bytes(elf.to_bytes(), db, kver, path=str(path))


@pytest.mark.slow
def test_not_found_in_a_module_object(good_cdrom, debian_symdb):
    findings = _mutated(
        good_cdrom, debian_symdb, lambda elf: set_old_name(elf, PATCHED, "klpkit_no_such_function")
    )
    err = first_error(findings)
    assert err.rule == "klp.func.not-found" and err.stage is Stage.OBJECT
    assert err.place.symbol == "klpkit_no_such_function" and err.place.section == ".data"
    assert err.matches(
        "[   5.1] livepatch: symbol 'klpkit_no_such_function' not found in symbol table"
    )
    assert "cdrom loaded later, cdrom's own insmod fails" in err.message
    # a module loaded after the patch: klp_module_coming() adds two lines
    assert err.details["late_load_kernel_message"] == (
        "livepatch: failed to initialize patch 'lp_cdrom' for module 'cdrom' (-22)\n"
        "livepatch: patch 'lp_cdrom' failed for module 'cdrom', refusing to load module 'cdrom'"
    )


@pytest.mark.slow
def test_inlined_function_says_so(good_cdrom, debian_symdb):
    """cdrom_get_track_info exists in Debian's cdrom.ko only as a .constprop clone."""
    assert debian_symdb.lookup("cdrom_get_track_info", object="cdrom") == []
    findings = _mutated(
        good_cdrom, debian_symdb, lambda elf: set_old_name(elf, PATCHED, "cdrom_get_track_info")
    )
    err = first_error(findings)
    assert err.rule == "klp.func.inlined"
    assert err.details["clones"] == ["cdrom_get_track_info.constprop.0"]
    assert "inlined or specialised" in err.message and "constprop" in err.message
    assert err.matches("livepatch: symbol 'cdrom_get_track_info' not found in symbol table")


@pytest.mark.slow
def test_vmlinux_ambiguity_position_and_clones(lp_modules, debian_symdb):
    """lp_ambig patches vmlinux (klp_object .name NULL): state_show has 5 locals."""
    path = lp_modules["lp_ambig"]
    rename = lambda elf: set_old_name(elf, "cmdline_proc_show", "state_show")  # noqa: E731
    amb = [f for f in _mutated(path, debian_symdb, rename) if f.rule.startswith("klp.func")]
    assert [f.rule for f in amb] == ["klp.func.ambiguous"]
    assert amb[0].stage is Stage.ENABLE and amb[0].details["count"] == 5
    assert amb[0].kernel_message == (
        "livepatch: unresolvable ambiguity for symbol 'state_show' in object '(null)'"
    )
    ok = _func_findings(
        _mutated(path, debian_symdb, rename, lambda elf: set_old_sympos(elf, "state_show", 3))
    )
    assert [(f.rule, f.details.get("sympos")) for f in ok] == [("klp.func.resolved", 3)]
    far = _func_findings(
        _mutated(path, debian_symdb, rename, lambda elf: set_old_sympos(elf, "state_show", 6))
    )
    assert far[0].rule == "klp.func.position"
    assert far[0].matches(
        "livepatch: symbol position 6 for symbol 'state_show' in object 'vmlinux' not found"
    )
    # a function with a .part clone next to it: resolves, with a warning
    part = _func_findings(
        _mutated(
            path, debian_symdb, lambda elf: set_old_name(elf, "cmdline_proc_show", "__aa_path_perm")
        )
    )
    assert [f.rule for f in part] == ["klp.func.resolved", "klp.func.clones"]
    assert part[1].severity is Severity.WARNING
    assert part[1].details["clones"] == ["__aa_path_perm.part.0"]


@pytest.mark.slow
def test_not_a_function(lp_modules, debian_symdb):
    path = lp_modules["lp_ambig"]
    data = _func_findings(
        _mutated(
            path,
            debian_symdb,
            lambda elf: set_old_name(elf, "cmdline_proc_show", "saved_command_line"),
        )
    )
    assert [(f.rule, f.severity) for f in data] == [("klp.func.not-function", Severity.ERROR)]
    assert data[0].kernel_lines == [
        "livepatch: failed to find location for function 'saved_command_line'",
        "livepatch: failed to patch object 'vmlinux'",
        "livepatch: failed to enable patch 'lp_ambig'",
    ]
    # before 5.18 ftrace_set_filter_ip() is what refuses the address
    old = _func_findings(
        _mutated(
            path,
            debian_symdb,
            lambda elf: set_old_name(elf, "cmdline_proc_show", "saved_command_line"),
            kver="5.10",
        )
    )
    assert old[0].kernel_lines[0] == (
        "livepatch: failed to set ftrace filter for function 'saved_command_line' (-22)"
    )
    # an assembler entry point: kallsyms types it 'T' like a C function, and the database
    # (built from kallsyms, as the kernel sees it) cannot tell them apart: check resolves
    # it. Predicting the kernel's refusal needs ftrace's view (__mcount_loc), not stored yet.
    asm = _func_findings(
        _mutated(
            path,
            debian_symdb,
            lambda elf: set_old_name(elf, "cmdline_proc_show", "entry_SYSCALL_64"),
        )
    )
    assert all(f.severity is not Severity.ERROR for f in asm), asm


# ------------------------------------------------------------------ fast: a stand-in DB
class FakeDB:
    """The SymbolDB calls func_rules makes (lookup, object_info, symbols_of), from
    {object: [(name, type)]} in kernel order."""

    release = "6.1.0-fake"

    def __init__(self, objects):
        self.objects = objects

    def object_info(self, obj):
        return {"name": obj} if obj in self.objects else None

    def symbols_of(self, obj):
        return [(n, 0) for n, _t in self.objects.get(obj, ())]

    def lookup(self, name, object=None, include_init=False):
        rows = [t for n, t in self.objects.get(object, ()) if n == name]
        return [
            SymbolEntry(
                object, name, "local", t, False, None, None, i, len(rows), None, True, i, len(rows)
            )
            for i, t in enumerate(rows, 1)
        ]


def _run(path, db, kver=(6, 1), edit=None):
    elf = ElfFile.read(path)
    if edit:
        edit(elf)
    ctx = Context(path=str(path), data=b"", db=db, kver=kver, elf=elf, name="lp")
    func_rules.run(ctx)
    return ctx.findings


DB = FakeDB(
    {
        "vmlinux": [
            ("cmdline_proc_show", "func"),
            ("state_show", "func"),
            ("state_show", "func"),
            ("state_show", "func"),
            ("version_proc_show.isra.0", "func"),
            ("version_proc_show.0", "object"),
        ],
        "cdrom": [("cdrom_ioctl_media_changed", "func"), ("cdrom_ioctl_media_changed", "func")],
    }
)


def test_stand_in_layout(cc):
    """LAYOUT: vmlinux cmdline_proc_show,0 state_show,3 version_proc_show,258; cdrom
    cdrom_ioctl_media_changed,2."""
    got = {(f.place.symbol, f.rule): f for f in _run(cc(LAYOUT), DB)}
    assert set(got) == {
        ("cmdline_proc_show", "klp.func.resolved"),
        ("state_show", "klp.func.resolved"),
        ("version_proc_show", "klp.func.inlined"),
        (PATCHED, "klp.func.resolved"),
    }
    inl = got[("version_proc_show", "klp.func.inlined")]
    # the clone scan skips a static local variable named like a clone (name.0)
    assert inl.details["clones"] == ["version_proc_show.isra.0"]
    assert got[("state_show", "klp.func.resolved")].details["sympos"] == 3


def test_duplicate_and_name_length(cc):
    def edit(elf):
        set_old_name(elf, "state_show", "cmdline_proc_show")  # sympos 3 vs 0: no clash
        set_old_sympos(elf, "version_proc_show", 0)
        set_old_name(elf, "version_proc_show", "x" * 600)

    findings = _run(cc(LAYOUT), DB, edit=edit)
    fmt = [f for f in findings if f.rule == "klp.func.format"]
    assert len(fmt) == 1 and fmt[0].kernel_message is None and "at most 511" in fmt[0].message
    assert not [f for f in findings if f.rule == "klp.func.duplicate"]

    def dup(elf):
        set_old_sympos(elf, "state_show", 1)
        set_old_name(elf, "state_show", "cmdline_proc_show")  # sympos 1 == sympos 0

    found = [f for f in _run(cc(LAYOUT), DB, edit=dup) if f.severity is Severity.ERROR]
    assert [f.rule for f in found] == ["klp.func.duplicate", "klp.func.inlined"]
    assert found[0].matches(
        "kobject_add_internal failed for cmdline_proc_show,1 with -EEXIST, "
        "don't try to register things with the same name in the same "
        "directory."
    )
    assert found[0].kernel_lines[0] == (
        "sysfs: cannot create duplicate filename '/kernel/livepatch/lp/vmlinux/cmdline_proc_show,1'"
    )


def test_versions(cc):
    path = cc(LAYOUT)
    # 5.4: KSYM_NAME_LEN 128; vmlinux functions resolve after the vmlinux relocations
    long = _run(path, DB, (5, 4), lambda elf: set_old_name(elf, "state_show", "y" * 200))
    assert [f.rule for f in long if f.severity is Severity.ERROR] == [
        "klp.func.format",
        "klp.func.inlined",
    ]
    assert {f.stage for f in _run(path, DB, (5, 4)) if f.place.symbol == "cmdline_proc_show"} == {
        Stage.OBJECT
    }
    # before old_sympos (4.5) the rules do not apply
    assert _run(path, DB, (4, 4)) == []
    for rid in (
        "not-found",
        "inlined",
        "ambiguous",
        "position",
        "not-function",
        "format",
        "duplicate",
        "clones",
        "resolved",
    ):
        r = RULES[f"klp.func.{rid}"]
        assert r.family == "klp.func" and r.since == (4, 5) and r.applies((6, 1))
    assert RULES["klp.func.not-found"].kernel == RULES["klp.sym.not-found"].kernel

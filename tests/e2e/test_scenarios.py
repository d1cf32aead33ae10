"""The livepatch scenarios in the real Debian kernels -- 6.1.0-47-amd64 and
6.12.117+deb12-amd64 -- with check's cross-check: ``check_module`` predicts every load
first, for the kernel that runs, and the booted kernel must do what it predicted (an
error: rejected with a dmesg line the finding matches; no error: loaded).

Three boots on each kernel (each prints its boot-to-poweroff time; the session summary
lists them):

* ``vmlinux+dup``: scenario 1 (non-exported vmlinux function + static vmlinux variable),
  scenario 3 (two statics named dup_name in e2e_dup, chosen by sympos), and the broken
  variants: unconverted, missing export, CRC mismatch, replaced function absent (its
  klp_func names a function the build only has as a GCC clone), replaced function named
  by its ``__pfx_`` symbol (absent on 6.1, the padding without an ftrace site on 6.12),
  wrong sympos, ambiguous sympos;
* ``case-B``: scenario 2 (late module patching, no pin, the target reload: refused on
  6.1, working on 6.12 -- clear_relocate_add, 6.3), the same pair unconverted (Unknown
  symbol before the target, pinned after it), and a vmlinux symbol in a module-specific
  section;
* ``cdrom``: scenario 4, the seed's case (examples/cdrom with an emulated CD-ROM).

Every scenario ends with scenario 5: disable, transition ends, rmmod of the livepatch.

Where the kernels differ, the test asks check's rules table (``RULES[...].applies``)
and asserts what the rule says for that version.  A boot is a session-scoped fixture
per kernel (it survives a worker interleaving other modules); its tests share an
``xdist_group`` per kernel (:func:`tests.e2e.conftest.per_kernel`) so that under
``pytest -n N --dist loadgroup`` (scripts/test.sh) each boot runs once, on one worker.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from klpkit import debian
from klpkit.check import RULES, Severity, check_module, first_error
from klpkit.kernel.kver import parse_kernel_version
from klpkit.vm import Step, VmSpec
from tests.e2e.conftest import INLINED, PREFIXED, per_kernel

pytestmark = [pytest.mark.vm, pytest.mark.slow]

RELEASE = debian.DEFAULT_RELEASE
CDROM_CHAIN = ("scsi_common", "scsi_mod", "libata", "ata_piix", "cdrom", "sr_mod")


class Script:
    """Steps with labels, and which livepatch each insmod loads (for the cross-check)."""

    def __init__(self):
        self.steps: list[Step] = []
        self.index: dict[str, int] = {}
        self.checked: dict[str, Path] = {}  # label -> livepatch whose load is predicted

    def add(self, label: str, kind: str, *args, expect: str = "ok", timeout=None) -> None:
        assert label not in self.index, label
        self.index[label] = len(self.steps)
        self.steps.append(Step(kind, *map(str, args), expect=expect, timeout=timeout))

    def load_livepatch(self, label: str, path: Path, expect: str = "ok") -> None:
        self.add(label, "insmod", path, expect=expect)
        self.checked[label] = path

    def livepatch_off(self, prefix: str, name: str) -> None:
        """Scenario 5: disable (transition ends, sysfs entry gone) and rmmod."""
        self.add(f"{prefix}.disable", "disable", name)
        self.add(f"{prefix}.rmmod", "rmmod", name)


class Boot:
    def __init__(self, script: Script, result):
        self.script, self.result = script, result

    def __getitem__(self, label: str):
        return self.result.steps[self.script.index[label]]

    @property
    def kver(self) -> tuple[int, int]:
        """The version of the kernel that ran (what check is asked about)."""
        return parse_kernel_version(self.result.kernel["release"])


def _show(sr) -> str:
    return (
        f"step {sr.index} {sr.step.describe()}: status={sr.status} out={sr.output} dmesg={sr.dmesg}"
    )


def assert_boot_clean(r) -> None:
    """The boot ran to the end with no panic, no kernel WARNING, every step as expected."""
    assert r.done, r.failure
    assert r.failure is None or r.failure.kind != "panic", r.failure
    assert r.warnings == [], r.warnings
    assert all(sr.passed for sr in r.steps), [_show(sr) for sr in r.steps if not sr.passed]


def assert_ran(sr, ok: bool = True) -> None:
    assert sr.status not in ("skipped", "incomplete"), _show(sr)
    assert (sr.exit_status == 0) is ok, _show(sr)


def assert_off(boot: Boot, prefix: str, name: str) -> None:
    """Scenario 5: the livepatch was disabled, its transition ended, and it was removed."""
    dis, rm = boot[f"{prefix}.disable"], boot[f"{prefix}.rmmod"]
    assert_ran(dis)
    assert name not in dis.livepatch, _show(dis)
    assert any(f"'{name}': unpatching complete" in ln for ln in dis.dmesg), _show(dis)
    assert_ran(rm)
    assert not any(m.split()[0] == name for m in rm.modules), _show(rm)


def cross_check(boot: Boot, db, kver: tuple[int, int] | None = None) -> list[str]:
    """check_module's prediction == the kernel's verdict, for every predicted load, on
    the kernel that ran (``kver``: default, the boot's release)."""
    kver = kver or boot.kver
    report = []
    for label, path in boot.script.checked.items():
        sr = boot[label]
        findings = check_module(path, db, kver)
        err = first_error(findings)
        assert sr.status not in ("skipped", "incomplete"), _show(sr)
        if err is None:
            assert sr.exit_status == 0, (
                f"check predicts {path.name} loads, the kernel refused it: {_show(sr)}"
            )
            report.append(f"{label}: predicted OK, loaded")
        else:
            assert sr.exit_status != 0, (
                f"check predicts {err.rule} ({err.kernel_message}), "
                f"but {path.name} loaded: {_show(sr)}"
            )
            assert err.kernel_message, f"{err.rule} has no kernel message"
            hits = [ln for ln in sr.dmesg if err.matches(ln)]
            assert hits, f"no dmesg line matches {err.rule} {err.kernel_message!r}: {_show(sr)}"
            report.append(f"{label}: predicted {err.rule}, kernel said {hits[0]!r}")
    return report


def errors(path: Path, db, kver: tuple[int, int] = (6, 1)) -> list[str]:
    return [f.rule for f in check_module(path, db, kver) if f.severity is Severity.ERROR]


def _spec(script: Script, release: str = RELEASE, **kw) -> VmSpec:
    return VmSpec(release=release, steps=script.steps, keep_going=True, **kw)


def _short(release: str) -> str:
    return ".".join(map(str, parse_kernel_version(release)))


def _print_report(capsys, kver, report: list[str]) -> None:
    tag = f"[check==kernel {kver[0]}.{kver[1]}] "
    with capsys.disabled():
        print("\n" + tag + ("\n" + tag).join(report))


# ------------------------------------------------------------------ boot 1: vmlinux + dup
@pytest.fixture(scope="session")
def boot_vmlinux_dup(release, kernel_boot, e2e_mods):
    m = e2e_mods
    s = Script()
    # scenario 1, broken first: the kernel must refuse each
    s.load_livepatch("s1.raw", m["lp_vmlinux.raw"], expect="fail")
    s.load_livepatch("s1.missing-export", m["lp_vmlinux.missing-export"], expect="fail")
    s.load_livepatch("s1.crc", m["lp_vmlinux.crc"], expect="fail")
    s.load_livepatch("s1.inlined", m["lp_vmlinux.inlined"], expect="fail")
    s.load_livepatch("s1.prefix", m["lp_vmlinux.prefix"], expect="fail")
    s.add("s1.before", "run", "cat /proc/cmdline")
    s.load_livepatch("s1.load", m["lp_vmlinux"])
    s.add("s1.wait", "wait-transition", "lp_vmlinux")
    s.add("s1.show", "run", "cat /proc/cmdline; cat /proc/sys/kernel/threads-max")
    s.livepatch_off("s1", "lp_vmlinux")
    s.add("s1.after", "run", "cat /proc/cmdline")
    # scenario 3: the target first, so klp_enable_patch() resolves dup_name at insmod
    s.add("s3.target", "insmod", m["e2e_dup"])
    s.add("s3.before", "run", "cat /proc/e2e_dup")
    s.load_livepatch("s3.pos3", m["lp_dup.pos3"], expect="fail")
    s.load_livepatch("s3.pos0", m["lp_dup.pos0"], expect="fail")
    for pos in (1, 2):
        s.load_livepatch(f"s3.pos{pos}.load", m[f"lp_dup.{pos}"])
        s.add(f"s3.pos{pos}.wait", "wait-transition", "lp_dup")
        s.add(f"s3.pos{pos}.show", "run", "cat /proc/e2e_dup")
        s.livepatch_off(f"s3.pos{pos}", "lp_dup")
    s.add("s3.after", "run", "cat /proc/e2e_dup")
    s.add("s3.target.rmmod", "rmmod", "e2e_dup")
    name = f"vmlinux+dup (scenarios 1, 3) {_short(release)}"
    return Boot(s, kernel_boot(name, _spec(s, release)))


VMLINUX_DUP = per_kernel("e2e-vmlinux-dup")


@VMLINUX_DUP
def test_boot_vmlinux_dup_clean(boot_vmlinux_dup, release):
    assert boot_vmlinux_dup.result.kernel["release"] == release
    assert_boot_clean(boot_vmlinux_dup.result)


@VMLINUX_DUP
def test_scenario1_vmlinux_function_and_static_variable(boot_vmlinux_dup):
    b = boot_vmlinux_dup
    assert_ran(b["s1.load"])
    assert b["s1.wait"].livepatch == {"lp_vmlinux": {"enabled": 1, "transition": 0}}
    out = b["s1.show"].output
    m = re.fullmatch(r"KLPE2E-VMLINUX max_threads=(\d+) nr_processes=(\d+)", out[0])
    assert m, out
    # the static max_threads of kernel/fork.c is what /proc/sys/kernel/threads-max shows
    assert int(m[1]) == int(out[1]) > 0
    assert int(m[2]) > 0
    assert "KLPE2E" not in b["s1.before"].output[0]
    assert_off(b, "s1", "lp_vmlinux")
    assert b["s1.after"].output == b["s1.before"].output


@VMLINUX_DUP
def test_scenario1_unconverted_is_rejected(boot_vmlinux_dup, e2e_db, e2e_mods):
    b = boot_vmlinux_dup
    sr = b["s1.raw"]
    assert_ran(sr, ok=False)
    for name in ("nr_processes", "max_threads"):
        assert any(f"lp_vmlinux: Unknown symbol {name} (err -2)" in ln for ln in sr.dmesg), _show(
            sr
        )
    assert set(errors(e2e_mods["lp_vmlinux.raw"], e2e_db, b.kver)) == {"undef.unexported"}


@VMLINUX_DUP
def test_scenario3_sympos_chooses_the_static(boot_vmlinux_dup, e2e_db):
    """old_sympos/sympos count the symbols of exactly that name in the module's kallsyms
    order; from 6.2 each static dup_name() has a ``__pfx_dup_name`` before it, a name of
    its own that neither the database nor the kernel counts as a dup_name."""
    b = boot_vmlinux_dup
    entries = e2e_db.lookup("dup_name", object="e2e_dup")
    assert [e.sympos for e in entries] == [1, 2] and {e.bind for e in entries} == {"local"}
    prefixes = e2e_db.lookup("__pfx_dup_name", object="e2e_dup")
    if RULES["klp.func.prefix"].applies(b.kver):
        assert [(e.sympos, e.type) for e in prefixes] == [(1, "func"), (2, "func")]
    else:
        assert prefixes == []
    assert b["s3.before"].output == ["KLPE2E-DUP value=0 a=101 b=201"]
    # link order dup_main.o dup_a.o dup_b.o: sympos 1 is dup_a.c's (+100), 2 dup_b.c's (+200)
    for pos, value in ((1, 107), (2, 207)):
        assert_ran(b[f"s3.pos{pos}.load"])
        assert b[f"s3.pos{pos}.show"].output == [f"KLPE2E-DUP value={value} a=101 b=201"]
        assert_off(b, f"s3.pos{pos}", "lp_dup")
    assert b["s3.after"].output == b["s3.before"].output
    assert_ran(b["s3.target.rmmod"])


@VMLINUX_DUP
def test_scenario3_wrong_sympos_is_rejected(boot_vmlinux_dup):
    b = boot_vmlinux_dup
    pos3, pos0 = b["s3.pos3"], b["s3.pos0"]
    assert_ran(pos3, ok=False)
    assert any(
        "livepatch: symbol position 3 for symbol 'dup_name' in object 'e2e_dup' not found" in ln
        for ln in pos3.dmesg
    ), _show(pos3)
    assert_ran(pos0, ok=False)
    assert any(
        "livepatch: unresolvable ambiguity for symbol 'dup_name' in object 'e2e_dup'" in ln
        for ln in pos0.dmesg
    ), _show(pos0)
    for sr in (pos3, pos0):
        assert "lp_dup" not in sr.livepatch


@VMLINUX_DUP
def test_broken_exports_are_rejected(boot_vmlinux_dup):
    b = boot_vmlinux_dup
    miss, crc = b["s1.missing-export"], b["s1.crc"]
    assert_ran(miss, ok=False)
    assert any(
        "lp_vmlinux: Unknown symbol klpkit_e2e_missing (err -2)" in ln for ln in miss.dmesg
    ), _show(miss)
    assert_ran(crc, ok=False)
    assert any(
        "lp_vmlinux: disagrees about version of symbol seq_printf" in ln for ln in crc.dmesg
    ), _show(crc)


@VMLINUX_DUP
def test_replaced_function_absent_is_rejected(boot_vmlinux_dup, e2e_db, e2e_mods):
    """The klp_func names a function the target build has only as a GCC clone: the module
    loads (relocations resolve), klp_enable_patch() does not find the function, and
    the livepatch's insmod fails without leaving a patch behind."""
    b = boot_vmlinux_dup
    assert e2e_db.lookup(INLINED, object="vmlinux") == []
    assert e2e_db.lookup(f"{INLINED}.isra.0", object="vmlinux")
    sr = b["s1.inlined"]
    assert_ran(sr, ok=False)
    assert any(
        f"livepatch: symbol '{INLINED}' not found in symbol table" in ln for ln in sr.dmesg
    ), _show(sr)
    assert "lp_vmlinux" not in sr.livepatch
    assert not any(mod.split()[0] == "lp_vmlinux" for mod in sr.modules), _show(sr)
    err = first_error(check_module(e2e_mods["lp_vmlinux.inlined"], e2e_db, b.kver))
    assert err.rule == "klp.func.inlined" and f"{INLINED}.isra.0" in err.message


@VMLINUX_DUP
def test_replaced_function_named_by_its_prefix_symbol(boot_vmlinux_dup, e2e_db, e2e_mods):
    """A klp_func naming ``__pfx_cmdline_proc_show``: before 6.2 there is no such symbol
    (klp_find_object_symbol() fails); from 6.2 (CONFIG_CALL_PADDING) the prefix is a
    function symbol of its own in kallsyms, counted apart from the function, that the
    livepatch core resolves and klp_patch_func() finds no ftrace site in.  Either way
    the insmod fails and no patch is left behind, with the message check's rule for the
    running version names."""
    b = boot_vmlinux_dup
    prefix_rule = RULES["klp.func.prefix"]
    entries = e2e_db.lookup(PREFIXED, object="vmlinux")
    if prefix_rule.applies(b.kver):
        assert [(e.sympos, e.type) for e in entries] == [(1, "func")]
        expected = f"livepatch: failed to find location for function '{PREFIXED}'"
        rule = "klp.func.prefix"
    else:
        assert entries == []
        expected = f"livepatch: symbol '{PREFIXED}' not found in symbol table"
        rule = "klp.func.not-found"
    sr = b["s1.prefix"]
    assert_ran(sr, ok=False)
    assert any(expected in ln for ln in sr.dmesg), _show(sr)
    assert "lp_vmlinux" not in sr.livepatch
    assert not any(mod.split()[0] == "lp_vmlinux" for mod in sr.modules), _show(sr)
    assert errors(e2e_mods["lp_vmlinux.prefix"], e2e_db, b.kver) == [rule]


@VMLINUX_DUP
def test_check_predicts_boot_vmlinux_dup(boot_vmlinux_dup, e2e_db, capsys):
    b = boot_vmlinux_dup
    _print_report(capsys, b.kver, cross_check(b, e2e_db))
    rules = {
        label: {f.rule for f in check_module(p, e2e_db, b.kver) if f.severity is Severity.ERROR}
        for label, p in b.script.checked.items()
    }
    assert rules["s1.raw"] == {"undef.unexported"}
    assert rules["s1.missing-export"] == {"undef.missing"}
    assert rules["s1.crc"] == {"undef.crc"}
    assert rules["s1.inlined"] == {"klp.func.inlined"}
    assert rules["s3.pos3"] == {"klp.sym.position"}
    assert rules["s3.pos0"] == {"klp.sym.ambiguous"}
    assert rules["s1.load"] == rules["s3.pos1.load"] == rules["s3.pos2.load"] == set()


# ------------------------------------------------------------------ boot 2: case B
@pytest.fixture(scope="session")
def boot_case_b(release, kernel_boot, e2e_mods):
    m = e2e_mods
    s = Script()
    # scenario 2, converted: the livepatch first (late module patching)
    s.load_livepatch("s2.load", m["lp_target"])
    s.add("s2.wait", "wait-transition", "lp_target")
    s.add("s2.target", "insmod", m["e2e_target"])
    s.add("s2.show", "run", "cat /proc/e2e_target")
    s.add("s2.refs", "run", "cat /sys/module/e2e_target/refcnt; ls /sys/module/e2e_target/holders")
    s.add("s2.target.rmmod", "rmmod", "e2e_target")
    # the reload: refused before 6.3, patched again from 6.3 (klp.rela.reload says which)
    s.add("s2.target.reload", "insmod", m["e2e_target"], expect="any")
    s.add("s2.target.reload.show", "run", "cat /proc/e2e_target", expect="any")
    s.add("s2.target.reload.rmmod", "rmmod", "e2e_target", expect="any")
    s.add("s2.state", "run", "cat /sys/kernel/livepatch/lp_target/enabled; lsmod")
    s.livepatch_off("s2", "lp_target")
    s.add("s2.target.clean", "insmod", m["e2e_target"], expect="any")
    s.add("s2.target.clean.show", "run", "cat /proc/e2e_target")
    s.add("s2.target.clean.rmmod", "rmmod", "e2e_target", expect="any")
    # the same pair unconverted
    s.add("raw.early", "insmod", m["lp_target.raw"], expect="fail")
    s.add("raw.target", "insmod", m["e2e_target"])
    s.load_livepatch("raw.load", m["lp_target.raw"])
    s.add("raw.wait", "wait-transition", "lp_target")
    s.add("raw.show", "run", "cat /proc/e2e_target")
    s.add("raw.refs", "run", "cat /sys/module/e2e_target/refcnt; ls /sys/module/e2e_target/holders")
    s.add("raw.target.rmmod", "rmmod", "e2e_target", expect="fail")
    s.livepatch_off("raw", "lp_target")
    # a vmlinux symbol in a module-specific section (target loaded: refused at insmod)
    s.load_livepatch("vmmod.load", m["lp_target.vmlinux-in-module"], expect="fail")
    s.add("raw.target.rmmod.after", "rmmod", "e2e_target")
    name = f"case-B (scenario 2) {_short(release)}"
    return Boot(s, kernel_boot(name, _spec(s, release)))


CASE_B = per_kernel("e2e-case-b")


@CASE_B
def test_boot_case_b_clean(boot_case_b, release):
    assert boot_case_b.result.kernel["release"] == release
    assert_boot_clean(boot_case_b.result)


@CASE_B
def test_scenario2_late_module_patching_without_pin(boot_case_b):
    b = boot_case_b
    assert_ran(b["s2.load"])
    assert b["s2.wait"].livepatch == {"lp_target": {"enabled": 1, "transition": 0}}
    tgt = b["s2.target"]
    assert_ran(tgt)
    assert any(
        "livepatch: applying patch 'lp_target' to loading module 'e2e_target'" in ln
        for ln in tgt.dmesg
    ), _show(tgt)
    # the replaced static calls the target's export: 40 + 2
    assert b["s2.show"].output == ["KLPE2E-TARGET value=42"]
    # no implicit reference: refcnt 0, no holders, rmmod works with the livepatch loaded
    assert b["s2.refs"].output == ["0"]
    rm = b["s2.target.rmmod"]
    assert_ran(rm)
    assert any(
        "livepatch: reverting patch 'lp_target' on unloading module 'e2e_target'" in ln
        for ln in rm.dmesg
    ), _show(rm)
    assert not any(mod.split()[0] == "e2e_target" for mod in rm.modules)
    assert b["s2.state"].output[0] == "1"


@CASE_B
def test_scenario2_target_reload(boot_case_b, e2e_db, e2e_mods):
    """The target reloaded while the converted livepatch stays enabled.  Before 6.3 (no
    clear_relocate_add) the livepatch's module-gated relocations stay written after
    e2e_target unloads, so the next load of e2e_target is refused; from 6.3
    klp_cleanup_module_patches_limited() clears them and the reload is patched again.
    check's klp.rela.reload warning holds exactly for the kernels that refuse, and its
    messages are the ones this kernel printed."""
    b = boot_case_b
    sr = b["s2.target.reload"]
    warn = [
        f
        for f in check_module(e2e_mods["lp_target"], e2e_db, b.kver)
        if f.rule == "klp.rela.reload"
    ]
    if RULES["klp.rela.reload"].applies(b.kver):
        assert_ran(sr, ok=False)
        assert any("existing value is nonzero" in ln for ln in sr.dmesg), _show(sr)
        assert any(
            "livepatch: patch 'lp_target' failed for module 'e2e_target', refusing to load "
            "module 'e2e_target'" in ln
            for ln in sr.dmesg
        ), _show(sr)
        assert len(warn) == 1 and warn[0].severity is Severity.WARNING
        for pattern in warn[0].kernel_patterns():
            assert any(pattern.search(ln) for ln in sr.dmesg), (pattern.pattern, sr.dmesg)
        assert_ran(b["s2.target.reload.show"], ok=False)  # no /proc/e2e_target
        assert_ran(b["s2.target.reload.rmmod"], ok=False)  # not loaded
    else:
        assert warn == []
        assert_ran(sr)
        assert not any("nonzero" in ln for ln in sr.dmesg), _show(sr)
        assert any(
            "livepatch: applying patch 'lp_target' to loading module 'e2e_target'" in ln
            for ln in sr.dmesg
        ), _show(sr)
        assert b["s2.target.reload.show"].output == ["KLPE2E-TARGET value=42"]
        rm = b["s2.target.reload.rmmod"]
        assert_ran(rm)
        assert any(
            "livepatch: reverting patch 'lp_target' on unloading module 'e2e_target'" in ln
            for ln in rm.dmesg
        ), _show(rm)
    # either way the livepatch itself stays loaded and enabled, and leaves cleanly
    assert b["s2.state"].output[0] == "1"
    assert not any(ln.split()[:1] == ["e2e_target"] for ln in b["s2.state"].output[1:])
    assert_off(b, "s2", "lp_target")
    # with the livepatch gone, the target loads again, unpatched
    assert_ran(b["s2.target.clean"])
    assert b["s2.target.clean.show"].output == ["KLPE2E-TARGET value=1"]


@CASE_B
def test_scenario2_unconverted_fails_early_and_pins(boot_case_b, e2e_db, e2e_mods):
    b = boot_case_b
    early = b["raw.early"]
    assert_ran(early, ok=False)
    assert any(
        "lp_target: Unknown symbol e2e_target_export (err -2)" in ln for ln in early.dmesg
    ), _show(early)
    assert_ran(b["raw.load"])
    assert b["raw.show"].output == ["KLPE2E-TARGET value=42"]
    assert b["raw.refs"].output == ["1", "lp_target"]
    rm = b["raw.target.rmmod"]
    assert_ran(rm, ok=False)
    assert any("Resource temporarily unavailable" in ln for ln in rm.output), _show(rm)
    assert any(mod.split()[0] == "e2e_target" for mod in rm.modules)
    assert_off(b, "raw", "lp_target")
    # check foresaw the pin (and the load-before-target failure it implies)
    pins = [
        f for f in check_module(e2e_mods["lp_target.raw"], e2e_db, b.kver) if f.rule == "deps.pin"
    ]
    assert pins and "e2e_target" in pins[0].message


@CASE_B
def test_vmlinux_symbol_in_module_section_is_rejected(boot_case_b):
    sr = boot_case_b["vmmod.load"]
    assert_ran(sr, ok=False)
    assert any(
        "livepatch: invalid access to vmlinux symbol 'nr_processes' from "
        "module-specific livepatch relocation section" in ln
        for ln in sr.dmesg
    ), _show(sr)


@CASE_B
def test_check_predicts_boot_case_b(boot_case_b, e2e_db, capsys):
    b = boot_case_b
    _print_report(capsys, b.kver, cross_check(b, e2e_db))
    checked = b.script.checked
    assert errors(checked["vmmod.load"], e2e_db, b.kver) == ["klp.rela.vmlinux-in-module"]
    assert errors(checked["s2.load"], e2e_db, b.kver) == []
    assert errors(checked["raw.load"], e2e_db, b.kver) == []


# ------------------------------------------------------------------ boot 3: cdrom
def cdrom_steps(lp_cdrom: Path) -> Script:
    s = Script()
    s.load_livepatch("lp.load", lp_cdrom)
    s.add("lp.wait", "wait-transition", "lp_cdrom")
    for mod in CDROM_CHAIN:
        s.add(f"load.{mod}", "insmod", mod)
    s.add(
        "sr0",
        "run",
        "i=0; while [ ! -b /dev/sr0 ] && [ $i -lt 100 ]; do usleep 100000; "
        "i=$((i+1)); done; ls -l /dev/sr0",
    )
    s.add("ioctl", "run", "cdrom_ioctl /dev/sr0")
    s.add("kallsyms", "run", "grep -w cdrom_check_events /proc/kallsyms")
    s.add("rmmod.chain", "run", "rmmod sr_mod cdrom")
    s.add("state", "run", "cat /sys/kernel/livepatch/lp_cdrom/enabled")
    s.livepatch_off("lp", "lp_cdrom")
    return s


@pytest.fixture(scope="session")
def boot_cdrom(release, kernel_boot, lp_cdrom_converted, cdrom_ioctl):
    s = cdrom_steps(lp_cdrom_converted)
    spec = _spec(s, release, programs=[cdrom_ioctl], qemu_args=["-cdrom", "/dev/null"])
    return Boot(s, kernel_boot(f"cdrom (scenario 4) {_short(release)}", spec))


CDROM = per_kernel("e2e-cdrom")


@per_kernel("e2e-cdrom-chain")
def test_cdrom_chain_order_follows_modinfo(release, kernel_vm_ready):
    from klpkit.elf import ElfFile
    from klpkit.kernel.modinfo import Modinfo

    for i, mod in enumerate(CDROM_CHAIN):
        mi = Modinfo.parse(ElfFile.read(debian.find_module(mod, release)).section(".modinfo").data)
        assert set(mi.depends) <= set(CDROM_CHAIN[:i]), (mod, mi.depends)


@CDROM
def test_scenario4_seed_cdrom_case(boot_cdrom, release):
    b = boot_cdrom
    r = b.result
    assert r.kernel["release"] == release
    assert r.done and r.ok, (r.failure, [_show(sr) for sr in r.steps if not sr.passed])
    assert r.warnings == []
    cdrom = b["load.cdrom"]
    assert any(
        "livepatch: applying patch 'lp_cdrom' to loading module 'cdrom'" in ln for ln in cdrom.dmesg
    ), _show(cdrom)
    ioctl = b["ioctl"]
    assert ioctl.output and ioctl.output[0].startswith("CDROM_MEDIA_CHANGED /dev/sr0 -> "), (
        ioctl.output
    )
    printed = [m[1] for ln in ioctl.dmesg if (m := re.search(r"lp_cdrom: ([0-9a-f]{16})$", ln))]
    assert printed, _show(ioctl)
    ksyms = [ln.split() for ln in b["kallsyms"].output]
    addrs = {f[0] for f in ksyms if len(f) >= 3 and f[2] == "cdrom_check_events"}
    assert len(addrs) == 1, ksyms
    assert set(printed) == addrs, (printed, addrs)
    # the livepatch does not pin cdrom: sr_mod and cdrom unload while it is loaded
    chain = b["rmmod.chain"]
    assert_ran(chain)
    assert not {mod.split()[0] for mod in chain.modules} & {"sr_mod", "cdrom"}
    assert any(
        "reverting patch 'lp_cdrom' on unloading module 'cdrom'" in ln for ln in chain.dmesg
    ), _show(chain)
    assert b["state"].output == ["1"]
    assert_off(b, "lp", "lp_cdrom")


@CDROM
def test_check_predicts_boot_cdrom(boot_cdrom, kernel_symdb, capsys):
    b = boot_cdrom
    _print_report(capsys, b.kver, cross_check(b, kernel_symdb))

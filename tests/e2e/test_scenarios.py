"""Issue 5's scenarios in the real Debian 6.1.0-47-amd64 kernel, with issue 7's
cross-check: ``check_module`` predicts every load first, and the booted kernel must do
what it predicted (an error: rejected with a dmesg line the finding matches; no error:
loaded).

Three boots (each prints its boot-to-poweroff time; the session summary lists them):

* ``vmlinux+dup``: scenario 1 (non-exported vmlinux function + static vmlinux variable),
  scenario 3 (two statics named dup_name in e2e_dup, chosen by sympos), and the broken
  variants: unconverted, missing export, CRC mismatch, replaced function absent (its
  klp_func names a function the build only has as a GCC clone), wrong sympos, ambiguous
  sympos;
* ``case-B``: scenario 2 (late module patching, no pin, the 6.1.170 reload failure), the
  same pair unconverted (Unknown symbol before the target, pinned after it), and a
  vmlinux symbol in a module-specific section;
* ``cdrom``: scenario 4, the seed's case (examples/cdrom with an emulated CD-ROM).

Every scenario ends with scenario 5: disable, transition ends, rmmod of the livepatch.

A boot is a session-scoped fixture (it survives a worker interleaving other modules); its
tests share an ``xdist_group`` so that under
``pytest -n N --dist loadgroup`` (scripts/test.sh) each boot runs once, on one worker.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from klpkit.check import Severity, check_module, first_error
from klpkit.vm import Step, VmSpec
from tests.e2e.conftest import INLINED

pytestmark = [pytest.mark.vm, pytest.mark.slow]

RELEASE = "6.1.0-47-amd64"
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


def cross_check(boot: Boot, db) -> list[str]:
    """check_module's prediction == the kernel's verdict, for every predicted load."""
    report = []
    for label, path in boot.script.checked.items():
        sr = boot[label]
        findings = check_module(path, db, "6.1")
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


def errors(path: Path, db) -> list[str]:
    return [f.rule for f in check_module(path, db, "6.1") if f.severity is Severity.ERROR]


def _spec(script: Script, **kw) -> VmSpec:
    return VmSpec(release=RELEASE, steps=script.steps, keep_going=True, **kw)


# ------------------------------------------------------------------ boot 1: vmlinux + dup
@pytest.fixture(scope="session")
def boot_vmlinux_dup(boot, e2e_mods):
    m = e2e_mods
    s = Script()
    # scenario 1, broken first: the kernel must refuse each
    s.load_livepatch("s1.raw", m["lp_vmlinux.raw"], expect="fail")
    s.load_livepatch("s1.missing-export", m["lp_vmlinux.missing-export"], expect="fail")
    s.load_livepatch("s1.crc", m["lp_vmlinux.crc"], expect="fail")
    s.load_livepatch("s1.inlined", m["lp_vmlinux.inlined"], expect="fail")
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
    return Boot(s, boot("vmlinux+dup (scenarios 1, 3)", _spec(s)))


@pytest.mark.xdist_group("e2e-vmlinux-dup")
def test_boot_vmlinux_dup_clean(boot_vmlinux_dup):
    assert_boot_clean(boot_vmlinux_dup.result)


@pytest.mark.xdist_group("e2e-vmlinux-dup")
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


@pytest.mark.xdist_group("e2e-vmlinux-dup")
def test_scenario1_unconverted_is_rejected(boot_vmlinux_dup, e2e_db, e2e_mods):
    sr = boot_vmlinux_dup["s1.raw"]
    assert_ran(sr, ok=False)
    for name in ("nr_processes", "max_threads"):
        assert any(f"lp_vmlinux: Unknown symbol {name} (err -2)" in ln for ln in sr.dmesg), _show(
            sr
        )
    assert set(errors(e2e_mods["lp_vmlinux.raw"], e2e_db)) == {"undef.unexported"}


@pytest.mark.xdist_group("e2e-vmlinux-dup")
def test_scenario3_sympos_chooses_the_static(boot_vmlinux_dup, e2e_db):
    b = boot_vmlinux_dup
    entries = e2e_db.lookup("dup_name", object="e2e_dup")
    assert [e.sympos for e in entries] == [1, 2] and {e.bind for e in entries} == {"local"}
    assert b["s3.before"].output == ["KLPE2E-DUP value=0 a=101 b=201"]
    # link order dup_main.o dup_a.o dup_b.o: sympos 1 is dup_a.c's (+100), 2 dup_b.c's (+200)
    for pos, value in ((1, 107), (2, 207)):
        assert_ran(b[f"s3.pos{pos}.load"])
        assert b[f"s3.pos{pos}.show"].output == [f"KLPE2E-DUP value={value} a=101 b=201"]
        assert_off(b, f"s3.pos{pos}", "lp_dup")
    assert b["s3.after"].output == b["s3.before"].output
    assert_ran(b["s3.target.rmmod"])


@pytest.mark.xdist_group("e2e-vmlinux-dup")
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


@pytest.mark.xdist_group("e2e-vmlinux-dup")
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


@pytest.mark.xdist_group("e2e-vmlinux-dup")
def test_replaced_function_absent_is_rejected(boot_vmlinux_dup, e2e_db, e2e_mods):
    """The klp_func names a function the target build has only as a GCC clone: the module
    loads (relocations resolve), klp_enable_patch() does not find the function, and
    the livepatch's insmod fails without leaving a patch behind."""
    assert e2e_db.lookup(INLINED, object="vmlinux") == []
    assert e2e_db.lookup(f"{INLINED}.isra.0", object="vmlinux")
    sr = boot_vmlinux_dup["s1.inlined"]
    assert_ran(sr, ok=False)
    assert any(
        f"livepatch: symbol '{INLINED}' not found in symbol table" in ln for ln in sr.dmesg
    ), _show(sr)
    assert "lp_vmlinux" not in sr.livepatch
    assert not any(mod.split()[0] == "lp_vmlinux" for mod in sr.modules), _show(sr)
    err = first_error(check_module(e2e_mods["lp_vmlinux.inlined"], e2e_db, "6.1"))
    assert err.rule == "klp.func.inlined" and f"{INLINED}.isra.0" in err.message


@pytest.mark.xdist_group("e2e-vmlinux-dup")
def test_check_predicts_boot_vmlinux_dup(boot_vmlinux_dup, e2e_db, capsys):
    report = cross_check(boot_vmlinux_dup, e2e_db)
    with capsys.disabled():
        print("\n[check==kernel] " + "\n[check==kernel] ".join(report))
    rules = {
        label: {f.rule for f in check_module(p, e2e_db, "6.1") if f.severity is Severity.ERROR}
        for label, p in boot_vmlinux_dup.script.checked.items()
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
def boot_case_b(boot, e2e_mods):
    m = e2e_mods
    s = Script()
    # scenario 2, converted: the livepatch first (late module patching)
    s.load_livepatch("s2.load", m["lp_target"])
    s.add("s2.wait", "wait-transition", "lp_target")
    s.add("s2.target", "insmod", m["e2e_target"])
    s.add("s2.show", "run", "cat /proc/e2e_target")
    s.add("s2.refs", "run", "cat /sys/module/e2e_target/refcnt; ls /sys/module/e2e_target/holders")
    s.add("s2.target.rmmod", "rmmod", "e2e_target")
    s.add("s2.target.reload", "insmod", m["e2e_target"], expect="any")
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
    return Boot(s, boot("case-B (scenario 2)", _spec(s)))


@pytest.mark.xdist_group("e2e-case-b")
def test_boot_case_b_clean(boot_case_b):
    assert_boot_clean(boot_case_b.result)


@pytest.mark.xdist_group("e2e-case-b")
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


@pytest.mark.xdist_group("e2e-case-b")
def test_scenario2_reload_on_6_1_170(boot_case_b, e2e_db, e2e_mods):
    """6.1.170 lacks clear_relocate_add: the livepatch's module-gated relocations stay
    written after e2e_target unloads, so the next load of e2e_target is refused --
    the kernel's real behaviour, and what check's klp.rela.reload warning says."""
    b = boot_case_b
    sr = b["s2.target.reload"]
    assert_ran(sr, ok=False)
    assert any("existing value is nonzero" in ln for ln in sr.dmesg), _show(sr)
    assert any(
        "livepatch: patch 'lp_target' failed for module 'e2e_target', refusing to load "
        "module 'e2e_target'" in ln
        for ln in sr.dmesg
    ), _show(sr)
    warn = [
        f for f in check_module(e2e_mods["lp_target"], e2e_db, "6.1") if f.rule == "klp.rela.reload"
    ]
    assert len(warn) == 1 and warn[0].severity is Severity.WARNING
    for pattern in warn[0].kernel_patterns():
        assert any(pattern.search(ln) for ln in sr.dmesg), (pattern.pattern, sr.dmesg)
    # the livepatch itself stays loaded and enabled, and leaves cleanly
    assert_off(b, "s2", "lp_target")
    # with the livepatch gone, the target loads again, unpatched
    assert_ran(b["s2.target.clean"])
    assert b["s2.target.clean.show"].output == ["KLPE2E-TARGET value=1"]


@pytest.mark.xdist_group("e2e-case-b")
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
        f for f in check_module(e2e_mods["lp_target.raw"], e2e_db, "6.1") if f.rule == "deps.pin"
    ]
    assert pins and "e2e_target" in pins[0].message


@pytest.mark.xdist_group("e2e-case-b")
def test_vmlinux_symbol_in_module_section_is_rejected(boot_case_b):
    sr = boot_case_b["vmmod.load"]
    assert_ran(sr, ok=False)
    assert any(
        "livepatch: invalid access to vmlinux symbol 'nr_processes' from "
        "module-specific livepatch relocation section" in ln
        for ln in sr.dmesg
    ), _show(sr)


@pytest.mark.xdist_group("e2e-case-b")
def test_check_predicts_boot_case_b(boot_case_b, e2e_db, capsys):
    report = cross_check(boot_case_b, e2e_db)
    with capsys.disabled():
        print("\n[check==kernel] " + "\n[check==kernel] ".join(report))
    checked = boot_case_b.script.checked
    assert errors(checked["vmmod.load"], e2e_db) == ["klp.rela.vmlinux-in-module"]
    assert errors(checked["s2.load"], e2e_db) == errors(checked["raw.load"], e2e_db) == []


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
def boot_cdrom(boot, lp_cdrom_converted, cdrom_ioctl):
    s = cdrom_steps(lp_cdrom_converted)
    return Boot(
        s,
        boot(
            "cdrom (scenario 4)",
            _spec(s, programs=[cdrom_ioctl], qemu_args=["-cdrom", "/dev/null"]),
        ),
    )


def test_cdrom_chain_order_follows_modinfo(vm_ready):
    from klpkit import debian
    from klpkit.elf import ElfFile
    from klpkit.kernel.modinfo import Modinfo

    for i, mod in enumerate(CDROM_CHAIN):
        mi = Modinfo.parse(ElfFile.read(debian.find_module(mod)).section(".modinfo").data)
        assert set(mi.depends) <= set(CDROM_CHAIN[:i]), (mod, mi.depends)


@pytest.mark.xdist_group("e2e-cdrom")
def test_scenario4_seed_cdrom_case(boot_cdrom):
    b = boot_cdrom
    r = b.result
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


@pytest.mark.xdist_group("e2e-cdrom")
def test_check_predicts_boot_cdrom(boot_cdrom, debian_symdb, capsys):
    report = cross_check(boot_cdrom, debian_symdb)
    with capsys.disabled():
        print("\n[check==kernel] " + "\n[check==kernel] ".join(report))

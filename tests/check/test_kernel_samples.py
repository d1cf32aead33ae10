"""The kernel's own livepatch samples (samples/livepatch) and selftest modules
(lib/livepatch) of the release's source, built out of tree: check and deps right on
every one, livepatch or not (issue 12, points 5 and 6)."""

from __future__ import annotations

import pytest

from klpkit.check import Severity, check_module, first_error
from klpkit.convert.objects import read_patched_objects
from klpkit.deps import analyze
from klpkit.elf import ElfFile

pytestmark = pytest.mark.slow

# module -> the objects its klp_patch lists: (name, klp_funcs, callbacks); None: it
# calls no klp_enable_patch() (a patched target, the shadow-variable test).  The
# ``samples`` fixture (tests/check/conftest.py) builds them.
EXPECTED = {
    "livepatch-sample": [("vmlinux", 1, 0)],
    "livepatch-shadow-fix1": [("livepatch_shadow_mod", 2, 0)],
    "livepatch-shadow-fix2": [("livepatch_shadow_mod", 2, 0)],
    "livepatch-callbacks-demo": [
        ("vmlinux", 0, 4),
        ("livepatch_callbacks_mod", 0, 4),
        ("livepatch_callbacks_busymod", 1, 4),
    ],
    "test_klp_atomic_replace": [("vmlinux", 1, 0)],
    "test_klp_livepatch": [("vmlinux", 1, 0)],
    "test_klp_callbacks_demo": [
        ("vmlinux", 0, 4),
        ("test_klp_callbacks_mod", 0, 4),
        ("test_klp_callbacks_busy", 1, 4),
    ],
    "test_klp_callbacks_demo2": [("vmlinux", 0, 4)],
    "test_klp_state": [("vmlinux", 0, 4)],
    "test_klp_state2": [("vmlinux", 0, 4)],
    "test_klp_state3": [("vmlinux", 0, 4)],
    "livepatch-shadow-mod": None,
    "livepatch-callbacks-mod": None,
    "livepatch-callbacks-busymod": None,
    "test_klp_callbacks_mod": None,
    "test_klp_callbacks_busy": None,
    "test_klp_shadow_vars": None,
}


def test_every_module_is_read_as_the_kernel_reads_it(samples):
    mods, _db = samples
    assert set(mods) == set(EXPECTED)
    for name, want in EXPECTED.items():
        po = read_patched_objects(ElfFile.read(mods[name]))
        assert po.registers is (want is not None), name
        got = [(o.name, o.funcs, len(o.callbacks)) for o in po.objects]
        assert got == (want or []), name
    states = read_patched_objects(ElfFile.read(mods["test_klp_state"])).patches
    assert states[0].states and states[0].replace


def test_check_and_deps_on_every_module(samples):
    """Every module loads (the targets are no longer 'not marked as a livepatch
    module'); the livepatch core's rules apply to the livepatches only; deps finds no
    error; the objects check reports are all the klp_patch lists."""
    mods, db = samples
    for name, want in EXPECTED.items():
        findings = check_module(mods[name], db, "6.1")
        assert first_error(findings) is None, (name, first_error(findings).as_dict())
        assert not [f for f in findings if f.severity is Severity.WARNING], name
        core = {f.rule for f in findings if f.rule.startswith(("livepatch.obj", "klp.func"))}
        if want is None:
            assert not core, name
        else:
            [objs] = [f for f in findings if f.rule == "livepatch.objects"]
            assert objs.details["objects"] == [o for o, _f, _c in want], name
        assert analyze([mods[name]], db).verdict == "ok", name


def test_stacked_shadow_fixes(samples):
    """livepatch-shadow-fix2 is a fix on top of fix1 (both patch livepatch_shadow_mod):
    stacked livepatches, not a split set."""
    mods, db = samples
    report = analyze(
        [
            mods["livepatch-shadow-fix1"],
            mods["livepatch-shadow-fix2"],
            mods["livepatch-shadow-mod"],
        ],
        db,
    )
    lps = [m for m in report.modules if m.livepatch]
    assert [m.name for m in lps] == ["livepatch_shadow_fix1", "livepatch_shadow_fix2"]
    assert all(not m.per_object and "stacked" in m.per_object_reason for m in lps)
    assert report.cycles == [] and report.verdict == "ok"


def test_loaded_set_states_and_atomic_replace(samples, capsys):
    """check --loaded: the selftest's 'incompatible cumulative livepatches' case (state
    version 1 after version 2), the compatible order, and what atomic replace drops."""
    from klpkit.cli import main

    mods, db = samples
    state, state2 = mods["test_klp_state"], mods["test_klp_state2"]
    findings = check_module(state, db, "6.1", loaded=[state2])
    err = first_error(findings)
    assert err.rule == "klp.state.incompatible"
    # tools/testing/selftests/livepatch/test-state.sh expects exactly this line
    assert err.matches(
        "[   42.1] livepatch: Livepatch patch (test_klp_state) is not "
        "compatible with the already installed livepatches."
    )
    assert "version 1, older than test_klp_state2's version 2" in err.message
    ok = check_module(state2, db, "6.1", loaded=[state])
    assert first_error(ok) is None
    [after] = [f for f in ok if f.rule == "loaded.set"]
    assert after.details["patches"] == ["test_klp_state2"]  # replaced test_klp_state
    # a cumulative livepatch on top of one that patches a function it does not
    sample = mods["livepatch-sample"]
    dropped = [
        f
        for f in check_module(state, db, "6.1", loaded=[sample])
        if f.rule == "klp.replace.reverts"
    ]
    assert len(dropped) == 1 and "vmlinux:cmdline_proc_show,1" in dropped[0].message
    stacked = [
        f
        for f in check_module(mods["test_klp_livepatch"], db, "6.1", loaded=[sample])
        if f.rule == "klp.stack.top"
    ]
    assert len(stacked) == 1 and "livepatch_sample" in stacked[0].message
    # the command line
    assert main(["check", str(state), "--symbols", str(db.path), "--loaded", str(state2)]) == 1
    assert "refused: klp.state.incompatible" in capsys.readouterr().out
    assert main(["check", str(state), "--symbols", str(db.path), "--loaded", str(state)]) == 1
    assert "refused: loaded.duplicate" in capsys.readouterr().out


def _sysfs(root, patches: dict, modules: list[str] | None = None):
    """A copy of a running system's /sys/kernel/livepatch (and /proc/modules, newest
    first): {patch: (enabled, transition, {object: [function,sympos ...]})}."""
    base = root / "sys" / "kernel" / "livepatch"
    base.mkdir(parents=True)
    for name, (enabled, transition, objects) in patches.items():
        d = base / name
        d.mkdir()
        (d / "enabled").write_text(f"{enabled}\n")
        (d / "transition").write_text(f"{transition}\n")
        for obj, funcs in objects.items():
            (d / obj).mkdir()
            (d / obj / "patched").write_text("1\n")
            for f in funcs:
                (d / obj / f).mkdir()
    if modules is not None:
        (root / "proc").mkdir()
        (root / "proc" / "modules").write_text(
            "".join(f"{m} 16384 0 - Live 0x0000000000000000 (OEK)\n" for m in modules)
        )
    return root


def test_loaded_from_sysfs(samples, tmp_path, capsys):
    """check --loaded-from-sysfs: the set is the running kernel's (sysfs), its states and
    replace flags from the module files found by name (- and _ alike), the load order
    from /proc/modules; a transition in progress refuses the next livepatch (-EBUSY)."""
    from klpkit.check.loaded_rules import read_sysfs
    from klpkit.cli import main
    from klpkit.errors import InputError

    mods, db = samples
    build = mods["test_klp_state"].parent
    root = _sysfs(
        tmp_path / "a",
        {
            "test_klp_state2": (1, 0, {"vmlinux": []}),
            "livepatch_sample": (1, 0, {"vmlinux": ["cmdline_proc_show,1"]}),
        },
        modules=["livepatch_sample", "test_klp_state2", "ext4"],
    )
    running = read_sysfs(root, build)
    assert [p.name for p in running.patches] == ["test_klp_state2", "livepatch_sample"]
    assert running.patches[1].module == str(mods["livepatch-sample"])
    assert running.modules == {"livepatch_sample", "test_klp_state2", "ext4"}
    err = first_error(check_module(mods["test_klp_state"], db, "6.1", running=running))
    assert err.rule == "klp.state.incompatible"
    findings = check_module(mods["test_klp_livepatch"], db, "6.1", running=running)
    assert first_error(findings) is None
    assert {f.rule for f in findings} >= {"klp.stack.top", "loaded.set"}
    args = ["check", str(mods["test_klp_state"]), "--symbols", str(db.path)]
    assert main([*args, "--loaded-from-sysfs", str(root), "--modules-dir", str(build)]) == 1
    assert "refused: klp.state.incompatible" in capsys.readouterr().out
    # a module of the same name is loaded (not a livepatch: /proc/modules says so)
    root = _sysfs(tmp_path / "dup", {}, modules=["test_klp_livepatch"])
    err = first_error(
        check_module(mods["test_klp_livepatch"], db, "6.1", running=read_sysfs(root, build))
    )
    assert err.rule == "loaded.duplicate"
    # unpatching in progress: still in klp_patches, and -EBUSY
    root = _sysfs(tmp_path / "b", {"livepatch_sample": (0, 1, {"vmlinux": []})})
    err = first_error(
        check_module(mods["test_klp_livepatch"], db, "6.1", running=read_sysfs(root, build))
    )
    assert err.rule == "loaded.transition" and "(unpatching)" in err.message
    # bad inputs: one line each, exit 2
    with pytest.raises(InputError, match="its module file is not under"):
        read_sysfs(_sysfs(tmp_path / "c", {"lp_gone": (1, 0, {})}), build)
    with pytest.raises(InputError, match="loaded livepatch test_klp_callbacks_mod is not a"):
        read_sysfs(_sysfs(tmp_path / "e", {"test_klp_callbacks_mod": (1, 0, {})}), build)
    with pytest.raises(InputError, match="no sys/kernel/livepatch directory"):
        read_sysfs(tmp_path / "c" / "sys", build)
    bad = _sysfs(tmp_path / "d", {"livepatch_sample": (1, 0, {})})
    (bad / "sys/kernel/livepatch/livepatch_sample/enabled").write_text("２\n")
    assert main([*args, "--loaded-from-sysfs", str(bad), "--modules-dir", str(build)]) == 2
    assert "enabled" in capsys.readouterr().err
    assert main([*args, "--modules-dir", str(build)]) == 2

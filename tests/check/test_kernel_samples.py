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

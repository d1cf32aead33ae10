"""The kernel's own selftest livepatches (lib/livepatch) in the real Debian 6.1 kernel
under qemu, against check's predictions for the set each one joins (check --loaded):
the 'incompatible cumulative livepatches' case of tools/testing/selftests/livepatch/
test-state.sh, atomic replace of one state livepatch by the next, and the callbacks of
objects without functions (test-callbacks.sh's demo)."""

from __future__ import annotations

import pytest

from klpkit.check import check_module, first_error
from tests.e2e.conftest import boot, vm_ready  # noqa: F401 - fixtures
from tests.e2e.test_scenarios import Boot, Script, _show, _spec, assert_ran

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture(scope="module")
def boot_selftests(boot, samples):  # noqa: F811
    mods, _db = samples
    s = Script()
    # test-state.sh, "incompatible cumulative livepatches"
    s.add("s2.load", "insmod", mods["test_klp_state2"])
    s.add("s2.wait", "wait-transition", "test_klp_state2")
    s.add("s1.load", "insmod", mods["test_klp_state"], expect="fail")
    s.add("s2.disable", "disable", "test_klp_state2")
    s.add("s2.rmmod", "rmmod", "test_klp_state2")
    # the compatible order: state2 replaces state
    s.add("r1.load", "insmod", mods["test_klp_state"])
    s.add("r1.wait", "wait-transition", "test_klp_state")
    s.add("r2.load", "insmod", mods["test_klp_state2"])
    s.add("r2.wait", "wait-transition", "test_klp_state2")
    s.add("r2.list", "run", "ls /sys/kernel/livepatch")
    s.add("r2.disable", "disable", "test_klp_state2")
    # callbacks of objects without functions: vmlinux at once, the module when it loads
    s.add("cb.load", "insmod", mods["test_klp_callbacks_demo"])
    s.add("cb.wait", "wait-transition", "test_klp_callbacks_demo")
    s.add("cb.mod", "insmod", mods["test_klp_callbacks_mod"])
    s.add("cb.objects", "run", "ls /sys/kernel/livepatch/test_klp_callbacks_demo")
    return Boot(s, boot("kernel selftests: states, replace, callbacks", _spec(s)))


def test_incompatible_states_predicted(boot_selftests, samples):
    b, (mods, db) = boot_selftests, samples
    refused = b["s1.load"]
    assert_ran(refused, ok=False)
    err = first_error(
        check_module(mods["test_klp_state"], db, "6.1", loaded=[mods["test_klp_state2"]])
    )
    assert err.rule == "klp.state.incompatible"
    assert [ln for ln in refused.dmesg if err.matches(ln)], _show(refused)
    # alone, check predicts it loads -- the set decides
    assert first_error(check_module(mods["test_klp_state"], db, "6.1")) is None


def test_atomic_replace_as_predicted(boot_selftests, samples):
    b, (mods, db) = boot_selftests, samples
    assert_ran(b["r2.load"])
    findings = check_module(mods["test_klp_state2"], db, "6.1", loaded=[mods["test_klp_state"]])
    assert first_error(findings) is None
    [after] = [f for f in findings if f.rule == "loaded.set"]
    assert b["r2.list"].output == after.details["patches"] == ["test_klp_state2"]


def test_callbacks_of_objects_without_functions(boot_selftests, samples):
    """Every klp_object of the patch has its sysfs directory, functions or not: the
    objects check reports."""
    b, (mods, db) = boot_selftests, samples
    assert_ran(b["cb.load"])
    assert any("pre_patch_callback: vmlinux" in ln for ln in b["cb.load"].dmesg), _show(
        b["cb.load"]
    )
    mod = b["cb.mod"]
    assert any(
        "pre_patch_callback: test_klp_callbacks_mod -> [MODULE_STATE_COMING]" in ln
        for ln in mod.dmesg
    ), _show(mod)
    [objs] = [
        f
        for f in check_module(mods["test_klp_callbacks_demo"], db, "6.1")
        if f.rule == "livepatch.objects"
    ]
    attributes = {"enabled", "force", "transition", "replace"}
    assert (
        set(b["cb.objects"].output) - attributes
        == set(objs.details["objects"])
        == {"vmlinux", "test_klp_callbacks_mod", "test_klp_callbacks_busy"}
    )

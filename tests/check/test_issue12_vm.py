"""Issue 12's converted livepatches (tests/convert/lp_issue12.py) in the real Debian
6.1.0-47 kernel under qemu, each loaded in both orders with cdrom (one boot): each loads
(check predicted it), patches cdrom, and prints what it should -- the callbacks-only
cdrom object of lp_empty, the vmlinux-gated sections of the cdrom-only lp_vmkey
(applied by the module loader), the .data/.rodata/.data..read_mostly relocations of
lp_datarel, the run-time klp_objects of lp_annotonly."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import boot, cdrom_ioctl, vm_ready  # noqa: F401 - fixtures
from tests.e2e.test_scenarios import (
    CDROM_CHAIN,
    Boot,
    Script,
    _show,
    _spec,
    assert_boot_clean,
    cross_check,
)

pytestmark = [pytest.mark.vm, pytest.mark.slow]

WAIT_SR0 = (
    "i=0; while [ ! -b /dev/sr0 ] && [ $i -lt 100 ]; do usleep 100000; "
    "i=$((i+1)); done; ls -l /dev/sr0"
)
CASES = ("lp_empty", "lp_vmkey", "lp_datarel", "lp_annotonly")


def _probe(s: Script, label: str) -> None:
    s.add(f"{label}.sr0", "run", WAIT_SR0)
    s.add(f"{label}.ioctl", "run", "cdrom_ioctl /dev/sr0")
    s.add(f"{label}.cmdline", "run", "cat /proc/cmdline")


def _case(s: Script, name: str, path) -> None:
    # order A: the livepatch first (late patching of cdrom)
    s.load_livepatch(f"{name}.a.load", path)
    s.add(f"{name}.a.wait", "wait-transition", name)
    for mod in ("cdrom", "sr_mod"):
        s.add(f"{name}.a.{mod}", "insmod", mod)
    _probe(s, f"{name}.a")
    s.add(f"{name}.a.unload", "run", "rmmod sr_mod cdrom")
    s.livepatch_off(f"{name}.a", name)
    # order B: cdrom first
    for mod in ("cdrom", "sr_mod"):
        s.add(f"{name}.b.{mod}", "insmod", mod)
    s.load_livepatch(f"{name}.b.load", path)
    s.add(f"{name}.b.wait", "wait-transition", name)
    _probe(s, f"{name}.b")
    s.livepatch_off(f"{name}.b", name)
    s.add(f"{name}.b.unload", "run", "rmmod sr_mod cdrom")


@pytest.fixture(scope="module")
def boot_issue12(boot, issue12_converted, cdrom_ioctl):  # noqa: F811
    s = Script()
    for mod in CDROM_CHAIN[:-2]:  # the SCSI/ATA layers stay loaded
        s.add(f"chain.{mod}", "insmod", mod)
    for name in CASES:
        _case(s, name, issue12_converted[name])
    return Boot(
        s,
        boot(
            "issue 12: empty funcs, vmlinux key, data relocations, run-time objects",
            _spec(s, programs=[cdrom_ioctl], qemu_args=["-cdrom", "/dev/null"]),
        ),
    )


def _lines(sr, text: str) -> list[str]:
    return [ln for ln in sr.dmesg if text in ln]


def test_each_livepatch_in_both_orders(boot_issue12):
    b = boot_issue12
    assert_boot_clean(b.result)
    for order in ("a", "b"):
        # lp_empty: the vmlinux function, and the callbacks of its funcs-less cdrom object
        # (which read cdrom's static `autoclose` through a livepatch relocation)
        assert "klpkit lp_empty" in b[f"lp_empty.{order}.cmdline"].output
        where = b["lp_empty.a.cdrom"] if order == "a" else b["lp_empty.b.load"]
        assert _lines(where, "lp_empty: pre_patch cdrom autoclose=1"), _show(where)
        for name, marker in (
            ("lp_vmkey", "lp_vmkey: "),
            ("lp_datarel", "lp_datarel: debug=0"),
            ("lp_annotonly", "lp_annotonly: debug=0"),
        ):
            sr = b[f"{name}.{order}.ioctl"]
            assert sr.output and sr.output[0].startswith("CDROM_MEDIA_CHANGED /dev/sr0 -> 0"), (
                _show(sr)
            )
            assert _lines(sr, marker), _show(sr)
    # the vmlinux-gated relocations of the cdrom-only lp_vmkey were applied when it
    # loaded: it prints the start of the command line
    cmdline = b["lp_vmkey.a.cmdline"].output[0]
    assert _lines(b["lp_vmkey.a.ioctl"], f"lp_vmkey: {cmdline[:16]}")
    assert _lines(b["lp_datarel.b.ioctl"], f"cmdline={cmdline[:16]}")


def test_check_predicted_each_load(boot_issue12, debian_symdb, capsys):
    report = cross_check(boot_issue12, debian_symdb)
    with capsys.disabled():
        print("\n[check==kernel] " + "\n[check==kernel] ".join(report))

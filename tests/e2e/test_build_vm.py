"""Livepatches made by ``klpkit build`` from source patches, proven in the real Debian
6.1.0-47 kernel under qemu (two boots).

* ``build-seed``: the seed's patch (cdrom, case B) loaded before the cdrom chain
  (late patching), ``ioctl(CDROM_MEDIA_CHANGED)`` prints the address /proc/kallsyms
  gives for cdrom_check_events, sr_mod and cdrom unload while it is loaded; removed,
  then loaded *after* the chain; then the two-objects patch (vmlinux + cdrom);
* ``build-corpus``: the vmlinux patches of tests/build/patches and the /proc/cmdline
  marker, all loaded together: each prints what its patch says, the static branch
  follows sched_schedstats, the non-unique ``c_next`` the livepatch prints is the one
  next to show_console_dev, and a disabled patch stops showing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.test_scenarios import (
    CDROM_CHAIN,
    Boot,
    Script,
    _show,
    _spec,
    assert_boot_clean,
    assert_off,
    cross_check,
)

pytestmark = [pytest.mark.vm, pytest.mark.slow]

WAIT_SR0 = (
    "i=0; while [ ! -b /dev/sr0 ] && [ $i -lt 100 ]; do usleep 100000; "
    "i=$((i+1)); done; ls -l /dev/sr0"
)


def _ko(built_patches, name: str) -> Path:
    r = built_patches[name]
    assert r["rc"] == 0, r
    return Path(r["output"])


def _modname(built_patches, name: str) -> str:
    return built_patches[name]["report"]["module"]


# ------------------------------------------------------------------ boot: the seed
@pytest.fixture(scope="session")
def boot_seed(boot, built_patches, cdrom_ioctl):
    seed, two = _ko(built_patches, "cdrom-media-changed"), _ko(built_patches, "two-objects")
    lp, lp2 = _modname(built_patches, "cdrom-media-changed"), _modname(built_patches, "two-objects")
    s = Script()
    # order A: the livepatch first, then the module it patches
    s.load_livepatch("a.load", seed)
    s.add("a.wait", "wait-transition", lp)
    for mod in CDROM_CHAIN:
        s.add(f"a.{mod}", "insmod", mod)
    s.add("a.sr0", "run", WAIT_SR0)
    s.add("a.ioctl", "run", "cdrom_ioctl /dev/sr0")
    s.add("kallsyms", "run", "grep -w cdrom_check_events /proc/kallsyms")
    s.add("a.unload", "run", "rmmod sr_mod cdrom")
    s.livepatch_off("a", lp)
    # order B: the module first, then the livepatch
    for mod in ("cdrom", "sr_mod"):
        s.add(f"b.{mod}", "insmod", mod)
    s.add("b.sr0", "run", WAIT_SR0)
    s.load_livepatch("b.load", seed)
    s.add("b.wait", "wait-transition", lp)
    s.add("b.ioctl", "run", "cdrom_ioctl /dev/sr0")
    s.livepatch_off("b", lp)
    # two objects in one livepatch: vmlinux applies at once, cdrom is already loaded
    s.load_livepatch("two.load", two)
    s.add("two.wait", "wait-transition", lp2)
    s.add("two.objects", "run", f"ls /sys/kernel/livepatch/{lp2}")
    s.add("two.cmdline", "run", "cat /proc/cmdline")
    s.add("two.ioctl", "run", "cdrom_ioctl /dev/sr0")
    s.livepatch_off("two", lp2)
    return Boot(
        s,
        boot(
            "build: seed + two objects",
            _spec(s, programs=[cdrom_ioctl], qemu_args=["-cdrom", "/dev/null"]),
        ),
    )


def _printed(sr, marker: str) -> list[str]:
    return [m[1] for ln in sr.dmesg if (m := re.search(marker + r"([0-9a-f]{16})$", ln))]


@pytest.mark.xdist_group("e2e-build-seed")
def test_seed_livepatch_in_the_real_kernel(boot_seed, built_patches):
    b = boot_seed
    assert_boot_clean(b.result)
    lp = _modname(built_patches, "cdrom-media-changed")
    ksyms = [ln.split() for ln in b["kallsyms"].output]
    addrs = {f[0] for f in ksyms if len(f) >= 3 and f[2] == "cdrom_check_events"}
    assert len(addrs) == 1, ksyms
    assert any(
        f"livepatch: applying patch '{lp}' to loading module 'cdrom'" in ln
        for ln in b["a.cdrom"].dmesg
    ), _show(b["a.cdrom"])
    for step in ("a.ioctl", "b.ioctl"):
        printed = _printed(b[step], r"cdrom: ")
        assert printed and set(printed) == addrs, (_show(b[step]), addrs)
    # no pin: sr_mod and cdrom unload while the livepatch is loaded
    chain = b["a.unload"]
    assert not {m.split()[0] for m in chain.modules} & {"sr_mod", "cdrom"}, _show(chain)
    assert any(f"reverting patch '{lp}' on unloading module 'cdrom'" in ln for ln in chain.dmesg)
    assert_off(b, "a", lp)
    assert_off(b, "b", lp)


@pytest.mark.xdist_group("e2e-build-seed")
def test_two_objects_livepatch(boot_seed, built_patches):
    b = boot_seed
    assert {"vmlinux", "cdrom"} <= set(b["two.objects"].output), _show(b["two.objects"])
    assert b["two.cmdline"].output[0].endswith(" klpkit-two-objects"), _show(b["two.cmdline"])
    assert _printed(b["two.ioctl"], r"cdrom: klpkit-two "), _show(b["two.ioctl"])
    assert_off(b, "two", _modname(built_patches, "two-objects"))


@pytest.mark.xdist_group("e2e-build-seed")
def test_check_predicts_built_livepatches(boot_seed, debian_symdb):
    assert cross_check(boot_seed, debian_symdb)


# ------------------------------------------------------------------ boot: the corpus
CORPUS = (
    "proc-cmdline-marker",
    "version-new-helper",
    "uptime-string-warn",
    "loadavg-static-branch",
    "consoles-sympos-once",
    "readdir-uaccess",
)
FILES = "/proc/cmdline /proc/version /proc/uptime /proc/loadavg /proc/consoles"


@pytest.fixture(scope="session")
def boot_corpus(boot, built_patches):
    s = Script()
    s.add("before", "run", f"touch /tmp/klpkit-hidden /tmp/klpkit-shown; ls /tmp; cat {FILES}")
    for name in CORPUS:
        s.load_livepatch(f"{name}.load", _ko(built_patches, name))
        s.add(f"{name}.wait", "wait-transition", _modname(built_patches, name))
    s.add("after", "run", f"ls /tmp; cat {FILES}")
    s.add(
        "schedstats",
        "run",
        "echo 1 > /proc/sys/kernel/sched_schedstats; cat /proc/loadavg; "
        "echo 0 > /proc/sys/kernel/sched_schedstats; cat /proc/loadavg",
    )
    s.add("kallsyms", "run", "grep -w -e c_next -e show_console_dev /proc/kallsyms")
    s.add("once", "run", "cat /proc/consoles >/dev/null; cat /proc/consoles >/dev/null")
    for name in CORPUS:
        s.livepatch_off(name, _modname(built_patches, name))
    s.add("off", "run", f"ls /tmp; cat {FILES}")
    return Boot(s, boot("build: corpus", _spec(s)))


@pytest.mark.xdist_group("e2e-build-corpus")
def test_corpus_livepatches_in_the_real_kernel(boot_corpus, built_patches):
    b = boot_corpus
    assert_boot_clean(b.result)
    before, after, off = (b[k].output for k in ("before", "after", "off"))
    # getdents64 through the patched filldir64 (user-access exception table entries and
    # alternatives carried): the hidden name is gone, the other one is still listed
    assert "klpkit-hidden" in before and "klpkit-shown" in before, before
    assert "klpkit-hidden" not in after and "klpkit-shown" in after, after
    assert "klpkit-hidden" in off, off
    names = {"klpkit-hidden", "klpkit-shown"}
    before, after, off = ([ln for ln in x if ln not in names] for x in (before, after, off))
    assert not any("klpkit" in ln for ln in before), before
    text = "\n".join(after)
    for marker in ("klpkit_livepatched", "klpkit-version-helper", "klpkit-uptime", "klpkit-c_next"):
        assert marker in text, (marker, after)
    assert "klpkit-schedstats" not in text
    sched = b["schedstats"].output
    assert sum("klpkit-schedstats" in ln for ln in sched) == 1, sched  # on, then off again
    assert not any("klpkit" in ln for ln in off), off
    for name in CORPUS:
        assert_off(b, name, _modname(built_patches, name))


@pytest.mark.xdist_group("e2e-build-corpus")
def test_non_unique_static_resolves_to_this_files_symbol(boot_corpus):
    b = boot_corpus
    printed = [
        m[1] for ln in b["after"].output if (m := re.search(r"klpkit-c_next ([0-9a-f]+)", ln))
    ]
    ksyms = [ln.split() for ln in b["kallsyms"].output if "[" not in ln]
    show = next(int(f[0], 16) for f in ksyms if f[2] == "show_console_dev")
    c_next = sorted((abs(int(f[0], 16) - show), f[0]) for f in ksyms if f[2] == "c_next")
    assert len(c_next) >= 3, ksyms
    assert printed and set(printed) == {c_next[0][1]}, (printed, c_next)
    once = [ln for ln in b.result.dmesg if "klpkit: consoles c_start" in ln]
    assert len(once) == 1, once  # pr_info_once: its own fresh _once flag


@pytest.mark.xdist_group("e2e-build-corpus")
def test_check_predicts_corpus(boot_corpus, debian_symdb):
    assert cross_check(boot_corpus, debian_symdb)


# ------------------------------------------------------------------ klpkit build --verify
@pytest.mark.xdist_group("e2e-build-verify")
def test_build_verify_loads_in_both_orders(vm_ready, source_tree, debian_symdb, tmp_path):
    """`klpkit build --verify`: the seed's livepatch loaded before cdrom (late patching)
    and after it, transitions complete, disabled and removed each time."""
    import json
    import subprocess
    import sys

    from tests.conftest import EXAMPLE_PATCHES

    out = tmp_path / "livepatch-verify.ko"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "klpkit.cli",
            "build",
            str(EXAMPLE_PATCHES / "cdrom-media-changed.patch"),
            "-o",
            str(out),
            "--symbols",
            str(debian_symdb.path),
            "--verify",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-2000:])
    doc = json.loads(r.stdout)
    v = doc["verify"]
    assert v["ok"] and v["orders"] == {"A": "ok", "B": "ok"}, v
    assert any(
        "applying patch 'livepatch_verify' to loading module 'cdrom'" in ln
        for ln in v["kernel_lines"]
    ), v["kernel_lines"]

"""Debian's 6.12 line (6.12.117+deb12-amd64) in the real kernel under qemu.

One boot (session-scoped, its own ``xdist_group``), the kernel's own behaviour asserted:

* a livepatch built out of tree against ``linux-headers-6.12.117+deb12-amd64`` that
  replaces ``cmdline_proc_show`` and reads two vmlinux statics -- ``max_threads`` (unique)
  and the second of two ``debug`` variables -- converted by ``klpkit.convert`` with the
  6.12 symbol database into ``.klp.rela.vmlinux..text`` relocations on
  ``.klp.sym.vmlinux.max_threads,0`` and ``.klp.sym.vmlinux.debug,2``: loaded, the
  transition ends, ``/proc/cmdline`` shows the marker with ``threads-max`` and the address
  the guest's own /proc/kallsyms gives the second ``debug``, then disabled and removed;
* ``cdrom`` by bare name: the image's ``cdrom.ko.xz`` (CONFIG_MODULE_COMPRESS_XZ), loaded
  by klpkit's guest loader with MODULE_INIT_COMPRESSED_FILE (in-kernel decompression,
  v5.17+, CONFIG_MODULE_DECOMPRESS=y) and again by busybox's own insmod; the kernel's
  /proc/kallsyms lines of cdrom equal what the 6.12 symbol database read offline from
  the .ko.xz.

The kernel's time is printed as ``[vm] 6.12: cmdline livepatch, cdrom.ko.xz:
boot-to-poweroff ...`` and in the session's summary of boots.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from klpkit import debian
from klpkit.elf import ElfFile
from klpkit.elf import constants as C
from klpkit.vm import Step, VmSpec
from tests.conftest import require_tools
from tests.e2e.conftest import _require_qemu, _runner
from tests.symbols.db612 import RELEASE, headers_612, image_612, open_db_612

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.xdist_group("vm-612")]

MARKER = "KLP612-CMDLINE-PATCHED"
LP_612 = r"""
// A livepatch of vmlinux's cmdline_proc_show() for Debian 6.12: it reads two statics of
// vmlinux that no module may link against: max_threads (kernel/fork.c, the only one of
// its name) and the second of the two `debug` variables (klp sympos 2).
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

extern int max_threads;
extern char debug;

static int lp_612_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "KLP612-CMDLINE-PATCHED max_threads=%d debug=%px\n", max_threads, &debug);
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = lp_612_cmdline_proc_show, }, { }
};
static struct klp_object objs[] = { { .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

static int lp_612_init(void) { return klp_enable_patch(&patch); }
static void lp_612_exit(void) { }
module_init(lp_612_init);
module_exit(lp_612_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
"""


@pytest.fixture(scope="session")
def db_612(tmp_path_factory):
    db = open_db_612(tmp_path_factory)
    yield db
    db.close()


@pytest.fixture(scope="session")
def lp_612(db_612, tmp_path_factory) -> dict[str, Path]:
    """{"raw": as built against the 6.12 headers, "klp": converted with the 6.12 database}."""
    headers_612()
    require_tools("make", "gcc")
    from klpkit.convert import PlanOptions, convert_file, parse_map_entry
    from tests.kbuild import build_module

    tmp = tmp_path_factory.mktemp("lp-612")
    raw = build_module(tmp / "build", {"lp_612.c": LP_612}, "obj-m := lp_612.o\n", RELEASE)
    out = tmp / "lp_612.klp.ko"
    plan, result, _elf = convert_file(
        raw, out, db_612, PlanOptions(choices=[parse_map_entry("debug=vmlinux,2", "--map")])
    )
    assert plan.ok, plan.errors
    assert result is not None and out.is_file()
    return {"raw": raw, "klp": out}


@pytest.fixture(scope="session")
def boot_612(lp_612, pytestconfig):
    """The one 6.12 boot: steps by label, and the result."""
    image_612()
    _require_qemu()
    labels, steps = {}, []

    def add(label, kind, *args, expect="ok"):
        labels[label] = len(steps)
        steps.append(Step(kind, *map(str, args), expect=expect))

    add("before", "run", "cat /proc/cmdline")
    add("insmod lp", "insmod", lp_612["klp"])
    add("transition", "wait-transition", "lp_612")
    add("patched", "run", "cat /proc/cmdline; cat /proc/sys/kernel/threads-max")
    add("disable", "disable", "lp_612")
    add("rmmod lp", "rmmod", "lp_612")
    add("after", "run", "cat /proc/cmdline")
    add("insmod cdrom", "insmod", "cdrom")
    # (one pass over /proc/kallsyms, ~6 s under TCG: vmlinux's `debug`s and cdrom's symbols)
    add(
        "cdrom loaded",
        "run",
        "grep '^cdrom ' /proc/modules; cat /sys/module/compression; "
        r"grep -E ' debug$|\[cdrom\]$' /proc/kallsyms",
    )
    add("rmmod cdrom", "rmmod", "cdrom")
    add(
        "busybox insmod",
        "run",
        "busybox insmod /lib/modules/cdrom.ko.xz && grep -c '^cdrom ' /proc/modules",
    )
    add("rmmod cdrom again", "rmmod", "cdrom")
    spec = VmSpec(steps=steps, release=RELEASE)
    return labels, _runner(pytestconfig)("6.12: cmdline livepatch, cdrom.ko.xz", spec)


def _step(boot, label):
    labels, result = boot
    return result.steps[labels[label]]


def test_converted_livepatch_has_klp_relocations(lp_612):
    """What the kernel will resolve: vmlinux-gated .klp.rela sections (the only gating the
    module loader accepts for vmlinux symbols since v5.8) on SHN_LIVEPATCH symbols."""
    raw = ElfFile.read(lp_612["raw"])
    assert (
        raw.section(".modinfo")
        .data.split(b"\0")
        .count(f"vermagic={RELEASE} SMP preempt mod_unload modversions ".encode())
        == 1
    )
    elf = ElfFile.read(lp_612["klp"])
    klp = {s.name: s.shndx for s in elf.symtab.symbols if s.name.startswith(".klp.sym.")}
    assert klp == {
        ".klp.sym.vmlinux.max_threads,0": C.SHN_LIVEPATCH,
        ".klp.sym.vmlinux.debug,2": C.SHN_LIVEPATCH,
    }
    rela = [s for s in elf.sections if s.name.startswith(".klp.rela.")]
    assert [s.name for s in rela] == [".klp.rela.vmlinux..text"]
    assert rela[0].flags & C.SHF_RELA_LIVEPATCH


def test_612_boots_and_runs_every_step(boot_612):
    _labels, result = boot_612
    assert result.ok, result.to_json()["failure"]
    assert result.kernel["release"] == RELEASE
    assert result.warnings == []


def test_livepatch_replaces_cmdline_proc_show(boot_612):
    before, patched = _step(boot_612, "before"), _step(boot_612, "patched")
    insmod, transition = _step(boot_612, "insmod lp"), _step(boot_612, "transition")
    assert MARKER not in before.output[0]
    assert insmod.status == "ok" and insmod.livepatch["lp_612"]["enabled"] == 1
    assert transition.livepatch == {"lp_612": {"enabled": 1, "transition": 0}}
    assert any("'lp_612': patching complete" in ln for ln in insmod.dmesg + transition.dmesg)
    m = re.fullmatch(MARKER + r" max_threads=(\d+) debug=([0-9a-f]{16})", patched.output[0])
    assert m, patched.output
    assert m.group(1) == patched.output[1]  # /proc/sys/kernel/threads-max
    # sympos 2: the second `debug` of vmlinux in kallsyms order, as the livepatch core
    # counts (klp_find_object_symbol); the database said so offline
    debugs = [
        ln.split()[0] for ln in _step(boot_612, "cdrom loaded").output if ln.endswith(" debug")
    ]
    assert len(debugs) == 2
    assert m.group(2) == debugs[1]


def test_livepatch_disabled_and_removed(boot_612):
    disable, rmmod = _step(boot_612, "disable"), _step(boot_612, "rmmod lp")
    assert disable.livepatch == {} and any("unpatching complete" in ln for ln in disable.dmesg)
    assert not any(m.startswith("lp_612 ") for m in rmmod.modules)
    assert _step(boot_612, "after").output == _step(boot_612, "before").output


def test_cdrom_ko_xz_loads_by_bare_name(boot_612):
    insmod = _step(boot_612, "insmod cdrom")
    assert insmod.status == "ok"
    assert insmod.step.args[0] == "cdrom"
    # one finit_module() with MODULE_INIT_COMPRESSED_FILE: the kernel decompressed it
    assert not any("Invalid ELF header magic" in ln for ln in insmod.dmesg), insmod.dmesg
    assert any(m.startswith("cdrom ") for m in insmod.modules)
    loaded = _step(boot_612, "cdrom loaded").output
    assert loaded[0].startswith("cdrom ") and loaded[1] == "xz"  # /sys/module/compression
    assert not any(m.startswith("cdrom ") for m in _step(boot_612, "rmmod cdrom").modules)
    # busybox's insmod: finit_module() without the flag fails on xz data, its init_module()
    # fallback loads what busybox decompressed itself
    busybox = _step(boot_612, "busybox insmod")
    assert busybox.output == ["1"]
    assert any("Invalid ELF header magic" in ln for ln in busybox.dmesg), busybox.dmesg
    assert _step(boot_612, "rmmod cdrom again").status == "ok"


def test_database_of_cdrom_ko_xz_is_the_kernels_kallsyms(boot_612, db_612):
    """What the database read from cdrom.ko.xz offline is what the running 6.12 kernel
    lists for cdrom after its init: the same names in the same order (the livepatch
    core's sympos counts in this order), ``__pfx_`` symbols included, init-only and
    .modinfo symbols excluded."""
    from klpkit.symbols.db import NONCORE

    assert debian.find_module("cdrom", RELEASE).name == "cdrom.ko.xz"
    assert db_612.object_info("cdrom")["path"].endswith("/cdrom.ko.xz")
    live = [
        ln.split()[2] for ln in _step(boot_612, "cdrom loaded").output if ln.endswith("[cdrom]")
    ]
    offline = [name for name, flags in db_612.symbols_of("cdrom") if not flags & NONCORE]
    assert len(live) > 300 and any(n.startswith("__pfx_") for n in live)
    assert live == offline

"""Fixtures for ``klpkit deps``: a per-object livepatch set built against the Debian
6.1.0-47 headers, plus the bundled cdrom example, in one Kbuild run per session.

The symbol database fixture is the convert tests' ``debian_symdb`` (re-exported here,
not re-implemented).

The set (A-D after Petr Mladek, spec §4):

* ``lp_vm``: the main livepatch, patches vmlinux, uses only vmlinux exports (A) and
  exports ``lp_vm_helper``;
* ``lp_cd``: per-object livepatch for ``cdrom``, exports ``lp_cd_helper``;
* ``lp_sr``: per-object livepatch for ``sr_mod``; uses ``lp_vm_helper`` (C) and
  ``lp_cd_helper`` (D, mirrored: sr_mod depends on cdrom); exports ``lp_sr_helper``;
* ``lp_cd_bad``: per-object livepatch for ``cdrom`` using ``lp_sr_helper`` (D, not
  mirrored: cdrom does not depend on sr_mod);
* ``lp_cdrom``: examples/cdrom (B: calls ``cdrom_check_events``, cdrom's own export).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require_tools
from tests.convert.lp_issue12 import (  # noqa: F401 - fixtures
    debian_symbols_list,
    issue12_converted,
    issue12_modules,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CDROM = REPO / "examples" / "cdrom"

_TAIL = r"""
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };
static int lp_init(void) { return klp_enable_patch(&patch); }
static void lp_exit(void) { }
module_init(lp_init);
module_exit(lp_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
"""

LP_VM = (
    r"""
// Main livepatch of the set: patches vmlinux, exports a helper (used by lp_sr: case C).
#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

int lp_vm_helper(int x) { return x + 1; }
EXPORT_SYMBOL_GPL(lp_vm_helper);

static int lp_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", "klpkit");                      /* A */
	return 0;
}
static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = lp_cmdline_proc_show, }, { }
};
static struct klp_object objs[] = { { .funcs = funcs, }, { } };
"""
    + _TAIL
)

LP_CD = (
    r"""
// Per-object livepatch for cdrom; exports a helper (used by lp_sr: case D, mirrored).
#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/cdrom.h>

int lp_cd_helper(int x) { return x * 2; }
EXPORT_SYMBOL_GPL(lp_cd_helper);

static int lp_media_changed(struct cdrom_device_info *cdi, unsigned long arg)
{
	pr_info("lp_cd %lu\n", arg);                          /* A */
	return 0;
}
static struct klp_func funcs[] = {
	{ .old_name = "cdrom_ioctl_media_changed", .new_func = lp_media_changed, }, { }
};
static struct klp_object objs[] = { { .name = "cdrom", .funcs = funcs, }, { } };
"""
    + _TAIL
)

LP_SR = (
    r"""
// Per-object livepatch for sr_mod: C (lp_vm's export), D mirrored (lp_cd's export).
#include <linux/module.h>
#include <linux/livepatch.h>

extern int lp_vm_helper(int x);
extern int lp_cd_helper(int x);
int lp_sr_helper(int x) { return x - 1; }
EXPORT_SYMBOL_GPL(lp_sr_helper);

static unsigned int lp_sr_check_events(void *cdi, unsigned int clearing, int slot)
{
	return lp_vm_helper(slot) + lp_cd_helper(clearing);     /* C, D */
}
static struct klp_func funcs[] = {
	{ .old_name = "sr_check_events", .new_func = lp_sr_check_events, }, { }
};
static struct klp_object objs[] = { { .name = "sr_mod", .funcs = funcs, }, { } };
"""
    + _TAIL
)

LP_CD_BAD = (
    r"""
// Per-object livepatch for cdrom using lp_sr's export: D not mirrored.
#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/cdrom.h>

extern int lp_sr_helper(int x);

static int lp_media_changed(struct cdrom_device_info *cdi, unsigned long arg)
{
	return lp_sr_helper((int)arg);                          /* D, not mirrored */
}
static struct klp_func funcs[] = {
	{ .old_name = "cdrom_ioctl_media_changed", .new_func = lp_media_changed, }, { }
};
static struct klp_object objs[] = { { .name = "cdrom", .funcs = funcs, }, { } };
"""
    + _TAIL
)


@pytest.fixture(scope="session")
def deps_modules(debian_headers, tmp_path_factory) -> dict[str, Path]:
    """The set above and the cdrom example, built in one Kbuild run (modpost then
    resolves the exports between them and records depends=, as for a real set)."""
    require_tools("make", "gcc")
    from tests.kbuild import build_modules

    tmp = tmp_path_factory.mktemp("deps-modules")
    sources = {
        "lp_vm.c": LP_VM,
        "lp_cd.c": LP_CD,
        "lp_sr.c": LP_SR,
        "lp_cd_bad.c": LP_CD_BAD,
        "lp_cdrom.c": (EXAMPLE_CDROM / "lp_cdrom.c").read_text(),
    }
    kbuild = "obj-m := " + " ".join(n.replace(".c", ".o") for n in sources) + "\n"
    kos = build_modules(tmp, sources, kbuild)
    mods = {k.stem: k for k in kos}
    assert set(mods) == {n[:-2] for n in sources}, sorted(mods)
    return mods

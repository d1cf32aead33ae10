"""Test livepatches for issue 12 (the kernel's livepatch rules in one place), shared by
the convert, deps and check tests, built once per test run against the Debian 6.1
headers (:func:`build_issue12`; the ``issue12_modules`` fixture of each conftest).

* ``lp_empty``: klp_objects with empty ``funcs``: vmlinux (a function), cdrom
  (callbacks only: its pre_patch callback reads cdrom's static ``autoclose``), sr_mod
  (nothing at all), and klp_states: the kernel patches three objects;
* ``lp_annotonly``: the klp_object array is filled at run time, so only the
  annotations (``KLP_MODULE_RELOC(cdrom)``, a ``.klp.sym.rela.cdrom.*`` name) say
  which object it patches;
* ``lp_vmkey``: patches only cdrom, with a static branch on a vmlinux key
  (``sched_schedstats``: a vmlinux-gated relocation in ``__jump_table``) and a
  non-exported vmlinux variable: ``.klp.rela.vmlinux.*`` in a module-only livepatch;
* ``lp_datarel``: patches cdrom (the same function as lp_cdrom: a fix on top of it),
  with livepatch relocations in ``.data``, ``.rodata`` and ``.data..read_mostly``;
* ``plain_target``: a plain module (no klp_enable_patch(), no livepatch tag): the
  module loader's rules only;
* ``lp_tagonly``: ``livepatch=Y`` but no klp_enable_patch(): loads, taints, and the
  livepatch core never sees it.
"""

from __future__ import annotations

import pytest
from tests.conftest import require_tools

_TAIL = r"""
static int lp_init(void) { return klp_enable_patch(&patch); }
static void lp_exit(void) { }
module_init(lp_init);
module_exit(lp_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
"""

LP_EMPTY = (
    r"""
// klp_objects with empty funcs: callbacks only (cdrom), nothing (sr_mod); klp_states.
#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

extern bool autoclose;                       /* cdrom's static module parameter */

static int lp_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", "klpkit lp_empty");
	return 0;
}
static int lp_pre_patch(struct klp_object *obj)
{
	pr_info("lp_empty: pre_patch %s autoclose=%d\n", obj->name, autoclose);
	return 0;
}
static void lp_post_unpatch(struct klp_object *obj)
{
	pr_info("lp_empty: post_unpatch %s\n", obj->name);
}
static struct klp_func vfuncs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = lp_cmdline_proc_show, }, { }
};
static struct klp_func no_funcs[] = { { } };
static struct klp_object objs[] = {
	{ .funcs = vfuncs, },
	{ .name = "cdrom", .funcs = no_funcs,
		.callbacks = { .pre_patch = lp_pre_patch, .post_unpatch = lp_post_unpatch, }, },
	{ .name = "sr_mod", .funcs = no_funcs, },
	{ }
};
static struct klp_state states[] = { { .id = 0x12, .version = 1, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, .states = states, };
"""
    + _TAIL
)

LP_ANNOTONLY = r"""
// The klp_object array is filled at run time: only the annotations name cdrom.
#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/cdrom.h>

struct klp_module_reloc { union { void *sym; u64 sym64; }; u32 sympos; } __packed;

extern int cdrom_read_mech_status(struct cdrom_device_info *, struct cdrom_changer_info *);
static struct klp_module_reloc cdrom_relocs[] __used
	__section(".klp.module_relocs.cdrom") __aligned(4) = {
	{ .sym = cdrom_read_mech_status, .sympos = 0 },
};
extern bool lp_debug __asm__("\".klp.sym.rela.cdrom.cdrom.debug,0\"");

static int lp_media_changed(struct cdrom_device_info *cdi, unsigned long arg)
{
	pr_info("lp_annotonly: debug=%d\n", lp_debug);
	if (arg == 7)
		return cdrom_read_mech_status(cdi, NULL);
	return 0;
}
static struct klp_func funcs[] = {
	{ .old_name = "cdrom_ioctl_media_changed", .new_func = lp_media_changed, }, { }
};
static struct klp_object objs[2];
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };
static int lp_init(void)
{
	objs[0].name = "cdrom";
	objs[0].funcs = funcs;
	return klp_enable_patch(&patch);
}
static void lp_exit(void) { }
module_init(lp_init);
module_exit(lp_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
"""

LP_VMKEY = (
    r"""
// Patches cdrom only; a static branch on a vmlinux key and a vmlinux variable:
// .klp.rela.vmlinux.__jump_table and .klp.rela.vmlinux..text in a module-only livepatch.
#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/cdrom.h>
#include <linux/jump_label.h>

DECLARE_STATIC_KEY_FALSE(sched_schedstats);   /* vmlinux, not exported */
extern char *saved_command_line;               /* vmlinux, not exported */

static int lp_media_changed(struct cdrom_device_info *cdi, unsigned long arg)
{
	if (static_branch_unlikely(&sched_schedstats))
		pr_info("lp_vmkey: schedstats on\n");
	pr_info("lp_vmkey: %.16s\n", saved_command_line);
	return 0;
}
static struct klp_func funcs[] = {
	{ .old_name = "cdrom_ioctl_media_changed", .new_func = lp_media_changed, }, { }
};
static struct klp_object objs[] = { { .name = "cdrom", .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };
"""
    + _TAIL
)

LP_DATAREL = (
    r"""
// Patches cdrom (a fix on top of lp_cdrom: the same function); livepatch relocations
// in .data, .rodata and .data..read_mostly, gated on cdrom and on vmlinux.
#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/cdrom.h>
#include <linux/cache.h>

extern int cdrom_read_mech_status(struct cdrom_device_info *, struct cdrom_changer_info *);
extern bool debug;                         /* cdrom's static */
extern char *saved_command_line;           /* vmlinux, not exported */
extern int cmdline_proc_show(void *, void *);  /* vmlinux static */

typedef int (*mech_fn)(struct cdrom_device_info *, struct cdrom_changer_info *);
/* globals read through OPTIMIZER_HIDE_VAR: GCC cannot fold the pointers away */
mech_fn lp_datarel_ops[] = { cdrom_read_mech_status };                    /* .data */
void * const lp_datarel_ro[] = { &debug, &saved_command_line };          /* .rodata */
void *lp_datarel_rm __read_mostly = cmdline_proc_show;    /* .data..read_mostly */

static int lp_media_changed(struct cdrom_device_info *cdi, unsigned long arg)
{
	mech_fn *ops = lp_datarel_ops;
	void * const *ro = lp_datarel_ro;
	void **rm = &lp_datarel_rm;

	OPTIMIZER_HIDE_VAR(ops);
	OPTIMIZER_HIDE_VAR(ro);
	OPTIMIZER_HIDE_VAR(rm);
	pr_info("lp_datarel: debug=%d cmdline=%.16s %px\n", *(bool *)ro[0], *(char **)ro[1],
		*rm);
	if (arg == 7)
		return ops[0](cdi, NULL);
	return 0;
}
static struct klp_func funcs[] = {
	{ .old_name = "cdrom_ioctl_media_changed", .new_func = lp_media_changed, }, { }
};
static struct klp_object objs[] = { { .name = "cdrom", .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };
"""
    + _TAIL
)

PLAIN_TARGET = r"""
// A plain module: no klp_enable_patch(), no livepatch tag (a patched target).
#include <linux/module.h>
#include <linux/kernel.h>

int plain_target_value(int x) { return x + 12; }
EXPORT_SYMBOL_GPL(plain_target_value);
static int plain_init(void) { pr_info("plain_target: %d\n", plain_target_value(0)); return 0; }
static void plain_exit(void) { }
module_init(plain_init);
module_exit(plain_exit);
MODULE_LICENSE("GPL");
"""

LP_TAGONLY = r"""
// livepatch=Y without klp_enable_patch(): the loader taints, the core never sees it.
#include <linux/module.h>
#include <linux/kernel.h>

static int tag_init(void) { pr_info("lp_tagonly: loaded\n"); return 0; }
static void tag_exit(void) { }
module_init(tag_init);
module_exit(tag_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
"""

SOURCES = {
    "lp_empty.c": LP_EMPTY,
    "lp_annotonly.c": LP_ANNOTONLY,
    "lp_vmkey.c": LP_VMKEY,
    "lp_datarel.c": LP_DATAREL,
    "plain_target.c": PLAIN_TARGET,
    "lp_tagonly.c": LP_TAGONLY,
}


def build_issue12(tmp_path_factory) -> dict:
    """The modules above, built once per test run (shared by every test package and
    xdist worker): {name: path}."""
    from tests.conftest import _run_lock
    from tests.kbuild import build_modules

    with _run_lock(tmp_path_factory, "issue12-modules") as root:
        out = root / "issue12-modules"
        want = {n[:-2] for n in SOURCES}
        if out.is_dir() and {k.stem for k in out.glob("*.ko")} == want:
            return {k.stem: k for k in out.glob("*.ko")}
        kbuild = "obj-m := " + " ".join(n.replace(".c", ".o") for n in SOURCES) + "\n"
        kos = build_modules(out, SOURCES, kbuild)
        return {k.stem: k for k in kos}


LIVEPATCHES = ("lp_empty", "lp_annotonly", "lp_vmkey", "lp_datarel")


def convert_issue12(modules: dict, db, tmp_path_factory) -> dict:
    """Each livepatch of :data:`LIVEPATCHES` converted with ``klpkit.convert`` against
    ``db`` (the Debian database), once per test run: {name: converted path}."""
    from tests.conftest import _run_lock

    from klpkit.convert import convert_file

    with _run_lock(tmp_path_factory, "issue12-converted") as root:
        out = root / "issue12-converted"
        out.mkdir(exist_ok=True)
        done = {}
        for name in LIVEPATCHES:
            dst = out / f"{name}.klp.ko"
            if not dst.is_file():
                plan, result, _elf = convert_file(modules[name], dst, db)
                assert plan.ok and result is not None, (name, plan.errors)
            done[name] = dst
        return done


def export_list(db, tmp_path_factory):
    """The Debian database as a Symbols.list (klpkit's format), once per test run."""
    from tests.conftest import _run_lock

    from klpkit.symbols.symbols_list import export_symbols_list

    with _run_lock(tmp_path_factory, "issue12-symbols-list") as root:
        path = root / "Symbols.list"
        if not path.is_file():
            export_symbols_list(db, path)
        return path


@pytest.fixture(scope="session")
def issue12_modules(debian_headers, tmp_path_factory) -> dict:
    require_tools("make", "gcc")
    return build_issue12(tmp_path_factory)


@pytest.fixture(scope="session")
def issue12_converted(issue12_modules, debian_symdb, tmp_path_factory) -> dict:
    return convert_issue12(issue12_modules, debian_symdb, tmp_path_factory)


@pytest.fixture(scope="session")
def debian_symbols_list(debian_symdb, tmp_path_factory):
    return export_list(debian_symdb, tmp_path_factory)

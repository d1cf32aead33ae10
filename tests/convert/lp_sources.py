"""C sources of the test livepatch modules shared by the convert, check and deps tests
(built once per session by the ``lp_modules`` fixture in tests/conftest.py)."""

LP_POLICY = r"""
// Patches cdrom; one reference per policy branch.
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/cdrom.h>
#include <scsi/scsi_device.h>

extern int cdrom_read_mech_status(struct cdrom_device_info *, struct cdrom_changer_info *);
extern bool debug;                          /* cdrom's static wins over vmlinux's two */
extern int cmdline_proc_show(void *, void *);   /* vmlinux local, unique */
extern char *saved_command_line;            /* vmlinux global, not exported */

static int lp_media_changed(struct cdrom_device_info *cdi, unsigned long arg)
{
	pr_info("%lx %d %s\n", (unsigned long) cdrom_check_events, debug, saved_command_line);  /* A, B */
	if (arg == 7)
		return scsi_device_get(NULL);                         /* C: scsi_mod */
	if (arg == 8)
		return cmdline_proc_show(NULL, NULL);                 /* vmlinux local */
	return cdrom_read_mech_status(cdi, NULL);                 /* cdrom local */
}

static struct klp_func funcs[] = {
	{ .old_name = "cdrom_ioctl_media_changed", .new_func = lp_media_changed, }, { }
};
static struct klp_object objs[] = { { .name = "cdrom", .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };
static int lp_init(void) { return klp_enable_patch(&patch); }
static void lp_exit(void) { }
module_init(lp_init);
module_exit(lp_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
"""

LP_AMBIG = r"""
// Patches vmlinux (NULL object name); uses an ambiguous and an unknown symbol.
#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

extern int state_show(void);                /* 5 locals in vmlinux */
extern int klpkit_no_such_symbol(void);

static int lp_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%d\n", state_show() + klpkit_no_such_symbol());
	return 0;
}
static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = lp_cmdline_proc_show, }, { }
};
static struct klp_object objs[] = { { .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };
static int lp_init(void) { return klp_enable_patch(&patch); }
static void lp_exit(void) { }
module_init(lp_init);
module_exit(lp_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
"""

LP_ANNOT = r"""
// v7 annotations (KLP_MODULE_RELOC/KLP_SYMPOS, written out) and minimal intermediates.
#include <linux/module.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

struct klp_module_reloc { union { void *sym; u64 sym64; }; u32 sympos; } __packed;

extern int state_show(void);
static struct klp_module_reloc vm_relocs[] __used
	__section(".klp.module_relocs.vmlinux") __aligned(4) = {
	{ .sym = state_show, .sympos = 3 },
};

/* minimal klp-convert, v2 form (comma) and v3 form (dot) */
extern int lp_rms(void *, void *) __asm__("\".klp.sym.rela.cdrom.cdrom.cdrom_read_mech_status,0\"");
extern int lp_enabled(void) __asm__("\".klp.sym.rela.vmlinux.vmlinux.enabled_show.4\"");

static int lp_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%d %d %d\n", state_show(), lp_rms(NULL, NULL), lp_enabled());
	return 0;
}
static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = lp_cmdline_proc_show, }, { }
};
static struct klp_func cfuncs[] = {
	{ .old_name = "cdrom_ioctl_media_changed", .new_func = lp_cmdline_proc_show, }, { }
};
static struct klp_object objs[] = { { .funcs = funcs, }, { .name = "cdrom", .funcs = cfuncs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };
static int lp_init(void) { return klp_enable_patch(&patch); }
static void lp_exit(void) { }
module_init(lp_init);
module_exit(lp_exit);
MODULE_LICENSE("GPL");
"""

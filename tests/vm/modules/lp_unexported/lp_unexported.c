// Negative test module: a livepatch whose replacement function reads
// saved_command_line, a vmlinux symbol that is NOT exported. Built out of tree
// (KBUILD_MODPOST_WARN=1) and left unconverted, the kernel must refuse it with
// "Unknown symbol saved_command_line (err -2)"; klp-convert would turn the
// reference into a livepatch relocation instead.
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

extern char *saved_command_line;

static int lp_unexported_show(struct seq_file *m, void *v)
{
	seq_printf(m, "KLPE2E-UNEXPORTED %s\n", saved_command_line);
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = lp_unexported_show, },
	{ }
};
static struct klp_object objs[] = {
	{ .funcs = funcs, },
	{ }
};
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

static int lp_unexported_init(void) { return klp_enable_patch(&patch); }
static void lp_unexported_exit(void) { }
module_init(lp_unexported_init);
module_exit(lp_unexported_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");

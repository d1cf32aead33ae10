// SPDX-License-Identifier: GPL-2.0
/*
 * Scenario 1: a livepatch of vmlinux's cmdline_proc_show() that calls a non-exported
 * vmlinux function (nr_processes, global) and reads a static vmlinux variable
 * (max_threads, local in kernel/fork.c).  /proc/cmdline shows both; max_threads is
 * also /proc/sys/kernel/threads-max, so the test can compare.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

extern int nr_processes(void);   /* vmlinux global, not exported */
extern int max_threads;          /* vmlinux static (kernel/fork.c) */

static int lp_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "KLPE2E-VMLINUX max_threads=%d nr_processes=%d\n",
		   max_threads, nr_processes());
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = lp_cmdline_proc_show, }, { }
};
static struct klp_object objs[] = { { .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

static int lp_vmlinux_init(void) { return klp_enable_patch(&patch); }
static void lp_vmlinux_exit(void) { }
module_init(lp_vmlinux_init);
module_exit(lp_vmlinux_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");

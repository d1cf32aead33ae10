// SPDX-License-Identifier: GPL-2.0
/*
 * Scenario 2's target: a static function (replaced by lp_target) and an exported
 * function (called by lp_target: case B).  /proc/e2e_target shows the static's value.
 */
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>

static noinline int e2e_target_value(void)
{
	return 1;
}

noinline int e2e_target_export(void)
{
	return 40;
}
EXPORT_SYMBOL(e2e_target_export);

static int e2e_target_show(struct seq_file *m, void *v)
{
	seq_printf(m, "KLPE2E-TARGET value=%d\n", e2e_target_value());
	return 0;
}

static int __init e2e_target_init(void)
{
	return proc_create_single("e2e_target", 0444, NULL, e2e_target_show) ? 0 : -ENOMEM;
}

static void __exit e2e_target_exit(void)
{
	remove_proc_entry("e2e_target", NULL);
}
module_init(e2e_target_init);
module_exit(e2e_target_exit);
MODULE_LICENSE("GPL");

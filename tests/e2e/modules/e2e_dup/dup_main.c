// SPDX-License-Identifier: GPL-2.0
/*
 * Scenario 3's target: two compilation units (dup_a.c, dup_b.c) each define
 * `static int dup_name(int)`, so e2e_dup has two symbols named dup_name (sympos 1 and
 * 2, in link order).  dup_value() is what lp_dup replaces; /proc/e2e_dup shows it.
 */
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>

int dup_a(int x);
int dup_b(int x);

static noinline int dup_value(void)
{
	return 0;
}

static int e2e_dup_show(struct seq_file *m, void *v)
{
	seq_printf(m, "KLPE2E-DUP value=%d a=%d b=%d\n", dup_value(), dup_a(1), dup_b(1));
	return 0;
}

static int __init e2e_dup_init(void)
{
	return proc_create_single("e2e_dup", 0444, NULL, e2e_dup_show) ? 0 : -ENOMEM;
}

static void __exit e2e_dup_exit(void)
{
	remove_proc_entry("e2e_dup", NULL);
}
module_init(e2e_dup_init);
module_exit(e2e_dup_exit);
MODULE_LICENSE("GPL");

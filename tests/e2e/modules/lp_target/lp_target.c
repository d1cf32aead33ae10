// SPDX-License-Identifier: GPL-2.0
/*
 * Scenario 2's livepatch: replaces the static e2e_target_value() of e2e_target and
 * calls e2e_target's export e2e_target_export() (case B).  Unconverted, that call
 * makes the livepatch depend on e2e_target (modpost's depends=, a __versions CRC).
 */
#include <linux/module.h>
#include <linux/livepatch.h>

extern int e2e_target_export(void);   /* exported by the patched module */

static int lp_e2e_target_value(void)
{
	return e2e_target_export() + 2;
}

static struct klp_func funcs[] = {
	{ .old_name = "e2e_target_value", .new_func = lp_e2e_target_value, }, { }
};
static struct klp_object objs[] = { { .name = "e2e_target", .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

static int lp_target_init(void) { return klp_enable_patch(&patch); }
static void lp_target_exit(void) { }
module_init(lp_target_init);
module_exit(lp_target_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");

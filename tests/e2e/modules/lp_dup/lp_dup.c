// SPDX-License-Identifier: GPL-2.0
/*
 * Scenario 3's livepatch: replaces e2e_dup's dup_value() with a call to one of the two
 * static dup_name() functions of e2e_dup.  Which one is chosen at conversion time
 * (klpkit convert --map dup_name=e2e_dup,POS).
 */
#include <linux/module.h>
#include <linux/livepatch.h>

extern int dup_name(int x);   /* two statics of that name in e2e_dup */

static int lp_dup_value(void)
{
	return dup_name(7);
}

static struct klp_func funcs[] = {
	{ .old_name = "dup_value", .new_func = lp_dup_value, }, { }
};
static struct klp_object objs[] = { { .name = "e2e_dup", .funcs = funcs, }, { } };
static struct klp_patch patch = { .mod = THIS_MODULE, .objs = objs, };

static int lp_dup_init(void) { return klp_enable_patch(&patch); }
static void lp_dup_exit(void) { }
module_init(lp_dup_init);
module_exit(lp_dup_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");

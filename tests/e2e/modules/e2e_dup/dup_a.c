// SPDX-License-Identifier: GPL-2.0
#include <linux/compiler.h>

static noinline int dup_name(int x)
{
	return x + 100;
}

int dup_a(int x)
{
	return dup_name(x);
}

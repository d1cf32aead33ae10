// SPDX-License-Identifier: GPL-2.0
/*
 * lp_cdrom: a livepatch for the cdrom module of Debian's 6.1 kernel (6.1.0-47-amd64).
 *
 * It replaces cdrom_ioctl_media_changed() with a copy that also prints the address of
 * cdrom_check_events (the seed's case B: an export of the module being patched).  The
 * body follows drivers/cdrom/cdrom.c of 6.1, where media_changed(),
 * cdrom_update_events() and signal_media_change() are inlined into
 * cdrom_ioctl_media_changed(); the copy therefore inlines them too and calls what the
 * real function calls: the static cdrom_read_mech_status() and the static `debug`
 * parameter of cdrom, which `klpkit convert` turns into .klp.sym.cdrom.<name>,0.
 *
 * Build against the headers with KBUILD_MODPOST_WARN=1, then:
 *   klpkit convert lp_cdrom.ko -o lp_cdrom.klp.ko --symbols <db>
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/cdrom.h>
#include <linux/blkdev.h>
#include <linux/slab.h>
#include <linux/nospec.h>
#include <linux/timekeeping.h>

/* Symbols of cdrom.ko that are not exported (resolved by the livepatch core). */
extern bool debug;
extern int cdrom_read_mech_status(struct cdrom_device_info *cdi,
				  struct cdrom_changer_info *buf);

#define CD_DO_IOCTL	0x4
#define ERRLOGMASK	0x1
#define cd_dbg(type, fmt, ...)				\
do {							\
	if ((ERRLOGMASK & type) || debug == 1)		\
		pr_debug(fmt, ##__VA_ARGS__);		\
} while (0)

#define CDROM_CAN(type) (cdi->ops->capability & ~cdi->mask & (type))

static inline void lp_signal_media_change(struct cdrom_device_info *cdi)
{
	cdi->mc_flags = 0x3;
	cdi->last_media_change_ms = ktime_to_ms(ktime_get());
}

static inline void lp_update_events(struct cdrom_device_info *cdi,
				    unsigned int clearing)
{
	unsigned int events;

	events = cdi->ops->check_events(cdi, clearing, CDSL_CURRENT);
	cdi->vfs_events |= events;
	cdi->ioctl_events |= events;
}

static inline int lp_media_changed(struct cdrom_device_info *cdi, int queue)
{
	unsigned int mask = (1 << (queue & 1));
	int ret = !!(cdi->mc_flags & mask);
	bool changed;

	/* the patch: use the export of the patched module itself */
	pr_info("%lx\n", (unsigned long) cdrom_check_events);

	if (!CDROM_CAN(CDC_MEDIA_CHANGED))
		return ret;

	lp_update_events(cdi, DISK_EVENT_MEDIA_CHANGE);
	changed = cdi->ioctl_events & DISK_EVENT_MEDIA_CHANGE;
	cdi->ioctl_events = 0;

	if (changed) {
		lp_signal_media_change(cdi);
		ret |= 1;
		cdi->media_written = 0;
	}

	cdi->mc_flags &= ~mask;
	return ret;
}

static int lp_cdrom_ioctl_media_changed(struct cdrom_device_info *cdi,
					unsigned long arg)
{
	struct cdrom_changer_info *info;
	int ret;

	cd_dbg(CD_DO_IOCTL, "entering CDROM_MEDIA_CHANGED\n");

	if (!CDROM_CAN(CDC_MEDIA_CHANGED))
		return -ENOSYS;

	if (!CDROM_CAN(CDC_SELECT_DISC) || arg == CDSL_CURRENT)
		return lp_media_changed(cdi, 1);

	if (arg >= cdi->capacity)
		return -EINVAL;
	arg = array_index_nospec(arg, cdi->capacity);

	info = kmalloc(sizeof(*info), GFP_KERNEL);
	if (!info)
		return -ENOMEM;

	ret = cdrom_read_mech_status(cdi, info);
	if (!ret)
		ret = info->slots[arg].change;
	kfree(info);
	return ret;
}

static struct klp_func funcs[] = {
	{
		.old_name = "cdrom_ioctl_media_changed",
		.new_func = lp_cdrom_ioctl_media_changed,
	}, { }
};

static struct klp_object objs[] = {
	{
		.name = "cdrom",
		.funcs = funcs,
	}, { }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int lp_cdrom_init(void)
{
	return klp_enable_patch(&patch);
}

static void lp_cdrom_exit(void)
{
}

module_init(lp_cdrom_init);
module_exit(lp_cdrom_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("livepatch for cdrom_ioctl_media_changed (klpkit example)");
MODULE_INFO(livepatch, "Y");

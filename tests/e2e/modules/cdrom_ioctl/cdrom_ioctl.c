// SPDX-License-Identifier: MIT
/* Scenario 4's guest program: ioctl(fd, CDROM_MEDIA_CHANGED, 0) on a CD-ROM device.
 * Build: gcc -static -O2 -o cdrom_ioctl cdrom_ioctl.c */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/cdrom.h>

int main(int argc, char **argv)
{
	const char *dev = argc > 1 ? argv[1] : "/dev/sr0";
	int fd = open(dev, O_RDONLY | O_NONBLOCK);
	int rc;

	if (fd < 0) {
		printf("open %s: %s\n", dev, strerror(errno));
		return 2;
	}
	rc = ioctl(fd, CDROM_MEDIA_CHANGED, 0);
	printf("CDROM_MEDIA_CHANGED %s -> %d%s%s\n", dev, rc, rc < 0 ? " " : "",
	       rc < 0 ? strerror(errno) : "");
	close(fd);
	return rc < 0 ? 1 : 0;
}

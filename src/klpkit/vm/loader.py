"""The guest's module loader: one ``finit_module()`` per ``insmod`` step.

Busybox's ``insmod`` calls ``finit_module()`` and, when that fails, tries again with
``init_module()`` on the file's bytes: a module the kernel refuses is loaded twice, its
init and callbacks run twice and every kernel line of the refusal appears twice.  What
``klpkit vm`` reports as the kernel's behaviour must be one load attempt, so the guest
gets this small static loader instead (compiled on the host once, cached).  It keeps
busybox's wording (``insmod: can't insert 'FILE': REASON``) and passes
``MODULE_INIT_COMPRESSED_FILE`` for ``.ko.xz``/``.ko.zst``/``.ko.gz`` files: the flag and
the in-kernel decompressor (``CONFIG_MODULE_DECOMPRESS``, xz and gzip) came with Linux 5.17,
zstd with 6.2; the kernel decompresses with the one format its modules were installed in.
Debian's 6.12 line has it (``.ko.xz`` modules, ``CONFIG_MODULE_DECOMPRESS=y``: ``insmod
cdrom`` loads ``cdrom.ko.xz`` as it is, proven by tests/e2e/test_612.py); Debian's 6.1
installs plain ``.ko`` files, so the flag is never passed there.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from klpkit.debian import cache_root

GUEST_PATH = "/klp/insmod"

SOURCE = r"""
/* klpkit vm guest loader: one finit_module() call, busybox insmod's messages. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MODULE_INIT_COMPRESSED_FILE 4

static int ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && strcmp(s + n - m, suffix) == 0;
}

static const char *reason(int err)
{
	switch (err) {
	case ENOEXEC: return "invalid module format";
	case ENOENT: return "unknown symbol in module, or unknown parameter";
	case ESRCH: return "unknown symbol in module";
	case EEXIST: return "module already loaded";
	default: return strerror(err);
	}
}

int main(int argc, char **argv)
{
	char params[4096] = "";
	size_t used = 0;
	int flags = 0, fd, i;

	if (argc < 2) {
		fprintf(stderr, "usage: insmod FILE [PARAM=VALUE]...\n");
		return 1;
	}
	for (i = 2; i < argc; i++) {
		int n = snprintf(params + used, sizeof(params) - used, "%s%s",
				used ? " " : "", argv[i]);
		if (n < 0 || (size_t)n >= sizeof(params) - used) {
			fprintf(stderr, "insmod: parameters too long\n");
			return 1;
		}
		used += n;
	}
	if (ends_with(argv[1], ".xz") || ends_with(argv[1], ".zst") || ends_with(argv[1], ".gz"))
		flags |= MODULE_INIT_COMPRESSED_FILE;
	fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "insmod: can't open '%s': %s\n", argv[1], strerror(errno));
		return 1;
	}
	if (syscall(SYS_finit_module, fd, params, flags) != 0) {
		fprintf(stderr, "insmod: can't insert '%s': %s\n", argv[1], reason(errno));
		return 1;
	}
	return 0;
}
"""


def guest_loader() -> Path | None:
    """The static loader binary for the guest (compiled once per source, cached), or
    None when the host cannot build static binaries (busybox ``insmod`` is used then)."""
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:16]
    target = cache_root() / "tools" / f"klp-insmod-{digest}"
    if target.is_file():
        return target
    cc = shutil.which("gcc")
    if cc is None:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="klp-insmod-", dir=target.parent) as tmp:
        src, out = Path(tmp) / "insmod.c", Path(tmp) / "insmod"
        src.write_text(SOURCE)
        r = subprocess.run(
            [cc, "-static", "-O2", "-o", str(out), str(src)], capture_output=True, text=True
        )
        if r.returncode or not out.is_file():
            return None
        out.replace(target)  # atomic: a concurrent build finds a whole binary
    return target

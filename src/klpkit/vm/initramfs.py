"""Build the guest's initramfs: a gzip'ed cpio "newc" archive written in Python.

Why not ``find | cpio``: writing the archive ourselves needs no root to create
``/dev/console``, is byte-for-byte reproducible (fixed mtimes and inode numbers)
and can be inspected in unit tests without unpacking anything.
"""

import gzip
import stat
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from klpkit.errors import InputError

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
BASE_DIRS = ("bin", "sbin", "dev", "proc", "sys", "tmp", "lib", "lib/modules", "test", "klp", "mnt")


@dataclass
class Entry:
    """One archive member: ``mode`` carries the file type bits (S_IFREG, S_IFDIR, ...)."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def newc_archive(entries: list[Entry]) -> bytes:
    """Serialise ``entries`` (parents before children) as a newc cpio archive."""
    out = bytearray()
    for ino, entry in enumerate([*entries, Entry(TRAILER, 0)], 1):
        name = entry.name.encode() + b"\0"
        fields = (
            ino if entry.name != TRAILER else 0,
            entry.mode,
            0,
            0,  # uid, gid: root
            2 if stat.S_ISDIR(entry.mode) else 1,
            0,  # mtime: fixed for reproducibility
            len(entry.data),
            0,
            0,  # device of the archive file system (unused)
            entry.rdev[0],
            entry.rdev[1],
            len(name),
            0,  # checksum (newc has none)
        )
        header = NEWC_MAGIC + b"".join(b"%08x" % f for f in fields)
        out += header + name + _pad4(len(header) + len(name))
        out += entry.data + _pad4(len(entry.data))
    return bytes(out)


def read_newc(archive: bytes) -> dict[str, Entry]:
    """Parse a newc archive back into entries (for tests and ``--keep`` inspection)."""
    entries: dict[str, Entry] = {}
    pos = 0
    while True:
        if archive[pos : pos + 6] != NEWC_MAGIC:
            raise InputError(f"not a newc cpio archive at offset {pos}")
        fields = [int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        pos += 110
        name = archive[pos : pos + namesize - 1].decode()
        pos += namesize + (-(110 + namesize) % 4)
        data = archive[pos : pos + size]
        pos += size + (-size % 4)
        if name == TRAILER:
            return entries
        entries[name] = Entry(name, mode, data, (rmaj, rmin))


def is_static_elf(data: bytes) -> bool:
    """True for an ELF executable without a PT_INTERP (dynamic loader) program header.

    The guest has no libc, so a dynamically linked busybox or test program fails
    with a cryptic "No working init found" or ENOENT; checking on the host gives a
    clear error instead.
    """
    if data[:4] != b"\x7fELF":
        return False
    is64, little = data[4] == 2, data[5] == 1
    end = "<" if little else ">"
    if is64:
        (phoff,) = struct.unpack_from(end + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 0x36)
    else:
        (phoff,) = struct.unpack_from(end + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 0x2A)
    for i in range(phnum):
        (p_type,) = struct.unpack_from(end + "I", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def busybox_applets(busybox: Path) -> list[str]:
    """The applet names the host's busybox binary provides (the same binary goes into the guest)."""
    try:
        out = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise InputError(f"cannot run {busybox} --list: {e}; install busybox-static") from None
    # Never link busybox onto itself: the guest's /bin/busybox would become an ELOOP symlink.
    return sorted(a for a in out.stdout.split() if a and a != "busybox" and "/" not in a)


def _host_bytes(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {what}: {e.strerror}", path=path) from None


def build_initramfs(
    init: str,
    files: dict[str, bytes | Path],
    busybox: Path = Path("/bin/busybox"),
    executables: frozenset[str] = frozenset(),
) -> bytes:
    """The gzip'ed initramfs: busybox + applet links, ``/init``, and ``files``.

    ``files`` maps absolute guest paths to contents (bytes or a host path);
    the guest paths in ``executables`` get mode 0755, everything else 0644.
    """
    bb = _host_bytes(busybox, "busybox")
    if not is_static_elf(bb):
        raise InputError("busybox is not a static executable; install busybox-static", path=busybox)
    entries = [Entry(d, stat.S_IFDIR | 0o755) for d in BASE_DIRS]
    entries.append(Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(Entry("bin/busybox", stat.S_IFREG | 0o755, bb))
    entries += [
        Entry(f"bin/{a}", stat.S_IFLNK | 0o777, b"busybox") for a in busybox_applets(busybox)
    ]
    entries.append(Entry("init", stat.S_IFREG | 0o755, init.encode()))
    known_dirs = set(BASE_DIRS)
    for guest_path in sorted(files):
        rel = guest_path.strip("/")
        parts = rel.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in known_dirs:
                known_dirs.add(parent)
                entries.append(Entry(parent, stat.S_IFDIR | 0o755))
        content = files[guest_path]
        data = content if isinstance(content, bytes) else _host_bytes(content, "guest file")
        mode = 0o755 if guest_path in executables else 0o644
        entries.append(Entry(rel, stat.S_IFREG | mode, data))
    return gzip.compress(newc_archive(entries), compresslevel=1, mtime=0)

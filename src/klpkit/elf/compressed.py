"""Compressed objects: kernel modules installed as ``.ko.xz``, ``.ko.zst`` or ``.ko.gz``.

Why the ELF layer reads them: a distribution may install its modules compressed, and
then every tool that reads a ``.ko`` meets one.  Debian's 6.12 line does
(``CONFIG_MODULE_COMPRESS_XZ=y``: its 4,230 modules are ``.ko.xz``, made by
``scripts/Makefile.modinst`` with ``xz --check=crc32 --lzma2=dict=1MiB``), Debian's 6.1
line does not.  The module signature is appended *before* compression there, so the
decompressed bytes are the whole module, trailer included, and every reader of this
layer (:meth:`klpkit.elf.ElfFile.read`, :func:`klpkit.elf.fast.open_scan`) accepts a
compressed file transparently by decompressing it in memory.

The format is told by the magic bytes, not by the file name, as the kernel's own
in-kernel decompressor does (``kernel/module/decompress.c``, v5.17+: "not an xz
compressed module" when the magic is wrong); a file *named* ``.xz`` that holds neither xz
data nor ELF gets an error that says so.  xz and gzip are decoded by the standard
library; zstd by Python 3.14's ``compression.zstd`` when there, else by the ``zstd``
command (Python 3.11 has no zstd).

Writing stays uncompressed: :func:`refuse_compressed_output` keeps a rewritten module
from landing under a ``.xz``/``.zst``/``.gz`` name that would promise otherwise.
"""

from __future__ import annotations

import lzma
import os
import shutil
import subprocess
import tempfile
import threading
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from klpkit.errors import ElfError, KlpkitError
from klpkit.fileio import read_input

ELF_MAGIC = b"\x7fELF"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
#: magic -> format name
MAGICS = ((XZ_MAGIC, "xz"), (ZSTD_MAGIC, "zstd"), (GZIP_MAGIC, "gzip"))
#: file name suffix -> format name (the suffixes kmod and ``Makefile.modinst`` use)
SUFFIXES = {".xz": "xz", ".zst": "zstd", ".gz": "gzip"}

#: A module inflates to at most this much.  The largest of Debian's 6.12 modules,
#: amdgpu.ko.xz, is 3.9 MiB inflating to 27 MiB; a file inflating past 1 GiB is a
#: decompression bomb or damage, refused before it costs the memory.
MAX_INFLATED = 1 << 30
_CHUNK = 1 << 20


def format_of(head: bytes) -> str | None:
    """The compression format whose magic starts ``head`` (any bytes-like), or None."""
    head = bytes(head[:6])
    for magic, name in MAGICS:
        if head.startswith(magic):
            return name
    return None


def format_named(path: str | os.PathLike | None) -> str | None:
    """The compression format a file name promises (``cdrom.ko.xz`` -> ``"xz"``), or None."""
    if path is None:
        return None
    name = os.fspath(path)
    return next((fmt for suffix, fmt in SUFFIXES.items() if name.endswith(suffix)), None)


def strip_suffix(name: str) -> str:
    """``cdrom.ko.xz`` -> ``cdrom.ko``: a compressed file's name without its suffix."""
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def inflate(
    data: bytes, path: str | os.PathLike | None = None, *, limit: int = MAX_INFLATED
) -> tuple[bytes, str | None]:
    """(the object's bytes, the format it was compressed with or None).

    ``data`` that starts with a compression magic is decompressed; anything else is
    returned as it is (an ELF reader then judges it), except a file whose name promises
    compression and that is neither compressed nor ELF: that is named in the error, since
    "bad ELF magic" would hide that the file is not what its name says."""
    fmt = format_of(data[:6])
    if fmt is not None:
        return decompress(data, fmt, path, limit=limit), fmt
    named = format_named(path)
    if named is not None and bytes(data[:4]) != ELF_MAGIC:
        raise ElfError(
            f"not {named}-compressed (bad magic) although named {_suffix(path)}, "
            "and not ELF either",
            path=path,
        )
    return data, None


def _suffix(path) -> str:
    return next(s for s in SUFFIXES if os.fspath(path).endswith(s))


def decompress(
    data: bytes, fmt: str, path: str | os.PathLike | None = None, *, limit: int = MAX_INFLATED
) -> bytes:
    """``data`` (compressed with ``fmt``: xz, zstd or gzip) inflated; an ElfError naming
    ``path`` for damaged, truncated or oversized data."""
    if fmt == "xz":
        return _streams(
            data, lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ), lzma.LZMAError, "xz", path, limit
        )
    if fmt == "gzip":
        return _streams(
            data, lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), zlib.error, "gzip", path, limit
        )
    if fmt == "zstd":
        return _zstd(data, path, limit)
    raise ElfError(f"unknown compression format {fmt!r}", path=path)


def _streams(data: bytes, new, error, fmt: str, path, limit: int) -> bytes:
    """Concatenated xz streams / gzip members, as ``xz -d``/``gzip -d`` accept them;
    NUL padding between and after them is allowed (xz's stream padding)."""
    parts: list[bytes] = []
    size = 0
    rest = data
    while True:
        dec = new()
        try:
            part = dec.decompress(rest, max_length=limit + 1 - size)
        except error as e:
            raise ElfError(f"damaged {fmt} data: {e}", path=path) from None
        size += len(part)
        parts.append(part)
        if size > limit:
            raise ElfError(
                f"{fmt} data inflates past {limit >> 20} MiB: not a kernel module", path=path
            )
        if not dec.eof:
            raise ElfError(
                f"truncated {fmt} data: the stream ends early ({len(data)} bytes)", path=path
            )
        rest = dec.unused_data.lstrip(b"\0")
        if not rest:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if format_of(rest[:6]) != fmt:
            raise ElfError(
                f"damaged {fmt} data: {len(rest)} bytes of something else after "
                "the end of the stream",
                path=path,
            )


def _stdlib_zstd():
    try:
        from compression import zstd  # type: ignore[import-not-found]  # Python 3.14+
    except ImportError:
        return None
    return zstd


def _zstd(data: bytes, path, limit: int) -> bytes:
    lib = _stdlib_zstd()
    if lib is not None:
        return _streams(data, lib.ZstdDecompressor, lib.ZstdError, "zstd", path, limit)
    exe = shutil.which("zstd")
    if exe is None:
        raise ElfError(
            "zstd-compressed, and Python 3.11 cannot read zstd: install the zstd "
            "command (apt-get install zstd)",
            path=path,
        )
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [exe, "-d", "-c", "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
        )
        stdout = proc.stdout
        assert stdout is not None  # (stdout=PIPE)
        feeder = threading.Thread(target=_feed, args=(proc.stdin, data), daemon=True)
        feeder.start()
        out = bytearray()
        try:
            while len(out) <= limit:
                chunk = stdout.read(_CHUNK)
                if not chunk:
                    break
                out += chunk
        finally:
            if len(out) > limit:
                proc.kill()
            stdout.close()
            rc = proc.wait()
            feeder.join()
        if len(out) > limit:
            raise ElfError(
                f"zstd data inflates past {limit >> 20} MiB: not a kernel module", path=path
            )
        if rc != 0:
            err.seek(0)
            lines = [
                ln.strip()
                for ln in err.read().decode("utf-8", "replace").splitlines()
                if ln.strip()
            ]
            why = (lines[-1] if lines else f"exit status {rc}").removeprefix("zstd: ")
            why = why.removeprefix("/*stdin*\\: ").removeprefix("/*stdin*\\ : ")
            raise ElfError(f"damaged zstd data: {why}", path=path)
    return bytes(out)


def _feed(stdin, data: bytes) -> None:
    try:
        stdin.write(data)
    except (BrokenPipeError, OSError):
        pass  # the tool stopped reading (it found damage): its exit says why
    finally:
        try:
            stdin.close()
        except OSError:
            pass


def read_object(path: str | os.PathLike, limit: int = MAX_INFLATED) -> bytes:
    """A whole object file's bytes, decompressed when compressed (see :func:`inflate`)."""
    return inflate(read_input(path), path, limit=limit)[0]


def read_many(
    paths: Iterable[str], workers: int | None = None, ahead: int = 16
) -> Iterator[tuple[str, bytes | KlpkitError]]:
    """(path, bytes or the error reading it) for each path, in order; the compressed ones
    are read and decompressed by ``workers`` threads, at most ``ahead`` files in advance.

    Why threads: liblzma and zlib run without the GIL, so the xz decompression of a
    kernel's modules runs beside the caller's parsing instead of before it, without
    copying the decompressed modules between processes.  Measured on 2 cores with Debian
    6.12's 4,230 modules (88 MiB of xz, 483 MiB inflated): decompression alone 10.8 s on
    one thread, 5.0 s on two threads, 5.35 s in two processes; the whole symbol database
    11.4-12 s serial, 8.1-8.7 s with this.  Uncompressed paths are not read here (``b""``
    is yielded): a scanner reads only the parts it needs of those."""
    paths = list(paths)
    workers = workers or min(4, _usable_cpus())

    def load(path: str) -> bytes | KlpkitError:
        try:
            return read_object(path)
        except KlpkitError as e:
            return e

    if workers <= 1 or not any(format_named(p) for p in paths):
        for path in paths:
            yield path, (load(path) if format_named(path) else b"")
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="klpkit-inflate") as pool:
        pending: deque = deque()
        it = iter(paths)

        def top_up() -> None:
            while len(pending) < ahead:
                path = next(it, None)
                if path is None:
                    return
                pending.append((path, pool.submit(load, path) if format_named(path) else None))

        top_up()
        try:
            while pending:
                path, future = pending.popleft()
                top_up()
                yield path, (future.result() if future is not None else b"")
        finally:
            for _path, future in pending:
                if future is not None:
                    future.cancel()


def _usable_cpus() -> int:
    """The CPUs this process may run on (``taskset``/affinity respected, unlike
    ``os.cpu_count()``): one CPU means no threads at all."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def refuse_compressed_output(path: str | os.PathLike) -> None:
    """klpkit writes modules uncompressed: an output named ``.ko.xz`` (``.zst``, ``.gz``)
    would be an ELF file that kmod and the kernel's ``MODULE_INIT_COMPRESSED_FILE`` path
    try to decompress, and refuse."""
    fmt = format_named(path)
    if fmt is not None:
        raise ElfError(
            f"klpkit writes modules uncompressed: name the output "
            f"{os.path.basename(strip_suffix(os.fspath(path)))} (and compress it "
            f"afterwards if the target installs {fmt} modules)",
            path=path,
        )

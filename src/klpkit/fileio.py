"""Safe output: write to a temporary file in the target directory, then rename.

A failed or interrupted run therefore never leaves a partial output file, and
writing to the path of an input never modifies the input in place (the input
is replaced only by a complete new file, and only when the user asked for it).
"""

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from klpkit.errors import InputError


@contextlib.contextmanager
def _reading(path: str | os.PathLike[str]) -> Iterator[None]:
    """OS errors while reading ``path`` as one-line input errors."""
    try:
        yield
    except FileNotFoundError:
        raise InputError("no such file", path=path) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a file", path=path) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path=path) from None


#: The largest input :func:`read_input` reads: no kernel module, not even one with its
#: debug info, comes near it; a runaway file would.
MAX_INPUT = 1 << 30


def _sized(n: int) -> str:
    return f"{n >> 30} GiB" if n >= 1 << 30 and not n % (1 << 30) else f"{n >> 20} MiB"


def _a(what: str) -> str:
    return ("an " if what[:1] in ("a", "e", "i", "o", "u") else "a ") + what


def read_regular(path: str | os.PathLike[str], limit: int, what: str = "file") -> bytes:
    """Read an input that must be a regular file of at most ``limit`` bytes: a FIFO
    would hang, ``/dev/zero`` would grow memory without bound.

    ``/proc`` files are regular with a size of 0: the size is therefore checked by
    reading at most ``limit + 1`` bytes, and the stated size only refuses early."""
    too_large = f"larger than {_sized(limit)}: not {_a(what)}"
    with _reading(path):
        # O_NONBLOCK: opening a FIFO must not wait for a writer (no effect on files)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InputError(f"not a regular file ({_a(what)} must be one)", path=path)
            if st.st_size > limit:
                raise InputError(too_large, path=path)
            data = f.read(limit + 1)
    if len(data) > limit:
        raise InputError(too_large, path=path)
    return data


def read_input(path: str | os.PathLike[str], limit: int = MAX_INPUT, what: str = "input") -> bytes:
    """Read a whole input file (a module, an object, a symbol list), turning OS errors
    into one-line errors: a regular file of at most ``limit`` bytes (see
    :func:`read_regular`)."""
    return read_regular(path, limit, what)


def temp_prefix(target: Path) -> str:
    """Name prefix of the temp files written next to ``target``: the writer's pid is in
    it, so a later run can tell the leftovers of a killed run from a live writer's."""
    return f".{target.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temps(target: str | os.PathLike[str]) -> None:
    """Remove temp files of ``target`` left by a run that was killed (SIGKILL leaves no
    chance to clean up): ``.NAME.PID.*.tmp`` whose PID is no longer running."""
    target = Path(target)
    directory = target.parent if str(target.parent) else Path(".")
    head = f".{target.name}."
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(head) and name.endswith(".tmp")):
            continue
        pid = name[len(head) :].split(".", 1)[0]
        if pid.isascii() and pid.isdigit() and len(pid) < 10 and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(directory / name)


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via a temp file + rename (atomic on POSIX)."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    remove_stale_temps(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target), suffix=".tmp", dir=directory)
    except FileNotFoundError:
        raise InputError("output directory does not exist", path=directory) from None
    except OSError as e:
        raise InputError(f"cannot create output: {e.strerror}", path=path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise InputError(f"cannot write: {e.strerror}", path=path) from None
        raise


def _identity(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` names (symlinks followed), None if nothing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def refuse_output_over_input(
    output: str | os.PathLike[str], inputs: Mapping[str, str | os.PathLike[str] | None]
) -> None:
    """An output that is one of the command's inputs (the module, the database, a map
    file) would destroy it: compared by identity (device and inode, through symlinks and
    hard links), not by name.  ``inputs`` maps what each input is ("--symbols") to its
    path; an output that does not exist yet is always fine."""
    out = _identity(output)
    if out is None:
        return
    for what, path in inputs.items():
        if path is not None and _identity(path) == out:
            raise InputError(f"output is the same file as the {what} input", path=output)

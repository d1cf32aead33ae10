"""Safe output: write to a temporary file in the target directory, then rename.

A failed or interrupted run therefore never leaves a partial output file, and
writing to the path of an input never modifies the input in place (the input
is replaced only by a complete new file, and only when the user asked for it).
"""

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from klpkit.errors import InputError


@contextlib.contextmanager
def _reading(path: str | os.PathLike) -> Iterator[None]:
    """OS errors while reading ``path`` as one-line input errors."""
    try:
        yield
    except FileNotFoundError:
        raise InputError("no such file", path=path) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a file", path=path) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path=path) from None


def read_input(path: str | os.PathLike) -> bytes:
    """Read a whole input file, turning OS errors into one-line errors."""
    with _reading(path), open(path, "rb") as f:
        return f.read()


def read_regular(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """Read a text input that must be a regular file of at most ``limit`` bytes: a FIFO
    would hang, ``/dev/zero`` would grow memory without bound."""
    with _reading(path):
        # O_NONBLOCK: opening a FIFO must not wait for a writer (no effect on files)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InputError(f"not a regular file (a {what} must be one)", path=path)
            data = f.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"larger than {limit >> 20} MiB: not a {what}", path=path)
    return data


def write_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via a temp file + rename (atomic on POSIX)."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
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

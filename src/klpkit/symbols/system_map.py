"""Source: a real System.map (``nm -n`` output filtered by mksysmap) for vmlinux, as the
``-dbg`` package ships it; and Debian's one-line placeholder that stands in for it."""

from __future__ import annotations

import os
import stat

from klpkit.errors import InputError
from klpkit.fileio import read_regular
from klpkit.numbers import parse_hex
from klpkit.symbols import rules
from klpkit.symbols.model import ObjectRecord

DEBIAN_PLACEHOLDER = b"The real System.map is in the linux-image-"
MAX_SYSTEM_MAP = 256 << 20  # a distribution kernel's is ~8 MiB


def is_placeholder_system_map(path: str | os.PathLike) -> bool:
    """Is ``path`` Debian's one-line stand-in for the real System.map?"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    with open(fd, "rb") as f:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            head = f.read(4096)
        except OSError:
            return False
    return DEBIAN_PLACEHOLDER in head and head.count(b"\n") <= 1


def system_map_record(path: str | os.PathLike) -> ObjectRecord:
    """vmlinux from a real System.map (``nm -n`` output filtered by mksysmap): the
    kallsyms input on v6.1+, so kallsyms' own sort applied to it gives kernel order."""
    where = os.fspath(path)
    data = read_regular(path, MAX_SYSTEM_MAP, "System.map")
    if is_placeholder_system_map(path):
        raise InputError(
            "Debian's placeholder System.map; the real one is in the "
            "linux-image-<release>-dbg package",
            path=path,
        )
    entries = []
    for lineno, line in enumerate(data.decode("utf-8", "surrogateescape").splitlines(), 1):
        parts = line.split()
        if len(parts) < 3:
            continue
        addr = parse_hex(parts[0], "address", where=f"{where}:{lineno}")
        letter, name = parts[1], parts[2]
        if letter in "UuNnwv" or letter in "Aa" and name not in rules._KEEP_ABSOLUTE:
            continue
        if rules.vmlinux_name_ignored(name):
            continue
        weak = letter in "wWvV"
        entries.append(
            (
                addr,
                weak,
                rules.linker_provided(name),
                len(name) - len(name.lstrip("_")),
                lineno,
                name,
                letter,
            )
        )
    entries.sort()
    # scripts/kallsyms.c make_percpus_absolute(): a per-cpu area linked at 0 (x86_64 SMP,
    # rules.absolute_percpu()) has its symbols typed 'A' in kallsyms
    bounds = {e[5]: e[0] for e in entries if e[5] in ("__per_cpu_start", "__per_cpu_end")}
    lo, hi = bounds.get("__per_cpu_start"), bounds.get("__per_cpu_end")
    top = hi if lo == 0 and hi is not None else -1  # per-cpu symbols: [0, top]
    pairs = [(e[5], rules.letter_flags("A" if 0 <= e[0] <= top else e[6])) for e in entries]
    return ObjectRecord.from_pairs("vmlinux", "vmlinux", where, 0, pairs, where=where)

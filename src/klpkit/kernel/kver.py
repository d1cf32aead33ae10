"""Kernel versions: which ``MAJOR.MINOR`` a rule is judged for, read once, here.

A livepatch's fate depends on the kernel that loads it (the module loader applies
vmlinux-gated livepatch relocations itself from 5.8, the symbol names grew to 511
characters in 6.1, ...), so every command asks the same question the same way: the
version the user names (``--kernel-version``), else the one the module was built for
(the first word of its ``vermagic``), else the symbol database's release, else
:data:`DEFAULT_KERNEL_VERSION`, the kernel klpkit is built and tested against (Debian
bookworm's 6.1).
"""

from __future__ import annotations

import re

from klpkit.errors import InputError
from klpkit.numbers import parse_decimal, shown

#: The kernel klpkit is tested against (Debian 12's 6.1): the answer when nothing says.
DEFAULT_KERNEL_VERSION: tuple[int, int] = (6, 1)

_VERSION = re.compile(r"\s*([0-9]+)\.([0-9]+)")
#: KERNEL_VERSION(a, b, c) packs each part into 8 bits (16 for the major)
_PART_MAX = 0xFFFF


def parse_kernel_version(text: str | tuple[int, ...]) -> tuple[int, int]:
    """``"6.1"``, ``"6.1.0-47-amd64"``, ``"6.10-rc1"``, ``(6, 1)`` -> ``(6, 1)``.

    Raises :class:`InputError` for text that does not start with ``MAJOR.MINOR``."""
    if isinstance(text, tuple):
        return text[0], text[1]
    m = _VERSION.match(str(text))
    if not m:
        raise InputError(f"kernel version {shown(str(text))} is not MAJOR.MINOR (e.g. 6.1)")
    major = parse_decimal(m.group(1), "kernel version major", limit=_PART_MAX)
    minor = parse_decimal(m.group(2), "kernel version minor", limit=_PART_MAX)
    return major, minor


def version_of_release(release: str | None) -> tuple[int, int] | None:
    """The version of a release string (``uname -r``, a vermagic's first word), or None
    when there is none or it does not start with ``MAJOR.MINOR``."""
    if not release:
        return None
    try:
        return parse_kernel_version(release)
    except InputError:
        return None


def kernel_version(explicit=None, *releases: str | None) -> tuple[int, int]:
    """The version to judge for: ``explicit`` (parsed; an unparsable one is an error),
    else the first of ``releases`` that parses, else :data:`DEFAULT_KERNEL_VERSION`."""
    if explicit is not None:
        return parse_kernel_version(explicit)
    for rel in releases:
        got = version_of_release(rel)
        if got is not None:
            return got
    return DEFAULT_KERNEL_VERSION


def format_version(kver: tuple[int, int]) -> str:
    return f"{kver[0]}.{kver[1]}"

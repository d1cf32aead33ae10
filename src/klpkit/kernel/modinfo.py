"""The ``.modinfo`` section of a kernel module: NUL-separated ``key=value`` strings.

``modpost``/``MODULE_INFO()`` emit one ``key=value\\0`` string per tag; a key may
repeat (``alias=``, ``parm=``, ``parmtype=`` ...), order matters to nobody but is
kept, and padding NULs between strings (alignment) are allowed.  This module parses
that into an ordered list of pairs and serialises it back; a parse/serialise round
trip of a section without empty strings is byte-identical.

Keys klpkit cares about: ``name`` (the in-kernel module name, ``KBUILD_MODNAME``),
``depends`` (comma-separated module names modpost found the module needs),
``vermagic`` (release + feature words; the loader compares it), ``livepatch``
(``Y`` on livepatch modules), ``srcversion``, ``license``.
"""

from __future__ import annotations

import os

from klpkit.errors import KlpkitError


class ModinfoError(KlpkitError):
    """A ``.modinfo`` section that is not NUL-separated key=value strings."""


class Modinfo:
    """An ordered multimap of ``.modinfo`` tags."""

    def __init__(self, pairs: list[tuple[str, str]] | None = None):
        self.pairs: list[tuple[str, str]] = list(pairs or [])

    # --- parse / serialise ----------------------------------------------------
    @classmethod
    def parse(cls, data: bytes, *, path: str | None = None, strict: bool = False) -> Modinfo:
        """Parse section bytes.  ``strict``: a string without ``=`` is an error
        (otherwise it is kept with an empty value under its whole text as key)."""
        # one decode for the section (NULs cannot fall inside a UTF-8 sequence):
        # a symbol database build parses 4,000 of these
        entries = [
            e.partition("=")
            for e in bytes(data).decode("utf-8", "surrogateescape").split("\0")
            if e
        ]
        if strict:
            for key, sep, _value in entries:
                if not sep:
                    raise ModinfoError(f".modinfo entry {key!r} has no '='", path=path)
        return cls([(key, value) for key, _sep, value in entries])

    def to_bytes(self) -> bytes:
        return b"".join(
            f"{k}={v}".encode("utf-8", "surrogateescape") + b"\0" for k, v in self.pairs
        )

    # --- access ---------------------------------------------------------------
    def get(self, key: str, default: str | None = None) -> str | None:
        for k, v in self.pairs:
            if k == key:
                return v
        return default

    def get_all(self, key: str) -> list[str]:
        return [v for k, v in self.pairs if k == key]

    def __contains__(self, key: str) -> bool:
        return any(k == key for k, _v in self.pairs)

    def set(self, key: str, value: str) -> None:
        """Replace the first ``key`` (dropping later duplicates), or append it."""
        out, done = [], False
        for k, v in self.pairs:
            if k == key:
                if not done:
                    out.append((k, value))
                    done = True
                continue
            out.append((k, v))
        if not done:
            out.append((key, value))
        self.pairs = out

    def remove(self, key: str) -> int:
        before = len(self.pairs)
        self.pairs = [(k, v) for k, v in self.pairs if k != key]
        return before - len(self.pairs)

    # --- the tags klpkit uses -----------------------------------------------------
    @property
    def name(self) -> str | None:
        return self.get("name")

    @property
    def depends(self) -> list[str]:
        return [d for d in (self.get("depends") or "").split(",") if d]

    @depends.setter
    def depends(self, mods: list[str]) -> None:
        self.set("depends", ",".join(mods))

    @property
    def vermagic(self) -> str | None:
        return self.get("vermagic")

    @property
    def release(self) -> str | None:
        """The kernel release a module was built for (first word of vermagic)."""
        vm = self.vermagic
        return vm.split()[0] if vm and vm.split() else None

    @property
    def is_livepatch(self) -> bool:
        return self.get("livepatch") == "Y"

    def __eq__(self, other) -> bool:
        return isinstance(other, Modinfo) and self.pairs == other.pairs

    def __repr__(self) -> str:
        return f"Modinfo({self.pairs!r})"


def module_name(path: str | os.PathLike, modinfo: Modinfo | None = None) -> str:
    """The in-kernel module name: ``.modinfo`` ``name=``, else the file name with
    ``.ko`` (and any compression suffix) removed and ``-`` turned into ``_``."""
    if modinfo is not None and modinfo.name:
        return modinfo.name
    base = os.path.basename(os.fspath(path))
    for suffix in (".xz", ".gz", ".zst"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    if base.endswith(".ko"):
        base = base[:-3]
    return base.replace("-", "_")

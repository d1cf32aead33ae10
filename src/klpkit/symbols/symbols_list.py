"""klp-convert's ``Symbols.list`` / ``symbols.klp``: import and export.

Format: line 1 ``klp-convert-symbol-data.0.1`` (klp-convert compares only these 27
characters), then ``*<object>`` lines each followed by one symbol name per line;
``__ksymtab_<name>`` lines mark ``<name>`` as exported.

What klpkit writes, so that the kernel's tool and klpkit can share one file:
  * per object, every symbol once per occurrence **in kernel order** (so the
    position of a line among same-named lines *is* the sympos), ``vmlinux`` first;
  * a ``__ksymtab_<name>`` line for every exported name the object lacks one for
    (from v6.5 objects no longer contain them);
  * a last object ``*.klpkit`` (an impossible module name: it contains a dot, so
    the kernel parse ``%55[^.]`` can never select it) whose "symbols" are
    tab-separated records klp-convert never matches (a relocation's symbol name
    has no tab): release/build id, per object the kind, dependencies and one
    bind/type code per symbol, and every export's type, namespace and CRC.
    With it, import(export(db)) reproduces the database exactly.

A file made by the kernel's Makefile (``nm -f posix | cut -d' ' -f1``) has no such
section: names are nm's *name-sorted* order, include undefined (``U``) names and
carry no types.  Importing it gives correct counts but not kernel order: the DB
records ``source=symbols-list(nm)`` and marks bindings/types 'unknown'.
"""

from __future__ import annotations

import os
import stat

from klpkit.errors import InputError
from klpkit.fileio import read_regular, write_atomic
from klpkit.numbers import parse_decimal, parse_hex
from klpkit.symbols.db import NONCORE, SymbolDB
from klpkit.symbols.finish import finish
from klpkit.symbols.model import ObjectRecord, SymbolSet
from klpkit.symbols.speed import gc_paused
from klpkit.symbols.symvers import Export

HEADER = "klp-convert-symbol-data.0.1"
MAX_SYMBOLS_LIST = 1 << 30  # a distribution kernel's: ~19 MiB


def is_symbols_list(path: str | os.PathLike) -> bool:
    """Does the file start with klp-convert's header (its first 27 characters)?  (Only
    a regular file can: a FIFO is not waited on.)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path=path) from None
    with open(fd, "rb") as f:
        try:
            return stat.S_ISREG(os.fstat(fd).st_mode) and f.read(len(HEADER)) == HEADER.encode()
        except OSError as e:
            raise InputError(f"cannot read: {e.strerror}", path=path) from None


META_OBJECT = ".klpkit"
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _code(flags: int) -> str:
    # bind (0-2, 15) and type (0-6,10,15) squeezed into two chars; noncore as a prefix
    b = flags & 0xF
    t = (flags >> 4) & 0xF
    return ("!" if flags & NONCORE else "") + _B64[b] + _B64[t]


def _decode_codes(text: str) -> list[int]:
    out = []
    i = 0
    while i < len(text):
        extra = 0
        if text[i] == "!":
            extra = NONCORE
            i += 1
        out.append(extra | _B64.index(text[i]) | (_B64.index(text[i + 1]) << 4))
        i += 2
    return out


@gc_paused
def export_symbols_list(db: SymbolDB, path: str | os.PathLike) -> int:
    """Write ``db`` as a Symbols.list; returns the number of symbol lines written."""
    lines = [HEADER]
    meta = [
        "release\t" + db.release,
        "build_id\t" + (db.build_id or ""),
        "source\t" + db.meta.get("source", ""),
    ]
    n = 0
    infos = {
        name: (kind, opath, ",".join(depends)) for name, kind, opath, depends in db.object_rows()
    }
    all_exports: dict[str, list] = {}
    for obj, *export in db.export_rows():
        all_exports.setdefault(obj, []).append(export)
    for obj, rows in db.all_symbols().items():
        kind, opath, depends = infos[obj]
        lines.append("*" + obj)
        names = set()
        for name, _flags in rows:
            lines.append(name)
            names.add(name)
        exports = all_exports.get(obj, [])
        extra = [e[0] for e in exports if "__ksymtab_" + e[0] not in names]
        lines.extend("__ksymtab_" + e for e in extra)
        n += len(rows) + len(extra)
        meta.append(
            "\t".join(
                [
                    "object",
                    obj,
                    kind,
                    opath or "",
                    depends,
                    str(len(rows)),
                    "".join(_code(f) for _n, f in rows),
                ]
            )
        )
        for name, etype, ns, crc in exports:
            meta.append(
                "\t".join(
                    ["export", obj, name, etype, ns or "", "" if crc is None else f"{crc:08x}"]
                )
            )
    lines.append("*" + META_OBJECT)
    lines.extend(meta)
    write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
    return n


def read_symbols_list(path: str | os.PathLike) -> SymbolSet:
    """Parse a Symbols.list into a SymbolSet (release from the klpkit section, if any)."""
    where = os.fspath(path)
    text = read_regular(path, MAX_SYMBOLS_LIST, "Symbols.list").decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or not lines[0].startswith(HEADER):
        raise InputError(
            f"Symbol list is in unknown format (first line is not '{HEADER}')", path=path
        )
    objects, meta_at = _sections(lines, where)
    meta_lines = objects.pop(META_OBJECT, None)
    symset = SymbolSet(release="", source="symbols-list", sources=[os.path.abspath(path)])
    if meta_lines is None:
        symset.source = "symbols-list(nm)"
        _add_nm_objects(symset, objects, where)
    else:
        kinds, exports = _klpkit_section(symset, meta_lines, where, meta_at)
        _add_klpkit_objects(symset, objects, kinds, exports, where)
    return symset


def _sections(lines: list[str], where: str) -> tuple[dict[str, list[str]], int]:
    """object -> its lines, in the file's order, and the line of the klpkit section."""
    objects: dict[str, list[str]] = {}
    current = None
    meta_at = 0
    for lineno, line in enumerate(lines[1:], 2):
        if line.startswith("*"):
            current = objects.setdefault(line[1:], [])
            if line[1:] == META_OBJECT:
                meta_at = lineno
        elif current is None:
            raise InputError(
                f"line {lineno}: symbol before any '*object' line (File format error)", path=where
            )
        else:
            current.append(line)
    return objects, meta_at


def _add_nm_objects(symset: SymbolSet, objects: dict[str, list[str]], where: str) -> None:
    """A list from the kernel Makefile's ``nm``: names only, binding and type unknown,
    ``__ksymtab_<name>`` lines marking exports."""
    for obj, names in objects.items():
        rows = [(n, 0xFF) for n in names]  # bind/type unknown
        exported = {n[len("__ksymtab_") :] for n in names if n.startswith("__ksymtab_")}
        present = set(names)
        kind = "vmlinux" if obj == "vmlinux" else "module"
        rec = ObjectRecord.from_pairs(obj, kind, None, symset.next_oid, rows, where=where)
        rec.exports = [Export(e, obj, "", None, None) for e in sorted(exported) if e in present]
        symset.add_object(rec)


_ObjectInfo = tuple[str, str | None, list[str], int, list[int]]


def _klpkit_section(
    symset: SymbolSet, meta_lines: list[str], where: str, meta_at: int
) -> tuple[dict[str, _ObjectInfo], list[Export]]:
    """The klpkit records: provenance into ``symset``; per object (kind, path,
    dependencies, symbol count, codes); the exports."""
    kinds: dict[str, _ObjectInfo] = {}
    exports = []
    for lineno, line in enumerate(meta_lines, 1):
        f = line.split("\t")
        at = f"{where}:{meta_at + lineno}"
        try:
            if f[0] == "release":
                symset.release = f[1]
            elif f[0] == "build_id":
                symset.build_id = f[1]
            elif f[0] == "source":
                symset.source = f"symbols-list({f[1]})" if f[1] else "symbols-list"
            elif f[0] == "object":
                if f[2] not in ("vmlinux", "module"):
                    raise ValueError(f[2])
                count = parse_decimal(f[5], "symbol count", where=at)
                deps = [d for d in f[4].split(",") if d]
                kinds[f[1]] = (f[2], f[3] or None, deps, count, _decode_codes(f[6]))
            elif f[0] == "export":
                crc = parse_hex(f[5], "export CRC", where=at, limit=0xFFFFFFFF) if f[5] else None
                exports.append(Export(f[2], f[1], f[3], f[4] or None, crc))
        except (IndexError, ValueError):
            raise InputError(
                f"klpkit record {lineno} of '*{META_OBJECT}' is malformed", path=where
            ) from None
    return kinds, exports


def _add_klpkit_objects(
    symset: SymbolSet,
    objects: dict[str, list[str]],
    kinds: dict[str, _ObjectInfo],
    exports: list[Export],
    where: str,
) -> None:
    exports_of: dict[str, list[Export]] = {}
    for e in exports:
        exports_of.setdefault(e.object, []).append(e)
    for obj, names in objects.items():
        if obj not in kinds:
            raise InputError(f"object '{obj}' has no klpkit record", path=where)
        kind, opath, depends, nrows, codes = kinds[obj]
        if len(codes) != nrows or len(names) < nrows:
            raise InputError(f"object '{obj}': {len(names)} names but {nrows} recorded", path=where)
        rows = list(zip(names[:nrows], codes, strict=True))
        rec = ObjectRecord.from_pairs(obj, kind, opath, symset.next_oid, rows, where=where)
        rec.depends, rec.exports = depends, exports_of.get(obj, [])
        symset.add_object(rec)


@gc_paused
def import_symbols_list(
    path: str | os.PathLike, *, release: str | None = None, db=None, symvers=None
) -> SymbolDB:
    """Build a database from a Symbols.list (ours round-trips exactly)."""
    symset = read_symbols_list(path)
    if release and symset.release and release != symset.release:
        raise InputError(f"Symbols.list is for kernel {symset.release}, not {release}", path=path)
    symset.release = symset.release or release or ""
    if not symset.release:
        raise InputError(
            "Symbols.list does not say which kernel it is for; pass --release", path=path
        )
    return finish(symset, symvers, db)

"""klp-convert's ``Symbols.list`` / ``symbols.klp`` (spec §2.2): import and export.

Format: line 1 ``klp-convert-symbol-data.0.1`` (klp-convert compares only these 27
characters), then ``*<object>`` lines each followed by one symbol name per line;
``__ksymtab_<name>`` lines mark ``<name>`` as exported.

What klpkit writes, so that the kernel's tool and klpkit can share one file:
  * per object, every symbol once per occurrence **in kernel order** (so the
    position of a line among same-named lines *is* the sympos), ``vmlinux`` first;
  * a ``__ksymtab_<name>`` line for every exported name the object lacks one for
    (from v6.5 objects no longer contain them — spec P17);
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

from klpkit.errors import InputError
from klpkit.fileio import read_input, write_atomic
from klpkit.symbols.build import ObjectRecord, SymbolSet, _finish, gc_paused
from klpkit.symbols.db import NONCORE, SymbolDB
from klpkit.symbols.symvers import Export

HEADER = "klp-convert-symbol-data.0.1"


def is_symbols_list(path) -> bool:
    """Does the file start with klp-convert's header (its first 27 characters)?"""
    try:
        with open(path, "rb") as f:
            return f.read(len(HEADER)) == HEADER.encode()
    except FileNotFoundError:
        return False
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
        name: (kind, opath, depends)
        for name, kind, opath, depends in db._query("SELECT name, kind, path, depends FROM objects")
    }
    all_exports: dict[str, list] = {}
    for row in db._query(
        "SELECT o.name, e.name, e.type, e.namespace, e.crc FROM exports e "
        "JOIN objects o ON o.id = e.obj ORDER BY o.name, e.name"
    ):
        all_exports.setdefault(row[0], []).append(row[1:])
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
    text = read_input(path).decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or not lines[0].startswith(HEADER):
        raise InputError(
            f"Symbol list is in unknown format (first line is not '{HEADER}')", path=path
        )
    objects: dict[str, list[str]] = {}
    order: list[str] = []
    current = None
    for lineno, line in enumerate(lines[1:], 2):
        if line.startswith("*"):
            current = line[1:]
            if current not in objects:
                objects[current] = []
                order.append(current)
            continue
        if current is None:
            raise InputError(
                f"line {lineno}: symbol before any '*object' line (File format error)", path=path
            )
        objects[current].append(line)
    meta_lines = objects.pop(META_OBJECT, None)
    if META_OBJECT in order:
        order.remove(META_OBJECT)
    symset = SymbolSet(release="", source="symbols-list", sources=[os.path.abspath(path)])
    if meta_lines is None:
        symset.source = "symbols-list(nm)"
        for obj in order:
            names = objects[obj]
            rows = [(n, 0xFF) for n in names]  # bind/type unknown
            exported = {n[len("__ksymtab_") :] for n in names if n.startswith("__ksymtab_")}
            present = set(names)
            rec = ObjectRecord(obj, "vmlinux" if obj == "vmlinux" else "module", None, rows)
            rec.exports = [Export(e, obj, "", None, None) for e in sorted(exported) if e in present]
            symset.objects.append(rec)
        return symset
    kinds = {}
    exports = []
    for lineno, rec in enumerate(meta_lines, 1):
        f = rec.split("\t")
        try:
            if f[0] == "release":
                symset.release = f[1]
            elif f[0] == "build_id":
                symset.build_id = f[1]
            elif f[0] == "source":
                symset.source = f"symbols-list({f[1]})" if f[1] else "symbols-list"
            elif f[0] == "object":
                kinds[f[1]] = (
                    f[2],
                    f[3] or None,
                    [d for d in f[4].split(",") if d],
                    int(f[5]),
                    _decode_codes(f[6]),
                )
            elif f[0] == "export":
                exports.append(
                    Export(f[2], f[1], f[3], f[4] or None, int(f[5], 16) if f[5] else None)
                )
        except (IndexError, ValueError):
            raise InputError(
                f"klpkit record {lineno} of '*{META_OBJECT}' is malformed", path=path
            ) from None
    exports_of: dict[str, list[Export]] = {}
    for e in exports:
        exports_of.setdefault(e.object, []).append(e)
    for obj in order:
        if obj not in kinds:
            raise InputError(f"object '{obj}' has no klpkit record", path=path)
        kind, opath, depends, nrows, codes = kinds[obj]
        names = objects[obj]
        if len(codes) != nrows or len(names) < nrows:
            raise InputError(f"object '{obj}': {len(names)} names but {nrows} recorded", path=path)
        rows = list(zip(names[:nrows], codes, strict=True))
        symset.objects.append(
            ObjectRecord(obj, kind, opath, rows, depends, exports_of.get(obj, []))
        )
    return symset


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
    return _finish(symset, symvers, db, True)


@gc_paused
def dump(db: SymbolDB) -> dict:
    """A canonical, comparable view of a database's content (not its provenance)."""
    infos = {
        name: (kind, [d for d in depends.split(",") if d])
        for name, kind, depends in db._query("SELECT name, kind, depends FROM objects")
    }
    objs = {obj: (*infos[obj], rows) for obj, rows in db.all_symbols().items()}
    exports = db._query(
        "SELECT e.name, o.name, e.type, e.namespace, e.crc FROM exports e "
        "JOIN objects o ON o.id = e.obj ORDER BY e.name, o.name"
    )
    return {"release": db.release, "build_id": db.build_id, "objects": objs, "exports": exports}

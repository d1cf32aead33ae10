"""The symbol database: one SQLite file per kernel release, standard library only.

This module is the database's only owner: every SQL statement, reading and writing
(create, add objects, dump, verify), is here.

Layout (all ``WITHOUT ROWID`` but ``objects``: the primary key *is* the B-tree, so a
lookup by name is one index descent and the file stays small).  Every name, path and
string is a BLOB made by :func:`klpkit.symbols.pages.encode_name`: a kernel's names are
bytes, and one that is not UTF-8 is stored and found again like any other.

``meta(key, value)``
    ``format`` (= :data:`FORMAT`), ``schema``, ``release``, ``build_id``, ``source``
    (what it was built from), ``sources`` (JSON list of paths), ``klpkit`` (version),
    ``symvers``, ``counts`` and ``skipped`` (JSON), ``machine`` (ELF e_machine),
    ``objects`` (check of the objects table) and ``check`` (check of the other keys).
``objects(id, name, kind, path, depends)``
    ids ``0..n-1``; ``0`` is ``vmlinux``; ``depends`` is a comma-separated list; names
    are unique (checked when the table is read: an index would be a structure no query
    reads).
``symbol_pages(first, records, chk)``
    every symbol occurrence (name, obj, pos, flags) as a record sorted by (name,
    obj, pos), cut into pages of about 32 records, one row per page; a page never
    splits the records of one name, so its ``first`` name is its key and a lookup
    reads exactly one page (format: :mod:`klpkit.symbols.pages`); ``chk`` is the
    Adler-32 of ``records`` (:func:`page_check`), checked whenever the page is read.
    ``pos`` orders the occurrences of an object in kernel order (kallsyms index for
    vmlinux, ``.symtab`` index for modules); ``flags`` = bind | type << 4 | NONCORE
    (see :mod:`klpkit.symbols.rules`).  Why pages: :mod:`klpkit.symbols.speed`.
``exports(name, obj, type, namespace, crc, chk)``
    ``chk`` is the CRC-32 of the row's other fields, checked whenever it is read.

sympos and counts are derived at lookup time from the order of the rows, so the
database never stores a number that could disagree with its own rows.  A damaged
file is refused on open (its header, meta keys and their types), or by the query that
reads the damaged row, with one :class:`SymbolDBError`; :meth:`SymbolDB.verify` reads
everything (``klpkit symbols info --verify``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import struct
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from klpkit import __version__
from klpkit.elf import constants as C
from klpkit.errors import InputError, KlpkitError
from klpkit.fileio import remove_stale_temps, temp_prefix
from klpkit.numbers import parse_decimal
from klpkit.symbols.pages import (
    MAX_FLAGS,
    MAX_OBJECTS,
    PAYLOAD,
    Page,
    decode_name,
    encode_name,
    lookup_key,
    make_pages,
    payloads_of,
)
from klpkit.symbols.speed import MMAP_SIZE, gc_paused

if TYPE_CHECKING:
    from klpkit.symbols.model import ObjectRecord, SymbolSet
    from klpkit.symbols.symvers import Export

FORMAT = "klpkit-symbols"
# 4: names, paths and strings as BLOBs (names that are not UTF-8), checks on pages,
#    exports, objects and meta; 3: vmlinux binding and type from the kallsyms letter
SCHEMA = 4
USER_VERSION = 0x6B6C7031  # "klp1": marks our files before any table is read
NONCORE = 0x100  # flag: not in the module's kallsyms after init (init section, .modinfo, ABS)

#: the database's names of a symbol's binding and type: the ELF names in lower case, and
#: "unknown" (15) for what a kallsyms type letter cannot tell
BIND_NAMES = {**{b: n.lower() for b, n in C.BIND_NAMES.items()}, 15: "unknown"}
TYPE_NAMES = {**{t: n.lower() for t, n in C.TYPE_NAMES.items()}, 15: "unknown"}
KINDS = ("vmlinux", "module")

SCHEMA_SQL = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE objects(id INTEGER PRIMARY KEY, name BLOB NOT NULL, kind TEXT NOT NULL,
                     path BLOB, depends BLOB NOT NULL);
CREATE TABLE symbol_pages(first BLOB PRIMARY KEY, records BLOB NOT NULL,
                          chk INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE exports(name BLOB NOT NULL, obj INTEGER NOT NULL, type BLOB NOT NULL,
                     namespace BLOB, crc INTEGER, chk INTEGER NOT NULL,
                     PRIMARY KEY(name, obj)) WITHOUT ROWID;
"""
#: meta keys every database has (``check`` apart)
META_KEYS = (
    "format",
    "schema",
    "release",
    "build_id",
    "source",
    "sources",
    "klpkit",
    "symvers",
    "counts",
    "skipped",
    "machine",
    "objects",
)
COUNT_KEYS = ("objects", "symbols", "exports", "skipped")

# every statement (the writer's are in _write_sqlite)
_META = "SELECT key, value FROM meta"
_OBJECTS = "SELECT id, name, kind, path, depends FROM objects ORDER BY id"
# the page a name's records are in: the last that starts at or before the name
_PAGE_OF = "SELECT records, chk FROM symbol_pages WHERE first <= ? ORDER BY first DESC LIMIT 1"
_PAGES_FROM = (
    "SELECT first, records, chk FROM symbol_pages WHERE first >= COALESCE("
    "(SELECT first FROM symbol_pages WHERE first <= ?1 ORDER BY first DESC LIMIT 1), ?1) "
    "ORDER BY first"
)
_ALL_PAGES = "SELECT first, records, chk FROM symbol_pages ORDER BY first"
# (in obj order: the primary key (name, obj) is the table's B-tree)
_EXPORTS_OF = "SELECT obj, type, namespace, crc, chk FROM exports WHERE name = ?"
_ALL_EXPORTS = "SELECT name, obj, type, namespace, crc, chk FROM exports ORDER BY name, obj"


class SymbolDBError(KlpkitError):
    """A symbol database that cannot be used: missing, corrupt, or for another kernel."""


class SymbolEntry(NamedTuple):
    """One occurrence of a symbol in one object, as the livepatch core would count it.

    (A NamedTuple: lookups of common names return thousands of these.)
    """

    object: str
    name: str
    bind: str  # 'local' | 'global' | 'weak' | 'unknown'
    type: str  # 'func' | 'object' | 'notype' | 'tls' | ... | 'unknown'
    exported: bool
    export_type: str | None  # 'EXPORT_SYMBOL' | 'EXPORT_SYMBOL_GPL' | None
    namespace: str | None
    sympos: int  # 1-based among same-named symbols of the object (kernel order)
    count: int  # type: ignore[assignment]  # same-named symbols in the object (after init)
    crc: int | None
    core: bool = True  # False: only in the module's init-time symbol table
    load_sympos: int = 0  # position while the module's init-time table is live
    load_count: int = 0  # (klp_module_coming() on a module loaded after the patch)

    @property
    def klp_sympos(self) -> int:
        """The number to write in ``.klp.sym.<obj>.<name>,<pos>``: 0 when unique."""
        return 0 if self.count == 1 else self.sympos

    def as_dict(self) -> dict:
        return self._asdict()


Export4 = tuple[str, str, str | None, int | None]


# --- checks -------------------------------------------------------------------------
def page_check(records: bytes) -> int:
    """A page's check: Adler-32 of its records (one C call, ~0.2 us for a page: a lookup
    pays it; its ``first`` is the first record's name, checked by every scan)."""
    return zlib.adler32(records)


def export_check(name: bytes, obj: int, etype: bytes, ns: bytes | None, crc: int | None) -> int:
    return zlib.crc32(
        b"%s\0%d\0%s\0%s\0%d"
        % (name, obj, etype, b"-" if ns is None else b"=" + ns, -1 if crc is None else crc)
    )


def _objects_check(rows: Sequence[tuple]) -> str:
    return f"{zlib.crc32(repr(list(rows)).encode('ascii', 'backslashreplace')):08x}"


def _meta_check(meta: dict[str, str]) -> str:
    text = "\0".join(f"{k}={v}" for k, v in sorted(meta.items()) if k != "check")
    return f"{zlib.crc32(text.encode('utf-8', 'surrogateescape')):08x}"


def _corrupt(path: str | os.PathLike, why: str) -> SymbolDBError:
    why = " ".join(why.split())  # (SQLite's messages may span lines)
    if len(why) > 160:
        why = why[:160] + "..."
    return SymbolDBError(f"corrupt symbol database ({why}); rebuild it", path=path)


def _check_file(path: Path) -> None:
    """Refuse a file that is not a complete klpkit SQLite database, in O(1) and without
    blocking: a FIFO or a device is refused before it is read."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (no effect on files)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SymbolDBError(
            "no symbol database here; build one with 'klpkit symbols build'", path=path
        ) from None
    except OSError as e:
        raise SymbolDBError(f"cannot read symbol database: {e.strerror}", path=path) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise SymbolDBError("is a directory, expected a symbol database file", path=path)
        if not stat.S_ISREG(st.st_mode):
            raise SymbolDBError("not a regular file, expected a symbol database", path=path)
        head = os.pread(fd, 100, 0)
    except OSError as e:
        raise SymbolDBError(f"cannot read symbol database: {e.strerror}", path=path) from None
    finally:
        os.close(fd)
    if len(head) < 100 or not head.startswith(b"SQLite format 3\0"):
        raise SymbolDBError("not a klpkit symbol database (no SQLite header)", path=path)
    (page_size,) = struct.unpack_from(">H", head, 16)
    page_size = 65536 if page_size == 1 else page_size
    (npages,) = struct.unpack_from(">I", head, 28)
    (user_version,) = struct.unpack_from(">I", head, 60)
    if user_version != USER_VERSION:
        raise SymbolDBError("not a klpkit symbol database (foreign SQLite file)", path=path)
    if npages and st.st_size < npages * page_size:
        raise SymbolDBError(
            f"symbol database is truncated ({st.st_size} bytes, header says "
            f"{npages * page_size}); rebuild it",
            path=path,
        )


class _Meta(NamedTuple):
    """The meta table, read and checked once on open: its properties never fail."""

    text: dict[str, str]
    release: str
    build_id: str
    machine: int
    sources: list[str]
    counts: dict[str, int]
    skipped: list[tuple[str, str]]


def _json(meta: dict[str, str], key: str, path: Path) -> Any:
    try:
        return json.loads(meta[key])
    except ValueError:
        raise _corrupt(path, f"meta '{key}' is not JSON") from None


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def _parse_meta(rows: list[tuple[Any, Any]], path: Path) -> _Meta:
    """Every key there, of its type; the version keys first, for a clear message on a
    database of another klpkit version."""
    meta: dict[str, str] = {}
    for key, value in rows:
        if not isinstance(key, str) or not isinstance(value, bytes | str):
            raise _corrupt(path, f"meta key {key!r} is not text")
        meta[key] = decode_name(value) if isinstance(value, bytes) else value
    if meta.get("format") != FORMAT:
        raise SymbolDBError("not a klpkit symbol database (no format mark)", path=path)
    if meta.get("schema") != str(SCHEMA):
        raise SymbolDBError(
            f"symbol database schema {meta.get('schema')} is not "
            f"{SCHEMA} (built by another klpkit version); rebuild it with "
            f"'klpkit symbols build'",
            path=path,
        )
    missing = [k for k in (*META_KEYS, "check") if k not in meta]
    if missing:
        raise _corrupt(path, f"meta key '{missing[0]}' is missing")
    if not meta["release"]:
        raise _corrupt(path, "meta 'release' is empty")
    try:
        machine = parse_decimal(meta["machine"], "meta 'machine'", limit=0xFFFF)
    except InputError as e:
        raise _corrupt(path, e.message) from None
    sources = _json(meta, "sources", path)
    counts = _json(meta, "counts", path)
    skipped = _json(meta, "skipped", path)
    if not _str_list(sources):
        raise _corrupt(path, "meta 'sources' is not a list of paths")
    if not (
        isinstance(counts, dict)
        and all(type(counts.get(k)) is int and counts[k] >= 0 for k in COUNT_KEYS)
    ):
        raise _corrupt(path, "meta 'counts' is not a set of counts")
    if not (isinstance(skipped, list) and all(_str_list(x) and len(x) == 2 for x in skipped)):
        raise _corrupt(path, "meta 'skipped' is not a list of (path, reason)")
    if meta["check"] != _meta_check(meta):  # (last: the messages above say more)
        raise _corrupt(path, "meta does not match its check")
    return _Meta(
        meta,
        meta["release"],
        meta["build_id"],
        machine,
        sources,
        {k: counts[k] for k in COUNT_KEYS},
        [(p, r) for p, r in skipped],
    )


class SymbolDB:
    """Read access to one kernel release's symbols.  Open with :meth:`open`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, meta: _Meta):
        self._conn = conn
        self.path = path
        self._meta = meta
        self.meta = meta.text
        self._objnames: dict[int, str] | None = None
        self._objids: dict[str, int] = {}
        self._objrows: list[tuple[int, bytes, str, bytes | None, bytes]] = []

    # --- opening ----------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, release: str | None = None) -> SymbolDB:
        """Open a database; with ``release`` refuse one built for another kernel."""
        path = Path(path)
        _check_file(path)
        conn = None
        try:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False
            )
            # memory-mapped reads: a lookup touches one leaf page, and a pread per
            # lookup costs more than the rest of it
            conn.execute(f"PRAGMA mmap_size={MMAP_SIZE}")
            meta = _parse_meta(conn.execute(_META).fetchall(), path)
        except sqlite3.DatabaseError as e:
            if conn is not None:
                conn.close()
            raise _corrupt(path, str(e)) from None
        except KlpkitError:
            if conn is not None:
                conn.close()
            raise
        if release is not None and meta.release != release:
            conn.close()
            raise SymbolDBError(
                f"symbol database is for kernel {meta.release}, not {release}", path=path
            )
        return cls(conn, path, meta)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SymbolDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, why: object) -> NoReturn:
        """Any damaged row a query met, as one error naming the file."""
        if isinstance(why, KeyError):
            why = f"object id {why} is not in the objects table"
        elif isinstance(why, TypeError | UnicodeError):
            why = "a row holds a value of the wrong type"
        elif isinstance(why, IndexError):
            why = "a row is cut short"
        raise _corrupt(self.path, str(why))

    def _query(self, sql: str, args: Iterable = ()) -> list:
        try:
            return self._conn.execute(sql, tuple(args)).fetchall()
        except sqlite3.DatabaseError as e:
            self._fail(e)

    # --- properties ---------------------------------------------------------------
    @property
    def release(self) -> str:
        return self._meta.release

    @property
    def machine(self) -> int | None:
        """The kernel's ELF e_machine, when the database was built from ELF objects."""
        return self._meta.machine or None

    @property
    def build_id(self) -> str | None:
        return self._meta.build_id or None

    @property
    def sources(self) -> list[str]:
        return list(self._meta.sources)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) of modules left out by a --skip-bad build."""
        return list(self._meta.skipped)

    def counts(self) -> dict[str, int]:
        return dict(self._meta.counts)

    # --- objects ------------------------------------------------------------------
    def _objects(self) -> dict[int, str]:
        """id -> name of every object, read and checked once (ids 0..n-1, names unique,
        kinds known, the table's check in meta)."""
        if self._objnames is None:
            rows = self._query(_OBJECTS)
            if len(rows) != self._meta.counts["objects"]:
                self._fail(f"{len(rows)} objects, meta counts {self._meta.counts['objects']}")
            names = {}
            for i, (oid, name, kind, path, deps) in enumerate(rows):
                if oid != i or kind not in KINDS:
                    self._fail(f"object row {i} has id {oid!r}, kind {kind!r}")
                if not (isinstance(name, bytes) and isinstance(deps, bytes)):
                    self._fail(f"object row {i} holds a value of the wrong type")
                if not isinstance(path, bytes | None):
                    self._fail(f"object row {i} holds a value of the wrong type")
                names[oid] = decode_name(name)
            if len(set(names.values())) != len(names):
                self._fail("two objects have one name")
            if _objects_check(rows) != self.meta["objects"]:  # (last: those above say more)
                self._fail("the objects table does not match its check")
            self._objrows = rows
            self._objids = {n: i for i, n in names.items()}
            self._objnames = names
        return self._objnames

    def objects(self) -> list[str]:
        """Object names: ``vmlinux`` first, then modules in name order."""
        names = self._objects()
        return sorted(names.values(), key=lambda n: (n != names.get(0), encode_name(n)))

    def object_rows(self) -> list[tuple[str, str, str | None, list[str]]]:
        """(name, kind, path, dependencies) of every object, by id."""
        self._objects()
        return [
            (decode_name(n), kind, None if p is None else decode_name(p), _depends(d))
            for _i, n, kind, p, d in self._objrows
        ]

    def object_info(self, obj: str) -> dict | None:
        self._objects()
        oid = self._objids.get(obj)
        if oid is None:
            return None
        name, kind, path, depends = self.object_rows()[oid]
        return {"name": name, "kind": kind, "path": path, "depends": depends}

    def module_depends(self, obj: str) -> list[str]:
        self._objects()
        oid = self._objids.get(obj)
        if oid is None:
            raise KlpkitError(f"no object '{obj}' in the symbol database for {self.release}")
        return _depends(self._objrows[oid][4])

    # --- exports ------------------------------------------------------------------
    def _exports_of(self, key: bytes) -> dict[int, tuple[str, str | None, int | None]]:
        """obj id -> (type, namespace, crc) of ``key``'s exports, each row checked."""
        out = {}
        crc32 = zlib.crc32
        # (export_check() and decode_name(), inlined: a lookup of an exported name pays them)
        for oid, etype, ns, crc, chk in self._conn.execute(_EXPORTS_OF, (key,)):
            if chk != crc32(
                b"%s\0%d\0%s\0%s\0%d"
                % (key, oid, etype, b"-" if ns is None else b"=" + ns, -1 if crc is None else crc)
            ):
                raise ValueError(f"export row of {decode_name(key)!r} does not match its check")
            out[oid] = (
                etype.decode("utf-8", "surrogateescape"),
                None if ns is None else ns.decode("utf-8", "surrogateescape"),
                crc,
            )
        return out

    def export(self, name: str) -> Export4 | None:
        """(object, export type, namespace, crc) of an exported name, or None."""
        key = lookup_key(name)
        if key is None:
            return None
        objs = self._objects()
        try:
            found = self._exports_of(key)
            if not found:
                return None
            oid = min(found)
            return (objs[oid], *found[oid])
        except (sqlite3.DatabaseError, ValueError, TypeError, KeyError) as e:
            self._fail(e)

    def exporter(self, name: str) -> str | None:
        found = self.export(name)
        return found[0] if found else None

    def export_rows(self) -> list[tuple[str, str, str, str | None, int | None]]:
        """(object, name, type, namespace, crc) of every export, by object then name."""
        objs = self._objects()
        out = []
        try:
            for name, oid, etype, ns, crc, chk in self._conn.execute(_ALL_EXPORTS):
                if export_check(name, oid, etype, ns, crc) != chk:
                    raise ValueError("an export row does not match its check")
                out.append(
                    (
                        objs[oid],
                        decode_name(name),
                        decode_name(etype),
                        None if ns is None else decode_name(ns),
                        crc,
                    )
                )
        except (sqlite3.DatabaseError, ValueError, TypeError, KeyError) as e:
            self._fail(e)
        out.sort(key=lambda r: (encode_name(r[0]), encode_name(r[1])))
        return out

    # --- pages --------------------------------------------------------------------
    def _page(self, first: bytes, blob: bytes, chk: int) -> Page:
        if zlib.adler32(blob) != chk or not blob.startswith(first + b"\0"):
            raise ValueError(f"symbol page {decode_name(first)[:40]!r} does not match its check")
        return Page.decode(blob)

    def _all_pages(self) -> Iterator[Page]:
        try:
            for first, blob, chk in self._conn.execute(_ALL_PAGES):
                yield self._page(first, blob, chk)
        except (sqlite3.DatabaseError, ValueError, TypeError) as e:
            self._fail(e)

    def _rows(self, page: Page, lo: int = 0, hi: int | None = None) -> list:
        try:
            return page.rows(lo, hi)
        except ValueError as e:
            self._fail(f"bad symbol page: {e}")

    # --- lookups ------------------------------------------------------------------
    def lookup(
        self,
        name: str,
        object: str | None = None,
        *,
        include_init: bool = False,
    ) -> list[SymbolEntry]:
        """Every occurrence of ``name`` (in ``object`` only, when given), kernel order.

        Symbols that exist only in a module's init-time table (``core=False``) are
        left out unless ``include_init``; a name no kernel can have finds nothing.
        """
        objs = self._objnames or self._objects()
        try:  # (lookup_key(), inlined: the hot path)
            key = name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return []
        if not key or b"\0" in key:
            return []
        oid = None
        if object is not None:
            oid = self._objids.get(object)
            if oid is None:
                return []
        try:
            row = self._conn.execute(_PAGE_OF, (key,)).fetchone()
            if row is None:
                return []
            blob, chk = row
            # its check, and its shape: the last record's payload follows a NUL
            if zlib.adler32(blob) != chk or blob[-PAYLOAD - 1] != 0:
                raise ValueError(f"symbol page of {decode_name(key)[:40]!r} is damaged")
            # (object id, flags) of each record (parse_payload's layout, inlined: the
            # hot path needs two of its three fields)
            occ = [(int(p[:4], 16), int(p[10:], 16)) for p in payloads_of(blob, key)]
            if oid is not None:
                occ = [r for r in occ if r[0] == oid]
            if not occ:
                return []
            # only global/weak symbols are exported (a second statement only for them:
            # joining it into the first costs every lookup more than it saves)
            exports = self._exports_of(key) if any(f & 15 for _o, f in occ) else {}
            none = (None, None, None)
            rows = [(o, f, *(exports.get(o, none) if f & 15 else none)) for o, f in occ]
            return entries(name, rows, objs, include_init)
        except (sqlite3.DatabaseError, ValueError, TypeError, KeyError, IndexError) as e:
            self._fail(e)

    def all_symbols(self) -> dict[str, list[tuple[str, int]]]:
        """object -> [(name, flags)] in kernel order, for every object (one table scan;
        use this rather than :meth:`symbols_of` in a loop)."""
        objs = self._objects()
        rows: list[tuple[int, bytes, int]] = []
        for page in self._all_pages():
            rows.extend(((o << 32) | p, n, f) for n, o, p, f in self._rows(page))
        rows.sort(key=itemgetter(0))  # int keys: far cheaper than tuple compares
        out: dict[str, list[tuple[str, int]]] = {n: [] for n in self.objects()}
        try:
            for key, name, flags in rows:
                out[objs[key >> 32]].append((decode_name(name), flags))
        except KeyError as e:
            self._fail(e)
        return out

    def names_with_prefix(self, prefix: str, object: str) -> list[str]:
        """Distinct names of ``object``'s symbols that start with ``prefix``, sorted: the
        pages from the one holding ``prefix`` up to the first name past it. Used to find
        compiler clones of a function (``name.isra.0``, ``name.constprop.0``...)."""
        if not prefix:
            raise ValueError("empty prefix")
        self._objects()
        oid = self._objids.get(object)
        key = lookup_key(prefix)
        if oid is None or key is None:
            return []
        out: dict[str, None] = {}
        try:
            # the page holding `key` (its first name sorts at or before it), then on
            # while pages start with the prefix: a cursor, read page by page
            for first, blob, chk in self._conn.execute(_PAGES_FROM, (key,)):
                if first > key and not first.startswith(key):
                    break
                page = self._page(first, blob, chk)
                for n, o, _p, _f in self._rows(page, page.start(key)):
                    if not n.startswith(key):
                        break
                    if o == oid:
                        out[decode_name(n)] = None
        except (sqlite3.DatabaseError, ValueError, TypeError) as e:
            self._fail(e)
        return list(out)

    def symbols_of(self, object: str) -> list[tuple[str, int]]:
        """(name, flags) of every stored symbol of an object, in kernel order
        (scans every page: the key is the name)."""
        self._objects()
        oid = self._objids.get(object)
        if oid is None:
            return []
        rows = [
            (p, n, f) for page in self._all_pages() for n, o, p, f in self._rows(page) if o == oid
        ]
        rows.sort(key=itemgetter(0))
        return [(decode_name(n), f) for _p, n, f in rows]

    def records(self) -> list[bytes]:
        """Every stored symbol record (:mod:`klpkit.symbols.pages`), sorted: to rebuild
        the pages with more objects.  (Each names an object that is there.)"""
        known = {b"%04x" % i for i in self._objects()}
        out = []
        for page in self._all_pages():
            if not {p[:4] for p in page.payloads} <= known:
                self._fail("a symbol page names an object that is not there")
            out += page.records()
        return out

    # --- whole-file check ---------------------------------------------------------
    def verify(self) -> dict[str, int]:
        """Read and check everything: SQLite's own integrity check, every page (its
        check, its records, their order, their objects), every export row, and the
        counts in meta.  Returns what was checked; raises :class:`SymbolDBError`."""
        found = self._query("PRAGMA integrity_check")
        if [tuple(r) for r in found] != [("ok",)]:
            self._fail(f"SQLite integrity check: {str(found[0][0])[:80]}")
        nobj = len(self._objects())
        symbols = pages = 0
        last = b""
        for page in self._all_pages():
            rows = self._rows(page)
            pages += 1
            symbols += len(rows)
            if not rows or page.names[0] < last or page.names != sorted(page.names):
                self._fail(f"symbol page {pages} is out of order")
            last = page.names[-1]
            if any(o >= nobj or f >= MAX_FLAGS for _n, o, _p, f in rows):
                self._fail(f"symbol page {pages} names an object that is not there")
        exports = len(self.export_rows())
        counts = self._meta.counts
        if (symbols, exports) != (counts["symbols"], counts["exports"]):
            self._fail(
                f"{symbols} symbols and {exports} exports, meta counts "
                f"{counts['symbols']} and {counts['exports']}"
            )
        return {"objects": nobj, "pages": pages, "symbols": symbols, "exports": exports}

    def __eq__(self, other: object) -> bool:
        """Content equality: same release, build id, objects, symbols (in order, with
        flags), dependencies and exports; provenance paths are not compared."""
        if not isinstance(other, SymbolDB):
            return NotImplemented
        return dump(self) == dump(other)

    __hash__ = None  # type: ignore[assignment]


def _depends(raw: bytes) -> list[str]:
    return [d for d in decode_name(raw).split(",") if d]


def entries(name: str, rows: list, objs: dict[int, str], include_init: bool) -> list[SymbolEntry]:
    """SymbolEntry of each (oid, flags, export type, namespace, crc) row, sympos and
    counts per object; rows are grouped by object, in kernel order."""
    out: list[SymbolEntry] = []
    bind_names, type_names = BIND_NAMES, TYPE_NAMES
    i = 0
    n = len(rows)
    while i < n:
        oid = rows[i][0]
        j = i + 1
        while j < n and rows[j][0] == oid:
            j += 1
        group = rows[i:j]
        count = sum(1 for r in group if not r[1] & NONCORE)
        load_count = j - i
        obj = objs[oid]
        pos = 0
        for load_pos, (_o, flags, etype, ns, crc) in enumerate(group, 1):
            core = not flags & NONCORE
            if core:
                pos += 1
            elif not include_init:
                continue
            bind = bind_names.get(flags & 0xF, "unknown")
            exported = etype is not None and bind != "local"
            # positional: a lookup builds one per occurrence, keywords cost more
            out.append(
                SymbolEntry(
                    obj,
                    name,
                    bind,
                    type_names.get((flags >> 4) & 0xF, "unknown"),
                    exported,
                    (etype or None) if exported else None,
                    ns if exported else None,
                    pos if core else 0,
                    count,
                    crc if exported else None,
                    core,
                    load_pos,
                    load_count,
                )
            )
        i = j
    return out


_entries = entries  # (the name klpkit.convert.symbol_stream imports)


def dump(db: SymbolDB) -> dict:
    """A canonical, comparable view of a database's content (not its provenance)."""
    infos = {name: (kind, depends) for name, kind, _p, depends in db.object_rows()}
    objs = {obj: (*infos[obj], rows) for obj, rows in db.all_symbols().items()}
    exports = sorted(
        ((name, obj, etype, ns, crc) for obj, name, etype, ns, crc in db.export_rows()),
        key=lambda r: (encode_name(r[0]), encode_name(r[1])),
    )
    return {"release": db.release, "build_id": db.build_id, "objects": objs, "exports": exports}


# --- writing ----------------------------------------------------------------------
class _Content(NamedTuple):
    """What a database file holds, ready for SQLite."""

    objects: list[tuple[int, bytes, str, bytes | None, bytes]]
    records: list[bytes]  # sorted
    exports: list[tuple[bytes, int, bytes, bytes | None, int | None, int]]
    meta: dict[str, str]


def _export_row(
    name: str, oid: int, etype: str, ns: str | None, crc: int | None, where: str | None
) -> tuple[bytes, int, bytes, bytes | None, int | None, int]:
    n, t = encode_name(name, where), encode_name(etype, where)
    s = None if ns is None else encode_name(ns, where)
    return (n, oid, t, s, crc, export_check(n, oid, t, s, crc))


def _export_rows(
    exports: Iterable[tuple[Export, int | None]], where: str | None
) -> list[tuple[bytes, int, bytes, bytes | None, int | None, int]]:
    """:func:`_export_row` of each export whose object id is known, in one loop (a kernel
    has ~25,000 exports)."""
    exports = list(exports)
    out = []
    crc32 = zlib.crc32
    try:
        for (name, _obj, etype, ns, crc), oid in exports:
            if oid is None:
                continue
            n = name.encode("utf-8", "surrogateescape")
            t = etype.encode("utf-8", "surrogateescape")
            s = None if ns is None else ns.encode("utf-8", "surrogateescape")
            chk = crc32(
                b"%s\0%d\0%s\0%s\0%d"
                % (n, oid, t, b"-" if s is None else b"=" + s, -1 if crc is None else crc)
            )
            out.append((n, oid, t, s, crc, chk))
    except UnicodeEncodeError:  # (raises, naming the name)
        return [
            _export_row(e.name, i, e.export_type, e.namespace, e.crc, where)
            for e, i in exports
            if i is not None
        ]
    return out


def _content_of(symset: SymbolSet) -> _Content:
    ids: dict[str, int] = {}
    objrows = []
    for oid, obj in enumerate(symset.objects):
        if obj.name in ids:
            raise KlpkitError(
                f"two objects named '{obj.name}' ({obj.path} and "
                f"{symset.objects[ids[obj.name]].path})"
            )
        ids[obj.name] = oid
        objrows.append(_object_row(oid, obj))
    if len(objrows) > MAX_OBJECTS:
        raise KlpkitError(
            f"{len(objrows)} objects: the symbol database holds at most {MAX_OBJECTS}"
        )
    exports = []
    if symset.symvers is not None:  # (one row per name: no (name, object) twice)
        get = ids.get
        symvers = symset.symvers.values()
        exports = _export_rows(((e, get(e.object)) for e in symvers), symset.symvers_path)
        exports.sort(key=itemgetter(0, 1))
    else:
        for oid, obj in enumerate(symset.objects):
            exports += _export_rows(((e, oid) for e in obj.exports), obj.path)
        exports = list({r[:2]: r for r in sorted(exports, key=itemgetter(0, 1))}.values())
    meta = {
        "release": symset.release,
        "build_id": symset.build_id,
        "source": symset.source,
        "sources": json.dumps(symset.sources),
        "klpkit": __version__,
        "symvers": symset.symvers_path,
        "skipped": json.dumps(symset.skipped),
        "machine": str(symset.machine),
    }
    return _Content(objrows, symset.sorted_records(), exports, meta)


def _object_row(oid: int, obj: ObjectRecord) -> tuple[int, bytes, str, bytes | None, bytes]:
    where = obj.path
    return (
        oid,
        encode_name(obj.name, where),
        obj.kind,
        None if obj.path is None else encode_name(obj.path, where),
        encode_name(",".join(obj.depends), where),
    )


@gc_paused
def write_db(symset: SymbolSet, path: str | os.PathLike) -> Path:
    """Store ``symset`` atomically at ``path`` (temp file + rename).

    Refuses to replace a database of another kernel release, or anything that is not
    a file."""
    path = Path(path)
    if path.is_dir():
        raise SymbolDBError("is a directory, expected a symbol database file", path=path)
    if path.exists() and not path.is_file():  # a device, a FIFO: never replaced
        raise SymbolDBError("not a regular file, expected a symbol database", path=path)
    if path.exists() or path.is_symlink():
        try:
            with SymbolDB.open(path) as old:
                old_release: str | None = old.release
        except SymbolDBError:
            old_release = None  # unreadable: replace it
        if old_release is not None and old_release != symset.release:
            raise SymbolDBError(
                f"holds symbols of kernel {old_release}; refusing to mix in "
                f"{symset.release} (choose another --db or delete it)",
                path=path,
            )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the directory: {e.strerror}", path=path.parent) from None
    _write_file(_content_of(symset), path)
    return path


def add_objects(db: SymbolDB, new: list[ObjectRecord], dest: str | os.PathLike) -> Path:
    """``db`` with the objects ``new`` (their records made for ids after ``db``'s last)
    added, written atomically to ``dest`` (which may be ``db``'s own file).  The
    symbol pages are rewritten whole: new names fall between existing ones."""
    old = db.object_rows()
    objrows = list(db._objrows)
    records = db.records()
    exports = [
        _export_row(name, db._objids[obj], etype, ns, crc, None)
        for obj, name, etype, ns, crc in db.export_rows()
    ]
    for oid, rec in enumerate(new, len(old)):
        objrows.append(_object_row(oid, rec))
        records += rec.records
        exports.extend(
            _export_row(e.name, oid, e.export_type, e.namespace, e.crc, rec.path)
            for e in rec.exports
        )
    if len(objrows) > MAX_OBJECTS:
        raise KlpkitError(
            f"{len(objrows)} objects: the symbol database holds at most {MAX_OBJECTS}"
        )
    records.sort()
    meta = {k: v for k, v in db.meta.items() if k in META_KEYS}
    meta["sources"] = json.dumps(db.sources + [os.path.abspath(r.path or r.name) for r in new])
    meta["klpkit"] = __version__
    content = _Content(
        objrows,
        records,
        list({r[:2]: r for r in sorted(exports, key=itemgetter(0, 1))}.values()),
        meta,
    )
    target = Path(dest)
    _write_file(content, target)
    return target


def _write_file(content: _Content, path: Path) -> None:
    """SQLite file at a temp name next to ``path`` (named for this process, so a later
    run removes it if this one is killed), then renamed over it."""
    remove_stale_temps(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=directory)
    except FileNotFoundError:
        raise InputError("output directory does not exist", path=directory) from None
    except OSError as e:
        raise InputError(f"cannot create output: {e.strerror}", path=path) from None
    os.close(fd)
    try:
        _write_sqlite(content, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, sqlite3.Error):
            raise SymbolDBError(f"cannot write symbol database ({e})", path=path) from None
        if isinstance(e, OSError):
            raise InputError(f"cannot write: {e.strerror}", path=path) from None
        raise


def _write_sqlite(content: _Content, tmp: str) -> None:
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; "
            "PRAGMA page_size=16384; PRAGMA cache_size=-262144; "
            "PRAGMA locking_mode=EXCLUSIVE; "
            f"PRAGMA user_version={USER_VERSION};"
        )
        conn.executescript(SCHEMA_SQL)
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO objects VALUES (?,?,?,?,?)", content.objects)
        pages = make_pages(content.records)
        conn.executemany(
            "INSERT INTO symbol_pages VALUES (?,?,?)",
            [(first, blob, zlib.adler32(blob)) for first, blob in pages],
        )
        conn.executemany("INSERT INTO exports VALUES (?,?,?,?,?,?)", content.exports)
        skipped = json.loads(content.meta.get("skipped", "[]"))
        meta = dict(content.meta)
        meta |= {
            "format": FORMAT,
            "schema": str(SCHEMA),
            "counts": json.dumps(
                {
                    "objects": len(content.objects),
                    "symbols": len(content.records),
                    "exports": len(content.exports),
                    "skipped": len(skipped),
                }
            ),
            "objects": _objects_check(content.objects),
        }
        meta["check"] = _meta_check(meta)
        conn.executemany(
            "INSERT INTO meta VALUES (?,?)",
            sorted((k, encode_name(v)) for k, v in meta.items()),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()

"""The symbol database: one SQLite file per kernel release, standard library only.

Layout (all ``WITHOUT ROWID``: the primary key *is* the B-tree, so a lookup by
name is one index descent and the file stays small):

``meta(key, value)``
    ``format`` (= :data:`FORMAT`), ``schema``, ``release``, ``build_id``,
    ``source`` (what it was built from), ``sources`` (JSON list of paths),
    ``klpkit`` (version), ``symvers``, ``counts``.
``objects(id, name, kind, path, depends)``
    ``id`` 0 is ``vmlinux``; ``depends`` is a comma-separated list.
``symbol_pages(first, records)``
    every symbol occurrence (name, obj, pos, flags) as a record sorted by (name,
    obj, pos), cut into pages of about 32 records, one row per page; a page never
    splits the records of one name, so its ``first`` name is its key and a lookup
    reads exactly one page (format: :mod:`klpkit.symbols.pages`). ``pos`` orders the
    occurrences of an object in kernel order (kallsyms index for vmlinux,
    ``.symtab`` index for modules); ``flags`` = bind | type << 4 | NONCORE (see
    :mod:`klpkit.symbols.rules`).
    Why pages rather than one SQL row per symbol: SQLite's cost is per row and per
    bound value, and a kernel has ~700,000 symbols; ~18,000 page rows make a full
    build several times cheaper to write (issue 3: <= 2 s) while a lookup stays one
    B-tree descent plus a bisection in a small page.
``exports(name, obj, type, namespace, crc)``

sympos and counts are derived at lookup time from the order of the rows, so the
database never stores a number that could disagree with its own rows.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
from collections.abc import Iterable
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple

from klpkit.errors import KlpkitError
from klpkit.symbols.pages import Page, decode_name, encode_name, payloads_of

FORMAT = "klpkit-symbols"
SCHEMA = 3  # 3: vmlinux binding and type from the kallsyms type letter (image and -dbg agree)
MMAP_SIZE = 1 << 30  # map the whole file (a full kernel's is ~30 MiB)
USER_VERSION = 0x6B6C7031  # "klp1": marks our files before any table is read
NONCORE = 0x100  # flag: not in the module's kallsyms after init (init section, .modinfo, ABS)

BIND_NAMES = {0: "local", 1: "global", 2: "weak", 10: "unique", 15: "unknown"}
BIND_CODES = {v: k for k, v in BIND_NAMES.items()}
TYPE_NAMES = {
    0: "notype",
    1: "object",
    2: "func",
    3: "section",
    4: "file",
    5: "common",
    6: "tls",
    10: "ifunc",
    15: "unknown",
}
TYPE_CODES = {v: k for k, v in TYPE_NAMES.items()}

SCHEMA_SQL = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE objects(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
                     path TEXT, depends TEXT NOT NULL DEFAULT '');
CREATE TABLE symbol_pages(first BLOB PRIMARY KEY, records BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE exports(name TEXT NOT NULL, obj INTEGER NOT NULL, type TEXT NOT NULL,
                     namespace TEXT, crc INTEGER, PRIMARY KEY(name, obj)) WITHOUT ROWID;
"""


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
    count: int  # same-named symbols the object has (in kallsyms after init)
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


def _check_sqlite_header(path: Path) -> None:
    """Refuse a file that is not a complete SQLite database, in O(1)."""
    try:
        with open(path, "rb") as f:
            head = f.read(100)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise SymbolDBError(
            "no symbol database here; build one with 'klpkit symbols build'", path=path
        ) from None
    except IsADirectoryError:
        raise SymbolDBError("is a directory, expected a symbol database file", path=path) from None
    except OSError as e:
        raise SymbolDBError(f"cannot read symbol database: {e.strerror}", path=path) from None
    if len(head) < 100 or not head.startswith(b"SQLite format 3\0"):
        raise SymbolDBError("not a klpkit symbol database (no SQLite header)", path=path)
    (page_size,) = struct.unpack_from(">H", head, 16)
    page_size = 65536 if page_size == 1 else page_size
    (npages,) = struct.unpack_from(">I", head, 28)
    (user_version,) = struct.unpack_from(">I", head, 60)
    if user_version != USER_VERSION:
        raise SymbolDBError("not a klpkit symbol database (foreign SQLite file)", path=path)
    if npages and size < npages * page_size:
        raise SymbolDBError(
            f"symbol database is truncated ({size} bytes, header says "
            f"{npages * page_size}); rebuild it",
            path=path,
        )


class SymbolDB:
    """Read access to one kernel release's symbols.  Open with :meth:`open`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, meta: dict[str, str]):
        self._conn = conn
        self.path = path
        self.meta = meta
        self._objnames: dict[int, str] | None = None
        self._objids: dict[str, int] = {}

    # --- opening ----------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, release: str | None = None) -> SymbolDB:
        """Open a database; with ``release`` refuse one built for another kernel."""
        path = Path(path)
        _check_sqlite_header(path)
        try:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False
            )
            # memory-mapped reads: a lookup touches one leaf page, and a pread per
            # lookup costs more than the rest of it
            conn.execute(f"PRAGMA mmap_size={MMAP_SIZE}")
            meta = dict(conn.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as e:
            raise SymbolDBError(f"corrupt symbol database ({e}); rebuild it", path=path) from None
        if meta.get("format") != FORMAT:
            conn.close()
            raise SymbolDBError("not a klpkit symbol database (no format mark)", path=path)
        if meta.get("schema") != str(SCHEMA):
            conn.close()
            raise SymbolDBError(
                f"symbol database schema {meta.get('schema')} is not "
                f"{SCHEMA} (built by another klpkit version); rebuild it with "
                f"'klpkit symbols build'",
                path=path,
            )
        if release is not None and meta.get("release") != release:
            conn.close()
            raise SymbolDBError(
                f"symbol database is for kernel {meta.get('release')}, not {release}", path=path
            )
        return cls(conn, path, meta)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _query(self, sql: str, args: Iterable = ()):
        try:
            return self._conn.execute(sql, tuple(args)).fetchall()
        except sqlite3.DatabaseError as e:
            raise SymbolDBError(
                f"corrupt symbol database ({e}); rebuild it", path=self.path
            ) from None

    # --- properties ---------------------------------------------------------------
    @property
    def release(self) -> str:
        return self.meta["release"]

    @property
    def machine(self) -> int | None:
        """The kernel's ELF e_machine, when the database was built from ELF objects."""
        return int(self.meta.get("machine") or 0) or None

    @property
    def build_id(self) -> str | None:
        return self.meta.get("build_id") or None

    @property
    def sources(self) -> list[str]:
        return json.loads(self.meta.get("sources", "[]"))

    def _objects(self) -> dict[int, str]:
        if self._objnames is None:
            self._objnames = dict(self._query("SELECT id, name FROM objects"))
            self._objids = {n: i for i, n in self._objnames.items()}
        return self._objnames

    def objects(self) -> list[str]:
        """Object names: ``vmlinux`` first, then modules in name order."""
        return [n for _i, n in self._query("SELECT id, name FROM objects ORDER BY id != 0, name")]

    def object_info(self, obj: str) -> dict | None:
        rows = self._query("SELECT id, kind, path, depends FROM objects WHERE name = ?", (obj,))
        if not rows:
            return None
        oid, kind, path, depends = rows[0]
        return {
            "name": obj,
            "kind": kind,
            "path": path,
            "depends": [d for d in depends.split(",") if d],
        }

    def module_depends(self, obj: str) -> list[str]:
        rows = self._query("SELECT depends FROM objects WHERE name = ?", (obj,))
        if not rows:
            raise KlpkitError(f"no object '{obj}' in the symbol database for {self.release}")
        return [d for d in rows[0][0].split(",") if d]

    def exporter(self, name: str) -> str | None:
        rows = self._query(
            "SELECT o.name FROM exports e JOIN objects o ON o.id = e.obj "
            "WHERE e.name = ? ORDER BY e.obj LIMIT 1",
            (name,),
        )
        return rows[0][0] if rows else None

    def export(self, name: str) -> tuple[str, str, str | None, int | None] | None:
        """(object, export type, namespace, crc) of an exported name, or None."""
        rows = self._query(
            "SELECT o.name, e.type, e.namespace, e.crc FROM exports e "
            "JOIN objects o ON o.id = e.obj WHERE e.name = ? ORDER BY e.obj "
            "LIMIT 1",
            (name,),
        )
        return tuple(rows[0]) if rows else None

    # --- lookups ------------------------------------------------------------------
    # the page a name's records are in: the last that starts at or before the name
    _PAGE_OF = "SELECT records FROM symbol_pages WHERE first <= ? ORDER BY first DESC LIMIT 1"
    _EXPORTS_OF = "SELECT obj, type, namespace, crc FROM exports WHERE name = ?"

    def _decode(self, blob) -> Page:
        try:
            return Page.decode(blob)
        except (ValueError, TypeError) as e:
            self._corrupt(e)

    def _rows(self, page: Page, lo: int = 0, hi: int | None = None):
        try:
            return page.rows(lo, hi)
        except ValueError as e:
            self._corrupt(e)

    def _corrupt(self, e: Exception):
        if isinstance(e, sqlite3.DatabaseError):
            raise SymbolDBError(
                f"corrupt symbol database ({e}); rebuild it", path=self.path
            ) from None
        raise SymbolDBError(
            f"corrupt symbol database (bad symbol page: {e}); rebuild it", path=self.path
        ) from None

    def _all_pages(self):
        for (blob,) in self._query("SELECT records FROM symbol_pages ORDER BY first"):
            yield self._decode(blob)

    def lookup(
        self,
        name: str,
        object: str | None = None,
        *,
        include_init: bool = False,
    ) -> list[SymbolEntry]:
        """Every occurrence of ``name`` (in ``object`` only, when given), kernel order.

        Symbols that exist only in a module's init-time table (``core=False``) are
        left out unless ``include_init``; they still count in ``load_sympos``.
        """
        objs = self._objnames or self._objects()
        oid = None
        if object is not None:
            oid = self._objids.get(object)
            if oid is None:
                return []
        key = encode_name(name)
        conn = self._conn
        try:
            page = conn.execute(self._PAGE_OF, (key,)).fetchone()
            # (object id, flags) of each record (parse_payload's layout, inlined: the
            # hot path needs two of its three fields)
            occ = (
                [(int(p[:4], 16), int(p[10:], 16)) for p in payloads_of(page[0], key)]
                if page
                else []
            )
            if oid is not None:
                occ = [r for r in occ if r[0] == oid]
            if not occ:
                return []
            # only global/weak symbols are exported (a second statement only for them:
            # joining it into the first costs every lookup more than it saves)
            exports = (
                {o: rest for o, *rest in conn.execute(self._EXPORTS_OF, (name,))}
                if any(f & 15 for _o, f in occ)
                else {}
            )
        except (sqlite3.DatabaseError, ValueError, TypeError) as e:
            self._corrupt(e)
        none = (None, None, None)
        rows = [(o, f, *(exports.get(o, none) if f & 15 else none)) for o, f in occ]
        return _entries(name, rows, objs, include_init)

    def all_symbols(self) -> dict[str, list[tuple[str, int]]]:
        """object -> [(name, flags)] in kernel order, for every object (one table scan;
        use this rather than :meth:`symbols_of` in a loop)."""
        objs = self._objects()
        rows = []
        for page in self._all_pages():
            rows.extend(((o << 32) | p, decode_name(n), f) for n, o, p, f in self._rows(page))
        rows.sort(key=itemgetter(0))  # int keys: far cheaper than tuple compares
        out: dict[str, list[tuple[str, int]]] = {n: [] for n in self.objects()}
        for key, name, flags in rows:
            out[objs[key >> 32]].append((name, flags))
        return out

    def names_with_prefix(self, prefix: str, object: str) -> list[str]:
        """Distinct names of ``object``'s symbols that start with ``prefix``, sorted: the
        pages from the one holding ``prefix`` up to the first name past it. Used to find
        compiler clones of a function (``name.isra.0``, ``name.constprop.0``...)."""
        if not prefix:
            raise ValueError("empty prefix")
        self._objects()
        oid = self._objids.get(object)
        if oid is None:
            return []
        key = encode_name(prefix)
        out: dict[str, None] = {}
        try:
            # the page holding `key` (its first name sorts at or before it), then on
            # while pages start with the prefix: a cursor, read page by page
            pages = self._conn.execute(
                "SELECT first, records FROM symbol_pages WHERE first >= COALESCE("
                "(SELECT first FROM symbol_pages WHERE first <= ?1 ORDER BY first DESC "
                "LIMIT 1), ?1) ORDER BY first",
                (key,),
            )
            for first, blob in pages:
                if first > key and not first.startswith(key):
                    break
                page = self._decode(blob)
                for n, o, _p, _f in self._rows(page, page.start(key)):
                    if not n.startswith(key):
                        break
                    if o == oid:
                        out[decode_name(n)] = None
        except sqlite3.DatabaseError as e:
            self._corrupt(e)
        return list(out)

    def symbols_of(self, object: str):
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
        the pages with more objects."""
        return [r for page in self._all_pages() for r in page.records()]

    def __eq__(self, other) -> bool:
        """Content equality: same release, build id, objects, symbols (in order, with
        flags), dependencies and exports; provenance paths are not compared."""
        if not isinstance(other, SymbolDB):
            return NotImplemented
        from klpkit.symbols.symbols_list import dump

        return dump(self) == dump(other)

    __hash__ = None

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) of modules left out by a --skip-bad build."""
        return [tuple(x) for x in json.loads(self.meta.get("skipped", "[]"))]

    def counts(self) -> dict[str, int]:
        return json.loads(self.meta.get("counts", "{}"))


def _entries(name, rows, objs, include_init) -> list[SymbolEntry]:
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

"""A klp-convert ``Symbols.list`` read for the names one module needs.

The drop-in ``klp-convert Symbols.list IN.ko OUT.ko`` runs once per livepatch module in
a Kbuild build, on a list of the whole kernel (~730,000 lines, ~19 MB for Debian's 6.1).
Importing it into a symbol database on every run cost ~2 s and ~250 MiB; a module needs
a few dozen names.  So the file is streamed once, in blocks, and only the lines whose
name the module uses are kept (C-level splitting and set membership: no per-line
Python work), with the ``*object`` headers that say whose lines they are.

:class:`StreamedSymbols` answers what :class:`klpkit.convert.plan.Classifier` asks of a
:class:`klpkit.symbols.SymbolDB` -- ``lookup(name, object=None)``, ``module_depends``,
``release``, ``machine`` -- with the same :class:`~klpkit.symbols.db.SymbolEntry`
values an import of the file would give (the klpkit section's bind/type codes and
export records when the file has one; names only, ``__ksymtab_`` lines marking
exports, for a file made by the kernel Makefile's ``nm``).  A name nobody asked for is
found by streaming the file again.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import compress, count
from operator import itemgetter, methodcaller
from typing import BinaryIO

from klpkit.errors import InputError, KlpkitError
from klpkit.numbers import parse_decimal, parse_hex
from klpkit.symbols.db import NONCORE, SymbolEntry, _entries
from klpkit.symbols.protocol import SymbolLookup
from klpkit.symbols.symbols_list import HEADER, META_OBJECT, _decode_codes, is_symbols_list

BLOCK = 1 << 20  # bytes read at a time: ~40,000 lines
LINE_MAX = 16 * BLOCK  # no line of a symbol list (a name, a klpkit record) is this long
_FEW = 8  # names found in a block, located one by one up to this
_FEW_EXPORTS = 32  # export records searched name by name up to this
KSYMTAB = b"__ksymtab_"
_META_HEADER = b"*" + META_OBJECT.encode()
_SPLIT_EXPORT = methodcaller("split", b"\t")
_NAME = itemgetter(2)


@dataclass
class _Scan:
    """What one pass over the file found."""

    headers: list[tuple[int, bytes]] = field(default_factory=list)  # (line, "*object")
    hits: dict[bytes, list[int]] = field(default_factory=dict)  # name -> lines
    meta: bytes | None = None  # the klpkit section's text, when the file has one
    meta_line: int | None = None  # the line of its header
    lines: int = 0  # lines in the file (without a final empty one)


def _blocks(f: BinaryIO, path: str) -> Iterator[bytes]:
    """The file in blocks of whole lines (the last one may lack its newline); a line
    longer than :data:`LINE_MAX` (a file of NULs, not a symbol list) is an error rather
    than a buffer without bound."""
    rest = b""
    while True:
        block = f.read(BLOCK)
        if not block:
            if rest:
                yield rest
            return
        cut = block.rfind(b"\n") + 1
        if not cut:
            rest += block
            if len(rest) > LINE_MAX:
                raise InputError(
                    f"a line longer than {LINE_MAX >> 20} MiB: not a symbol list", path=path
                )
            continue
        yield rest + block[:cut]
        rest = block[cut:]


def _record_line(meta: bytes, key: bytes) -> bytes | None:
    """The line that ``key`` (``\\n`` + its start) begins, without the newline."""
    p = meta.find(key)
    if p < 0:
        return None
    end = meta.find(b"\n", p + 1)
    return meta[p + 1 : end if end >= 0 else len(meta)]


def _headers(chunk: bytes) -> list[tuple[int, bytes]]:
    """(offset, line) of the lines of ``chunk`` that start with ``*`` (a rare byte:
    searched for itself, then checked to start a line)."""
    out = []
    p = chunk.find(b"*")
    while p >= 0:
        if p == 0 or chunk[p - 1] == 10:  # b"\n"
            end = chunk.find(b"\n", p)
            out.append((p, chunk[p : end if end >= 0 else len(chunk)]))
        p = chunk.find(b"*", p + 1)
    return out


def _hits(lines: list[bytes], base: int, wanted: set[bytes], out: dict[bytes, list[int]]) -> None:
    """Record the line numbers of the ``wanted`` names among ``lines`` (line ``base``
    first).  The set intersection finds which names occur at C speed; each is then
    located with ``list.index`` (one C-level pass per name), or, when many names occur,
    with one membership test per line."""
    found = wanted.intersection(lines)
    if not found:
        return
    if len(found) > _FEW:
        for i in compress(count(base), map(found.__contains__, lines)):
            out.setdefault(lines[i - base], []).append(i)
        return
    for name in found:
        where = out.setdefault(name, [])
        i = -1
        try:
            while True:
                i = lines.index(name, i + 1)
                where.append(base + i)
        except ValueError:
            pass


def _scan(path: str, wanted: set[bytes]) -> _Scan:
    """One pass: headers, the lines of ``wanted`` names, the klpkit section."""
    scan = _Scan()
    base = 0
    meta_parts: list[bytes] = []
    with open(path, "rb") as f:
        for chunk in _blocks(f, path):
            if meta_parts:
                meta_parts.append(chunk)
                continue
            heads = _headers(chunk)
            at = next((p for p, name in heads if name == _META_HEADER), None)
            if at is not None:
                meta_parts.append(chunk[at:])
                chunk = chunk[:at]
                heads = [h for h in heads if h[0] < at]
            lines = chunk.split(b"\n")
            if chunk.endswith(b"\n"):
                lines.pop()
            i = -1
            for _p, name in heads:  # their line numbers: one pass over `lines`
                i = lines.index(name, i + 1)
                scan.headers.append((base + i, name))
            _hits(lines, base, wanted, scan.hits)
            base += len(lines)
            if at is not None:
                scan.meta_line = base
    scan.lines = base
    if meta_parts:
        meta = scan.meta = b"".join(meta_parts)
        scan.lines = base + meta.count(b"\n") + (0 if meta.endswith(b"\n") else 1)
    return scan


@dataclass
class _Object:
    """One ``*object`` of the file: where its lines are, what the klpkit section says."""

    index: int  # object id, file order (vmlinux first)
    name: str
    segments: list[tuple[int, int]]  # (first line, line count) of each of its runs
    kind: str = "module"
    path: str | None = None
    depends: list[str] = field(default_factory=list)
    nrows: int | None = None  # klpkit section: symbols that count (the rest: added
    codes: bytes = b""  # __ksymtab_ lines); bind/type codes in order
    _flags: bytes | None = None  # the codes without their '!'
    _noncore: set[int] = field(default_factory=set)  # indexes of the '!' codes

    def position(self, line: int) -> int | None:
        """The 0-based index among the object's symbols of the file's ``line``."""
        before = 0
        for first, n in self.segments:
            if first <= line < first + n:
                return before + line - first
            before += n
        return None

    def flags(self, pos: int) -> int:
        """bind | type << 4 | NONCORE of the object's ``pos``-th symbol (0xFF: unknown).

        Codes are two characters, after a ``!`` for a symbol outside the module's core
        kallsyms (init sections): the ``!`` are taken out once (C-level), their codes'
        indexes remembered, and the code read at ``2 * pos``."""
        if self.nrows is None:
            return 0xFF
        if self._flags is None:
            self._flags, self._noncore = self.codes.replace(b"!", b""), set()
            q = self.codes.find(b"!")
            while q >= 0:
                self._noncore.add((q - len(self._noncore)) // 2)
                q = self.codes.find(b"!", q + 1)
        code = self._flags[2 * pos : 2 * pos + 2].decode()
        flags = _decode_codes(code)[0]
        return flags | NONCORE if pos in self._noncore else flags


class StreamedSymbols:
    """The symbols a module needs from a Symbols.list, with a symbol database's answers
    (see the module doc).  ``names``: the names to look up; ``release``: the module's
    kernel release (vermagic), checked against the file's.

    Objects are made when a name the module needs is in them: the klpkit record of an
    object no needed name is in is checked for presence only."""

    machine = None  # a Symbols.list does not say the kernel's architecture

    def __init__(self, path, names, release: str | None = None):
        self.path = os.fspath(path)
        self._wanted: set[bytes] = set()
        self._hits: dict[bytes, list[int]] = {}
        self._exports: dict[str, dict[str, tuple]] = {}
        self._segments: dict[str, list[tuple[int, int]]] = {}  # object -> its runs
        self._by_line: list[tuple[int, str]] = []  # (header line, object)
        self._records: dict[str, tuple[int, int]] | None = None  # object -> its record's span
        self._objects: dict[str, _Object] = {}
        self._meta: bytes | None = None
        self._load(names, release)

    # -- reading ----------------------------------------------------------------------
    def _want(self, names: Iterable[str]) -> set[bytes]:
        out: set[bytes] = set()
        for n in names:
            raw = n.encode("utf-8", "surrogateescape")
            out.update((raw, KSYMTAB + raw))
        return out - self._wanted

    def _load(self, names, release: str | None) -> None:
        self._check_header()
        wanted = self._want(names)
        scan = _scan(self.path, wanted)
        self._wanted |= wanted
        self._hits.update(scan.hits)
        self._layout(scan)
        self.meta = {"release": "", "source": "symbols-list(nm)"}
        if scan.meta is not None:
            self._meta = scan.meta
            self._read_meta(scan.meta)
            self._read_exports(wanted)
        self._check_release(release)
        for lines in scan.hits.values():  # the objects needed: made (and checked) now
            for line in lines:
                self._object_at(line)

    def _check_header(self) -> None:
        with open(self.path, "rb") as f:
            first = f.readline(len(HEADER) + 2)  # a file without newlines is not read whole
        if not first.startswith(HEADER.encode()):
            raise InputError(
                f"Symbol list is in unknown format (first line is not '{HEADER}')", path=self.path
            )

    def _layout(self, scan: _Scan) -> None:
        """Each object's runs of lines; object ids are the order of first appearance."""
        first = min(
            [line for line, _n in scan.headers[:1]]
            + ([scan.meta_line] if scan.meta_line is not None else []),
            default=None,
        )
        if scan.lines > 1 and (first is None or first > 1):
            raise InputError(
                "line 2: symbol before any '*object' line (File format error)", path=self.path
            )
        end = scan.meta_line if scan.meta_line is not None else scan.lines
        bounds = [line for line, _n in scan.headers[1:]] + [end]
        for (line, raw), nxt in zip(scan.headers, bounds, strict=True):
            name = raw[1:].decode("utf-8", "surrogateescape")
            self._segments.setdefault(name, []).append((line + 1, nxt - line - 1))
            self._by_line.append((line, name))
        self._ids = {name: i for i, name in enumerate(self._segments)}

    def _read_meta(self, meta: bytes) -> None:
        """The klpkit section: release, build id, source, and where each object's record
        is (parsed when the object is needed).  Records are found by C-level searches
        for their line starts: the section has ~30,000 lines."""
        self.meta["source"] = "symbols-list"
        for kind in (b"release", b"build_id", b"source"):
            rec = _record_line(meta, b"\n" + kind + b"\t")
            if rec is not None:
                self._meta_value(kind, rec[len(kind) + 1 :])
        self._records = {}
        key = b"\nobject\t"
        p = meta.find(key)
        while p >= 0:
            start = p + 1
            end = meta.find(b"\n", start)
            end = len(meta) if end < 0 else end
            name_end = meta.find(b"\t", start + 7, end)
            self._records[meta[start + 7 : name_end].decode("utf-8", "surrogateescape")] = (
                start,
                end,
            )
            p = meta.find(key, end)
        missing = next((n for n in self._segments if n not in self._records), None)
        if missing is not None:
            raise InputError(f"object '{missing}' has no klpkit record", path=self.path)

    def _meta_value(self, kind: bytes, rest: bytes) -> None:
        try:
            value = rest.decode("ascii")
        except UnicodeDecodeError:
            raise InputError(
                f"klpkit {kind.decode()} record {rest[:60]!r} is not ASCII", path=self.path
            ) from None
        if kind == b"release":
            self.meta["release"] = value
        elif kind == b"build_id":
            self.meta["build_id"] = value
        else:
            self.meta["source"] = f"symbols-list({value})" if value else "symbols-list"

    def _read_exports(self, wanted: set[bytes]) -> None:
        """The export records of the wanted names: found by name (a C-level search of the
        section per name) for a few names, else by filtering all ~25,000 records."""
        names = [w for w in wanted if not w.startswith(KSYMTAB)]
        meta = self._meta
        if meta is None:
            return
        if len(names) <= _FEW_EXPORTS:
            recs = []
            for name in names:
                key = b"\t" + name  # its last byte is rarer than a tab: faster
                p = meta.find(key)
                while p >= 0:
                    if meta[p + len(key) : p + len(key) + 1] == b"\t":
                        start = meta.rfind(b"\n", 0, p) + 1
                        end = meta.find(b"\n", p)
                        recs.append(meta[start : end if end >= 0 else len(meta)])
                    p = meta.find(key, p + 1)
        else:
            recs = [r for r in meta.split(b"\n") if r.startswith(b"export\t")]
        fields = [f for f in map(_SPLIT_EXPORT, recs) if f[0] == b"export" and len(f) > 2]
        for f in compress(fields, map(set(names).__contains__, map(_NAME, fields))):
            try:
                _kind, obj, name, etype, ns, crc = f
                value = (etype.decode(), ns.decode() or None, self._crc(crc))
            except ValueError:
                raise InputError(
                    f"klpkit export record {b'/'.join(f)[:60]!r} is malformed", path=self.path
                ) from None
            self._exports.setdefault(name.decode("utf-8", "surrogateescape"), {})[obj.decode()] = (
                value
            )

    def _crc(self, text: bytes) -> int | None:
        """An export's CRC: 32-bit hex (``__crc_<sym>``; empty without CONFIG_MODVERSIONS)."""
        if not text:
            return None
        crc = text.decode("utf-8", "surrogateescape")
        return parse_hex(crc, "export CRC", where=self.path, limit=0xFFFFFFFF)

    def _check_release(self, release: str | None) -> None:
        mine = self.meta["release"]
        if release and mine and release != mine:
            raise InputError(f"Symbols.list is for kernel {mine}, not {release}", path=self.path)
        self.meta["release"] = mine or release or ""
        if not self.meta["release"]:
            raise InputError(
                "Symbols.list does not say which kernel it is for; pass --release", path=self.path
            )

    # -- objects ----------------------------------------------------------------------
    def _object(self, name: str) -> _Object | None:
        """The object ``name``, made on first use from its runs and klpkit record."""
        obj = self._objects.get(name)
        if obj is not None or name not in self._segments:
            return obj
        obj = _Object(
            self._ids[name],
            name,
            self._segments[name],
            "vmlinux" if name == "vmlinux" else "module",
        )
        if self._records is not None and self._meta is not None:
            start, end = self._records[name]
            self._parse_record(obj, self._meta[start:end])
        self._objects[name] = obj
        return obj

    def _parse_record(self, obj: _Object, rec: bytes) -> None:
        try:
            _kind, _name, okind, opath, depends, nrows, codes = rec.split(b"\t")
            obj.kind, obj.path = okind.decode(), opath.decode() or None
            obj.depends = [d for d in depends.decode().split(",") if d]
            obj.nrows = parse_decimal(
                nrows.decode("utf-8", "surrogateescape"), "symbol count", where=self.path
            )
            obj.codes = codes
        except ValueError:
            raise InputError(
                f"klpkit record of '*{META_OBJECT}' is malformed: {rec[:60]!r}", path=self.path
            ) from None
        lines = sum(n for _f, n in obj.segments)
        if len(codes) - codes.count(b"!") != 2 * obj.nrows or lines < obj.nrows:
            raise InputError(
                f"object '{obj.name}': {lines} names but {obj.nrows} recorded", path=self.path
            )

    def _object_at(self, line: int) -> _Object | None:
        i = bisect_right(self._by_line, (line, "\U0010ffff")) - 1
        return self._object(self._by_line[i][1]) if i >= 0 else None

    # -- the SymbolDB answers ---------------------------------------------------------
    @property
    def release(self) -> str:
        return self.meta["release"]

    @property
    def build_id(self) -> str | None:
        return self.meta.get("build_id") or None

    def close(self) -> None:
        """Nothing to release (the file is not kept open)."""

    def objects(self) -> list[str]:
        return list(self._segments)

    def object_info(self, obj: str) -> dict | None:
        o = self._object(obj)
        if o is None:
            return None
        return {"name": obj, "kind": o.kind, "path": o.path, "depends": list(o.depends)}

    def module_depends(self, obj: str) -> list[str]:
        o = self._object(obj)
        if o is None:
            raise KlpkitError(f"no object '{obj}' in the symbol list for {self.release}")
        return list(o.depends)

    def _occurrences(self, raw: bytes) -> list[tuple[_Object, int]]:
        """(object, 0-based position) of each line holding ``raw``, file order."""
        out = []
        for line in self._hits.get(raw, ()):
            obj = self._object_at(line)
            if obj is None:
                continue
            pos = obj.position(line)
            if pos is not None and (obj.nrows is None or pos < obj.nrows):
                out.append((obj, pos))
        return out

    def _nm_exports(self, raw: bytes) -> dict[int, tuple]:
        """nm format: ``__ksymtab_<name>`` in the object that has ``<name>`` exports it."""
        have = {o.index for o, _p in self._occurrences(raw)}
        return {
            o.index: ("", None, None)
            for o, _p in self._occurrences(KSYMTAB + raw)
            if o.index in have
        }

    def lookup(
        self,
        name: str,
        object: str | None = None,
        *,
        include_init: bool = False,
    ) -> list[SymbolEntry]:
        """Every occurrence of ``name`` (in ``object`` only, when given), kernel order,
        as :meth:`klpkit.symbols.SymbolDB.lookup` gives it."""
        raw = name.encode("utf-8", "surrogateescape")
        if raw not in self._wanted:
            self._rescan(name)
        occ = sorted(self._occurrences(raw), key=lambda op: (op[0].index, op[1]))
        if object is not None:
            occ = [(o, p) for o, p in occ if o.name == object]
        if not occ:
            return []
        if self._records is None:
            exports = self._nm_exports(raw)
        else:
            exports = {
                self._ids[o]: v for o, v in self._exports.get(name, {}).items() if o in self._ids
            }
        none = (None, None, None)
        rows = []
        for obj, pos in occ:
            flags = obj.flags(pos)
            rows.append((obj.index, flags, *(exports.get(obj.index, none) if flags & 15 else none)))
        names = {o.index: o.name for o, _p in occ}
        return _entries(name, rows, names, include_init)

    def _rescan(self, name: str) -> None:
        """A name the caller did not announce: one more pass over the file for it."""
        wanted = self._want([name])
        scan = _scan(self.path, wanted)
        self._wanted |= wanted
        self._hits.update(scan.hits)
        if self._meta is not None:
            self._read_exports(wanted)


def open_for_module(path, elf, stack) -> SymbolLookup:
    """The symbol source ``klpkit convert``/``klp-convert`` use for the module ``elf``:
    a Symbols.list streamed for the names the module needs, else what
    :func:`klpkit.symbols.source.open_symbols` opens (a database, the cached one of the
    module's release).  Closed when ``stack`` closes."""
    from klpkit.convert.plan import lookup_names, read_modinfo
    from klpkit.symbols.source import open_symbols

    mi = read_modinfo(elf)
    if path is not None and os.path.isfile(path) and is_symbols_list(path):
        return StreamedSymbols(path, lookup_names(elf), mi.release if mi is not None else None)
    return open_symbols(path, elf.path, stack)

"""Build a symbol database from where users actually have a kernel's symbols.

Sources: a kernel build tree, an installed/unpacked distribution kernel (Debian: the
image package alone, vmlinux's symbols from the kallsyms tables of its compressed
``boot/vmlinuz``, see :mod:`klpkit.symbols.vmlinuz`; or with the ``-dbg`` package's
vmlinux, which gives the same database), a bare kernel image, a saved
``/proc/kallsyms`` (+ ``/proc/modules``) and klp-convert's ``Symbols.list``.  Every
builder fills a :class:`SymbolSet` (objects with their symbols in kernel order,
exports, provenance) and :func:`write_db` stores it; see :mod:`klpkit.symbols.rules`
for which symbols and which order.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import re
import sqlite3
import tempfile
from dataclasses import dataclass, field
from itertools import compress
from operator import itemgetter
from pathlib import Path

from klpkit import __version__
from klpkit.elf import constants as C
from klpkit.elf.compressed import SUFFIXES, read_many
from klpkit.elf.fast import ElfScan, open_scan
from klpkit.errors import ElfError, InputError, KlpkitError
from klpkit.kernel.modinfo import Modinfo, module_name
from klpkit.symbols import rules
from klpkit.symbols.db import (
    FORMAT,
    NONCORE,
    SCHEMA,
    SCHEMA_SQL,
    USER_VERSION,
    SymbolDB,
    SymbolDBError,
)
from klpkit.symbols.pages import (
    FLAGS_HEX,
    column_records,
    make_pages,
    make_records,
    oid_prefix,
    parse_record,
    pos_hex,
    record_oid,
)
from klpkit.symbols.symvers import Export, read_symvers
from klpkit.symbols.vmlinuz import KernelImage, gnu_build_id, read_image

# what a module file is called: plain, or compressed as CONFIG_MODULE_COMPRESS_{XZ,ZSTD,GZIP}
# install it (Debian 6.12: .ko.xz)
MODULE_SUFFIXES = (".ko", *(".ko" + s for s in SUFFIXES))


@dataclass
class ObjectRecord:
    name: str
    kind: str  # 'vmlinux' | 'module'
    path: str | None
    # in kernel order: (name, flags) pairs (name str or UTF-8 bytes), or the database's
    # encoded records (klpkit.symbols.pages) as read_module makes them
    rows: list
    depends: list[str] = field(default_factory=list)
    exports: list[Export] = field(default_factory=list)  # found in the object itself
    machine: int = 0  # e_machine of the ELF object (0: not read from an ELF)

    def pairs(self) -> list[tuple[str | bytes, int]]:
        """(name, flags) in kernel order, whichever form ``rows`` has."""
        if self.rows and type(self.rows[0]) is bytes:
            return [(name, flags) for name, _o, _p, flags in map(parse_record, self.rows)]
        return self.rows


@dataclass
class SymbolSet:
    release: str
    source: str
    build_id: str = ""
    sources: list[str] = field(default_factory=list)
    objects: list[ObjectRecord] = field(default_factory=list)
    symvers: dict[str, Export] | None = None
    symvers_path: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # database records of the objects whose ids are in ``recorded``, gathered as each
    # object is added (while its records are still in the CPU cache: gathering 600k
    # of them afterwards is a pass over cold memory)
    records: list[bytes] = field(default_factory=list)
    recorded: set[int] = field(default_factory=set)

    def add_object(self, rec: ObjectRecord) -> None:
        """Append ``rec``; its records join :attr:`records` now if read_module made them."""
        self.objects.append(rec)
        self._gather(len(self.objects) - 1, encode=False)

    def sorted_records(self) -> list[bytes]:
        """Every object's symbols as database records (:mod:`klpkit.symbols.pages`),
        sorted: bytes order is (name, object, kernel position) order. (Sorts
        :attr:`records` in place: they are a set, their order carries nothing.)"""
        for oid in range(len(self.objects)):
            if oid not in self.recorded:
                self._gather(oid, encode=True)
        self.records.sort()
        return self.records

    def _gather(self, oid: int, *, encode: bool) -> None:
        obj = self.objects[oid]
        if obj.rows and type(obj.rows[0]) is bytes and record_oid(obj.rows[0]) == oid:
            self.records += obj.rows  # made by read_module for this object id
        elif encode:
            self.records += make_records(oid, obj.pairs())
        else:
            return
        self.recorded.add(oid)


def gc_paused(fn):
    """Run ``fn`` with the cyclic garbage collector off: a build allocates ~1M tuples
    that live until the database is written, and the collector's repeated passes
    over them cost a good part of a second while finding no cycles."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return wrapper


# --- locations --------------------------------------------------------------------
def cache_dir() -> Path:
    base = os.environ.get("KLPKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "klpkit"
    )
    return Path(base) / "symbols"


def default_db_path(release: str | None = None, db: str | os.PathLike | None = None) -> Path:
    """``db`` if given, else ``$KLPKIT_SYMBOLS_DB``, else the cache file of ``release``."""
    if db:
        return Path(db)
    env = os.environ.get("KLPKIT_SYMBOLS_DB")
    if env:
        return Path(env)
    if not release:
        raise InputError(
            "no symbol database given: use --db PATH, KLPKIT_SYMBOLS_DB or --release R"
        )
    if "/" in release or release in (".", ".."):
        raise InputError(f"bad kernel release {release!r}")
    return cache_dir() / f"{release}.sqlite"


# --- writing ----------------------------------------------------------------------
@gc_paused
def write_db(symset: SymbolSet, path: str | os.PathLike) -> Path:
    """Store ``symset`` atomically at ``path`` (temp file + rename).

    Refuses to replace a database of another kernel release.
    """
    path = Path(path)
    if path.exists():
        try:
            old = SymbolDB.open(path)
            old_release = old.release
            old.close()
        except SymbolDBError:
            old_release = None  # unreadable: replace it
        if old_release is not None and old_release != symset.release:
            raise SymbolDBError(
                f"holds symbols of kernel {old_release}; refusing to mix in "
                f"{symset.release} (choose another --db or delete it)",
                path=path,
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        _write_sqlite(symset, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _write_sqlite(symset: SymbolSet, tmp: str) -> None:
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
        ids = {}
        objrows = []
        for oid, obj in enumerate(symset.objects):
            if obj.name in ids:
                raise KlpkitError(
                    f"two objects named '{obj.name}' ({obj.path} and "
                    f"{symset.objects[ids[obj.name]].path})"
                )
            ids[obj.name] = oid
            objrows.append((oid, obj.name, obj.kind, obj.path, ",".join(obj.depends)))
        conn.executemany("INSERT INTO objects VALUES (?,?,?,?,?)", objrows)
        _insert_pages(conn, symset.sorted_records())
        exports = []
        if symset.symvers is not None:
            for e in symset.symvers.values():
                oid = ids.get(e.object)
                if oid is not None:
                    exports.append((e.name, oid, e.export_type, e.namespace, e.crc))
        else:
            for oid, obj in enumerate(symset.objects):
                exports.extend(
                    (e.name, oid, e.export_type, e.namespace, e.crc) for e in obj.exports
                )
        exports.sort()
        conn.executemany("INSERT OR REPLACE INTO exports VALUES (?,?,?,?,?)", exports)
        counts = {
            "objects": len(symset.objects),
            "symbols": sum(len(o.rows) for o in symset.objects),
            "exports": len(exports),
            "skipped": len(symset.skipped),
        }
        meta = {
            "format": FORMAT,
            "schema": str(SCHEMA),
            "release": symset.release,
            "build_id": symset.build_id,
            "source": symset.source,
            "sources": json.dumps(symset.sources),
            "klpkit": __version__,
            "symvers": symset.symvers_path,
            "counts": json.dumps(counts),
            "skipped": json.dumps(symset.skipped),
            # the architecture, from the first object read from an ELF file (absent
            # for kallsyms/System.map/Symbols.list sources)
            "machine": str(next((o.machine for o in symset.objects if o.machine), 0)),
        }
        conn.executemany("INSERT INTO meta VALUES (?,?)", sorted(meta.items()))
        conn.execute("COMMIT")
    finally:
        conn.close()


def _insert_pages(conn: sqlite3.Connection, records: list[bytes]) -> None:
    conn.executemany("INSERT INTO symbol_pages VALUES (?,?)", make_pages(records))


# --- reading objects --------------------------------------------------------------
def _scan_any(path: str, data: bytes | None = None) -> ElfScan:
    """``with _scan_any(path) as scan:`` for a module or vmlinux, compressed or not
    (``.ko.xz``/``.zst``/``.gz``: the ELF layer decompresses them in memory). ``data``:
    the file's bytes when already read (and decompressed) by the caller."""
    scan = open_scan(data, path) if data else open_scan(path)
    if not scan.symtab_index:
        scan.close()
        raise ElfError("no symbol table (stripped?)", path=path)
    return scan


def _section_bytes_at(scan: ElfScan, shndx: int, value: int, size: int, relocatable: bool):
    if not 0 < shndx < len(scan.sh_types):
        return b""
    ssize = scan.sh_sizes[shndx]
    off = value if relocatable else value - scan.sh_addrs[shndx]
    if scan.sh_types[shndx] == C.SHT_NOBITS or off < 0 or off >= ssize:
        return b""
    size = min(size, ssize - off)
    return scan.read(scan.sh_offsets[shndx] + off, size, f"section {shndx} contents")


# Where an export's symbols start in a string table (strings start after a NUL).
_EXPORT_SYMBOL_RE = re.compile("\0(?:__ksymtab_|__kstrtabns_|__crc_)")


def _export_symbols(scan: ElfScan) -> dict[str, tuple[int, int]]:
    """name -> (shndx, value) of the defined ``__ksymtab_*``, ``__kstrtabns_*`` and
    ``__crc_*`` symbols. Found through their names' offsets in the string table (a
    C-level search) rather than by decoding every symbol name: a module has ~200
    symbols per export symbol."""
    if b"\0__ksymtab_" not in scan.strtab:  # no export: the usual module, one memmem
        return {}
    text = scan.strtab.decode("latin-1")
    starts = {m.start() + 1 for m in _EXPORT_SYMBOL_RE.finditer(text)}
    if not starts:
        return {}
    find = text.find
    nsec = len(scan.sh_names)
    shndxs, values = scan.shndxs, scan.values
    # the symbols named so, picked by a C-level membership map (a vmlinux has ~150k)
    picked = compress(enumerate(scan.st_names), map(starts.__contains__, scan.st_names))
    return {
        text[o : find("\0", o)]: (shndxs[i], values[i]) for i, o in picked if 0 < shndxs[i] < nsec
    }


def exports_from_object(scan: ElfScan, obj: str) -> list[Export]:
    """Exports found in the object itself: ``__ksymtab_<name>`` symbols and the section
    they are in (``__ksymtab`` / ``__ksymtab_gpl``, or ``___ksymtab[_gpl]+<name>`` in a
    ``.o``), the namespace string ``__kstrtabns_<name>`` points at, and the CRC at
    ``__crc_<name>`` (v5.19..v6.4 layout; from v6.5 modpost generates the ksymtab and
    a ``.o`` has none of these, so pass Module.symvers — spec P17)."""
    relocatable = scan.type == C.ET_REL
    secnames = scan.sh_names
    by_name = _export_symbols(scan)
    contents: dict[int, bytes] = {}  # each section read once, not once per export

    def data_at(shndx: int, value: int, size: int) -> bytes:
        if shndx not in contents:
            contents[shndx] = scan.section_data(shndx)
        off = value if relocatable else value - scan.sh_addrs[shndx]
        return contents[shndx][off : off + size] if off >= 0 else b""

    le = "little" if scan.little_endian else "big"
    out = []
    etypes = {x: _export_type(secnames[x]) for x in {v[0] for v in by_name.values()}}
    for sym, (shndx, _value) in by_name.items():
        if not sym.startswith("__ksymtab_"):
            continue
        etype = etypes[shndx]
        if etype is None:
            continue
        name = sym[10:]  # len("__ksymtab_")
        ns = None
        if f"__kstrtabns_{name}" in by_name:
            raw = data_at(*by_name[f"__kstrtabns_{name}"], 256)
            ns = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape") or None
        crc = None
        if f"__crc_{name}" in by_name:
            raw = data_at(*by_name[f"__crc_{name}"], 4)
            if len(raw) == 4:
                crc = int.from_bytes(raw, le)
        out.append(Export(name, obj, etype, ns, crc))
    return out


def _export_type(secname: str) -> str | None:
    """EXPORT_SYMBOL flavour from the section a ``__ksymtab_`` symbol is in."""
    if secname.startswith("___ksymtab"):
        secname = secname[1:].split("+", 1)[0]
    if secname == "__ksymtab":
        return "EXPORT_SYMBOL"
    if secname == "__ksymtab_gpl":
        return "EXPORT_SYMBOL_GPL"
    if secname.startswith("__ksymtab_"):
        return "EXPORT_SYMBOL_" + secname[len("__ksymtab_") :].upper()
    return None


def _build_id(scan: ElfScan) -> str:
    """The GNU build id (NT_GNU_BUILD_ID note; vmlinux keeps it in ``.notes``)."""
    for i, (stype, size) in enumerate(zip(scan.sh_types, scan.sh_sizes, strict=True)):
        if stype != C.SHT_NOTE or size > 1 << 20:
            continue
        found = gnu_build_id(scan.section_data(i), scan.little_endian)
        if found:
            return found
    return ""


_BANNER = re.compile(rb"Linux version (\S+)")


def _banner_release(scan: ElfScan) -> str | None:
    # find the name in the string table, then its symbol (C-level searches only)
    off = scan.strtab.find(b"\0linux_banner\0") + 1
    if off and off in scan.st_names:
        i = scan.st_names.index(off)
    elif "linux_banner" in scan.names:  # a suffix-shared string: search the names
        i = scan.names.index("linux_banner")
    else:
        return None
    raw = _section_bytes_at(scan, scan.shndxs[i], scan.values[i], 512, scan.type == C.ET_REL)
    m = _BANNER.match(raw)
    return m.group(1).decode() if m else None


@gc_paused
def read_vmlinux(
    path: str | os.PathLike, *, derive_exports: bool = True
) -> tuple[ObjectRecord, str, str | None, list[Export]]:
    """(record, build id, release from linux_banner, exports found in it)."""
    path = os.fspath(path)
    with _scan_any(path) as scan:
        if scan.type not in (C.ET_EXEC, C.ET_DYN):
            raise ElfError("not a linked vmlinux (ELF type is not EXEC/DYN)", path=path)
        table = rules.vmlinux_kallsyms(scan)
        # binding and type as kallsyms' type letter says them (rules: why)
        letters = rules.vmlinux_letters(scan, table)
        rows = column_records(
            0, list(map(itemgetter(0), table)), letters.translate(rules.LETTER_FLAGS)
        )
        return (
            ObjectRecord("vmlinux", "vmlinux", path, rows, machine=scan.machine),
            _build_id(scan),
            _banner_release(scan),
            exports_from_object(scan, "vmlinux") if derive_exports else [],
        )


@gc_paused
def read_vmlinuz(
    path: str | os.PathLike, *, derive_exports: bool = True
) -> tuple[ObjectRecord, str, str | None, list[Export], KernelImage]:
    """vmlinux from a compressed kernel image (bzImage) or a stripped vmlinux: its
    kallsyms tables, decoded by :mod:`klpkit.symbols.vmlinuz`.  Returns what
    :func:`read_vmlinux` returns, and the image read.

    The table *is* the kernel's order and the kernel's selection of symbols (what
    :func:`rules.vmlinux_kallsyms` reconstructs from an ELF symbol table), and each
    entry's type letter gives binding and type (``rules.LETTER_FLAGS``)."""
    path = os.fspath(path)
    img = read_image(path, exports=derive_exports)
    letters = img.kallsyms.types.encode("latin-1")
    rows = column_records(0, img.kallsyms.names, letters.translate(rules.LETTER_FLAGS))
    rec = ObjectRecord("vmlinux", "vmlinux", path, rows, machine=img.machine)
    return rec, img.build_id, img.release, img.exports or [], img


# st_info -> stored flags (bind | type << 4); -1 for section and file symbols
_INFO_FLAGS = [
    -1 if (i & 0xF) in (C.STT_SECTION, C.STT_FILE) else (i >> 4) | ((i & 0xF) << 4)
    for i in range(256)
]


# st_info -> hex digits of the stored flags of a symbol in a core section, in an
# init-only one, or undefined; None for what kallsyms leaves out (section, file symbols)
_CORE_HEX = [None if f < 0 else FLAGS_HEX[f] for f in _INFO_FLAGS]
_INIT_HEX = [None if f < 0 else FLAGS_HEX[f | NONCORE] for f in _INFO_FLAGS]
_NO_HEX = [None] * 256


def read_module(
    path: str, *, derive_exports: bool = True, oid: int = -1, data: bytes | None = None
) -> tuple[ObjectRecord, Modinfo]:
    """One .ko (or .ko.xz, ...): its kallsyms rows (core and init-only), .modinfo, exports.

    The rows are the database's records (:mod:`klpkit.symbols.pages`: name, ``oid`` =
    the object's future id in the database, symbol index, flags) made straight away;
    names are the string table's bytes (UTF-8), never decoded here.  ``data``: the
    module's (decompressed) bytes, when the caller has read them already.
    """
    with _scan_any(path, data) as scan:
        if scan.type != C.ET_REL:
            raise ElfError("not a kernel module (ELF type is not REL)", path=path)
        # per section: st_info -> the flags' hex digits (None: not in kallsyms)
        by_section = [
            _CORE_HEX if c == 2 else _INIT_HEX if c == 1 else _NO_HEX
            for c in rules.module_section_classes(scan)
        ]
        nsec = len(by_section)
        strtab = scan.strtab
        find = strtab.find
        prefix, ph = oid_prefix(max(oid, 0)), pos_hex(len(scan.st_names))
        # hot loop (~800k symbols per kernel): one comprehension making the database's
        # records (name NUL oid pos flags) directly, with table lookups, no calls;
        # names stay bytes (UTF-8 as stored). Reserved section indexes (SHN_ABS...)
        # are init-only; ph is a shared table longer than the symbol table.
        rows = [
            strtab[o : find(b"\0", o)] + prefix + hp + h
            for o, i, x, hp in zip(scan.st_names, scan.infos, scan.shndxs, ph, strict=False)
            if o and (h := (by_section[x] if x < nsec else _INIT_HEX)[i])
        ]
        mi = scan.section_index(".modinfo")
        modinfo = Modinfo.parse(scan.section_data(mi)) if mi else Modinfo()
        name = module_name(path, modinfo)
        exports = exports_from_object(scan, name) if derive_exports else []
    return (
        ObjectRecord(name, "module", path, rows, modinfo.depends, exports, machine=scan.machine),
        modinfo,
    )


def find_modules(root: str | os.PathLike) -> list[str]:
    """Every module file under ``root`` (sorted, so builds are reproducible)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in filenames:
            if f.endswith(MODULE_SUFFIXES):
                out.append(os.path.join(dirpath, f))
    out.sort()
    return out


@gc_paused
def scan_modules(
    paths: list[str],
    symset: SymbolSet,
    *,
    release: str | None,
    skip_bad: bool,
    derive_exports: bool,
    progress: bool = True,
) -> None:
    """Read modules into ``symset``; bad ones are collected and either skipped
    (``skip_bad``) or reported together as one error."""
    from klpkit.output import progress as bar

    seen: dict[str, str] = {o.name: o.path or "" for o in symset.objects}
    bad: list[tuple[str, str]] = []
    # compressed modules (Debian 6.12: 4,230 .ko.xz) are decompressed by threads ahead
    # of this loop (read_many: liblzma runs without the GIL); b"" for plain .ko files
    with contextlib.closing(read_many(paths)) as loaded:
        for path in bar(paths, "scanning modules") if progress else paths:
            data = next(loaded)[1]
            try:
                if isinstance(data, KlpkitError):
                    raise data
                rec, modinfo = read_module(
                    path, derive_exports=derive_exports, oid=len(symset.objects), data=data
                )
            except (ElfError, InputError) as e:
                bad.append((path, e.message))
                continue
            mrel = modinfo.release
            if release and mrel and mrel != release:
                bad.append((path, f"built for kernel {mrel}, not {release}"))
                continue
            if modinfo.is_livepatch:
                # livepatch modules are patches, not targets (klp-convert's modules.livepatch)
                continue
            if rec.name in seen:
                bad.append((path, f"second module named '{rec.name}' (first: {seen[rec.name]})"))
                continue
            seen[rec.name] = path
            symset.add_object(rec)
    if bad:
        if not skip_bad:
            path, reason = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise KlpkitError(
                f"{path}: {reason}{more}; fix the input or pass --skip-bad "
                f"to leave such modules out"
            )
        symset.skipped.extend(bad)


# --- builders ---------------------------------------------------------------------
def _finish(symset: SymbolSet, symvers, db, open_db: bool):
    if symvers is not None:
        symset.symvers = read_symvers(symvers)
        symset.symvers_path = os.path.abspath(symvers)
        symset.sources.append(symset.symvers_path)
    path = write_db(symset, default_db_path(symset.release, db))
    return SymbolDB.open(path) if open_db else path


@gc_paused
def _settle_release(asked: str | None, found: str | None, source, what: str) -> str:
    """The release of a build: the one the input says, which must be the one asked for."""
    if asked and found and asked != found:
        raise KlpkitError(f"{source} is kernel {found}, not {asked}")
    if not (asked or found):
        raise InputError(
            f"cannot tell the kernel release of the {what}; pass --release", path=source
        )
    return asked or found


def build_from_tree(
    tree: str | os.PathLike,
    *,
    symvers: str | os.PathLike | None = None,
    release: str | None = None,
    db=None,
    skip_bad: bool = False,
    progress: bool = True,
) -> SymbolDB:
    """A kernel build tree: ``vmlinux``, every ``*.ko`` under it, ``Module.symvers``."""
    tree = Path(tree)
    vmlinux = tree / "vmlinux"
    if not vmlinux.is_file():
        raise InputError("no vmlinux in the build tree", path=tree)
    if symvers is None and (tree / "Module.symvers").is_file():
        symvers = tree / "Module.symvers"
    rec, build_id, banner_rel, vexports = read_vmlinux(vmlinux, derive_exports=symvers is None)
    rel_file = tree / "include" / "config" / "kernel.release"
    tree_rel = rel_file.read_text().strip() if rel_file.is_file() else None
    release = _settle_release(release, tree_rel or banner_rel, tree, "tree")
    rec.exports = vexports
    symset = SymbolSet(release, "tree", build_id, [str(vmlinux.resolve())], [rec])
    mods = [p for p in find_modules(tree) if "/.tmp" not in p]
    scan_modules(
        mods,
        symset,
        release=release,
        skip_bad=skip_bad,
        derive_exports=symvers is None,
        progress=progress,
    )
    symset.sources.append(str(tree.resolve()))
    return _finish(symset, symvers, db, True)


DEBIAN_PLACEHOLDER = b"The real System.map is in the linux-image-"


def _find_release_dir(image_dir: Path, release: str | None = None) -> tuple[str, Path]:
    mods = image_dir / "lib" / "modules"
    if not mods.is_dir():
        mods = image_dir / "usr" / "lib" / "modules"
    if release:
        if not (mods / release).is_dir():
            raise InputError(f"no lib/modules/{release}/ here", path=image_dir)
        return release, mods / release
    rels = sorted(p for p in mods.iterdir() if p.is_dir()) if mods.is_dir() else []
    if len(rels) != 1:
        names = ", ".join(p.name for p in rels)
        raise InputError(
            f"expected one lib/modules/<release>/ directory, found {len(rels)}"
            + (f" ({names}): pass --release" if rels else ""),
            path=image_dir,
        )
    return rels[0].name, rels[0]


def apply_modules_dep(symset: SymbolSet, moddir: Path) -> None:
    """Fill ``depends`` from depmod's ``modules.dep`` for modules whose .modinfo has
    none (modules.dep lists every dependency, direct and indirect, in load order)."""
    dep = moddir / "modules.dep"
    if not dep.is_file():
        return
    by_path = {}
    for line in dep.read_text(errors="replace").splitlines():
        mod, sep, deps = line.partition(":")
        if sep:
            by_path[mod.strip()] = [module_name(d) for d in deps.split()]
    for rec in symset.objects:
        if rec.kind != "module" or rec.depends or not rec.path:
            continue
        try:
            rel = os.path.relpath(rec.path, moddir)
        except ValueError:
            continue
        if by_path.get(rel):
            rec.depends = by_path[rel]


def is_placeholder_system_map(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return DEBIAN_PLACEHOLDER in head and head.count(b"\n") <= 1


def find_debug_vmlinux(dbg_dir: Path, release: str) -> tuple[Path | None, Path | None]:
    """(vmlinux, System.map) in an unpacked -dbg package, a debug root, or a flat dir."""
    vm_candidates = [
        dbg_dir / "usr/lib/debug/boot" / f"vmlinux-{release}",
        dbg_dir / "usr/lib/debug/lib/modules" / release / "vmlinux",
        dbg_dir / "boot" / f"vmlinux-{release}",
        dbg_dir / f"vmlinux-{release}",
        dbg_dir / "vmlinux",
    ]
    map_candidates = [
        dbg_dir / "usr/lib/debug/boot" / f"System.map-{release}",
        dbg_dir / "boot" / f"System.map-{release}",
        dbg_dir / f"System.map-{release}",
        dbg_dir / "System.map",
    ]
    vm = next((p for p in vm_candidates if p.is_file()), None)
    sm = next((p for p in map_candidates if p.is_file() and not is_placeholder_system_map(p)), None)
    return vm, sm


def _image_version(image_dir: Path, release: str) -> str:
    """The version string in a bzImage (offset 0x20e points to it), for provenance."""
    vmlinuz = image_dir / "boot" / f"vmlinuz-{release}"
    try:
        with open(vmlinuz, "rb") as f:
            head = f.read(0x4000)
        if head[0x202:0x206] == b"HdrS":
            off = int.from_bytes(head[0x20E:0x210], "little") + 0x200
            return head[off : off + 200].split(b"\0", 1)[0].decode("ascii", "replace")
    except OSError:
        pass
    return ""


@gc_paused
def build_from_debian(
    image_dir: str | os.PathLike,
    dbg_dir: str | os.PathLike | None = None,
    symvers: str | os.PathLike | None = None,
    *,
    db=None,
    skip_bad: bool = False,
    progress: bool = True,
    release: str | None = None,
) -> SymbolDB:
    """An unpacked Debian ``linux-image-<rel>[-unsigned]`` package (or an installed root).

    vmlinux's symbols come from the kallsyms tables of the image's own
    ``boot/vmlinuz-<rel>`` (:func:`read_vmlinuz`), or, with ``dbg_dir``, from the unpacked
    ``-dbg`` package's vmlinux / real System.map; both give the same database (rules:
    ``LETTER_FLAGS``).  A root without ``boot/vmlinuz-<rel>`` falls back to a debug
    vmlinux or System.map found in it."""
    image_dir = Path(image_dir)
    rel, moddir = _find_release_dir(image_dir, release)
    vm = sm = image = None
    if dbg_dir is not None:
        vm, sm = find_debug_vmlinux(Path(dbg_dir), rel)
        if vm is None and sm is None:
            raise InputError(f"no vmlinux-{rel} or System.map-{rel} in the -dbg tree", path=dbg_dir)
    elif (image_dir / "boot" / f"vmlinuz-{rel}").is_file():
        image = image_dir / "boot" / f"vmlinuz-{rel}"
    else:
        vm, sm = find_debug_vmlinux(image_dir, rel)
    if image is None and vm is None and sm is None:
        placeholder = image_dir / "boot" / f"System.map-{rel}"
        hint = (
            f"{placeholder} is Debian's one-line placeholder; "
            if is_placeholder_system_map(placeholder)
            else ""
        )
        raise InputError(
            f"{hint}no boot/vmlinuz-{rel} here to read vmlinux's symbols from, "
            f"nor a vmlinux or real System.map (those are in the "
            f"linux-image-{rel}-dbg package: pass --dbg DIR)",
            path=image_dir,
        )
    sources = []
    if image is not None:
        rec, build_id, image_rel, vexports, _img = read_vmlinuz(
            image, derive_exports=symvers is None
        )
        if image_rel and image_rel != rel:
            raise KlpkitError(f"{image} is kernel {image_rel}, not {rel}")
        rec.exports = vexports
        sources.append(str(image))
    elif vm is not None:
        rec, build_id, _br, vexports = read_vmlinux(vm, derive_exports=symvers is None)
        rec.exports = vexports
        sources.append(str(vm))
    else:
        rec = system_map_record(sm)
        build_id = ""
        sources.append(str(sm))
    build_id = build_id or _image_version(image_dir, rel)
    symset = SymbolSet(rel, "debian", build_id, sources, [rec])
    scan_modules(
        find_modules(moddir),
        symset,
        release=rel,
        skip_bad=skip_bad,
        derive_exports=symvers is None,
        progress=progress,
    )
    apply_modules_dep(symset, moddir)
    symset.sources.append(str(moddir))
    return _finish(symset, symvers, db, True)


@gc_paused
def build_from_vmlinuz(
    image: str | os.PathLike,
    *,
    modules_dir: str | os.PathLike | None = None,
    symvers: str | os.PathLike | None = None,
    release: str | None = None,
    db=None,
    skip_bad: bool = False,
    progress: bool = True,
) -> SymbolDB:
    """A bare kernel image (bzImage, e.g. ``/boot/vmlinuz-$(uname -r)``, or a stripped
    vmlinux), and optionally its modules (a ``lib/modules/<release>`` tree): vmlinux's
    symbols from the image's kallsyms tables (:func:`read_vmlinuz`)."""
    image = Path(image)
    rec, build_id, found, vexports, _img = read_vmlinuz(image, derive_exports=symvers is None)
    release = _settle_release(release, found, image, "image")
    rec.exports = vexports
    symset = SymbolSet(release, "vmlinuz", build_id, [str(image.resolve())], [rec])
    if modules_dir is not None:
        moddir = Path(modules_dir)
        if not moddir.is_dir():
            raise InputError("no such directory", path=moddir)
        scan_modules(
            find_modules(moddir),
            symset,
            release=release,
            skip_bad=skip_bad,
            derive_exports=symvers is None,
            progress=progress,
        )
        apply_modules_dep(symset, moddir)
        symset.sources.append(str(moddir.resolve()))
    return _finish(symset, symvers, db, True)


# --- System.map / kallsyms text -----------------------------------------------------
def _nm_flags(letter: str) -> int:
    """Flags of a vmlinux symbol from its type letter (rules: ``LETTER_FLAGS``)."""
    return rules.letter_flags(letter)


def system_map_record(path) -> ObjectRecord:
    """vmlinux from a real System.map (``nm -n`` output filtered by mksysmap): the
    kallsyms input on v6.1+, so kallsyms' own sort applied to it gives kernel order."""
    data = Path(path).read_bytes()
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
        try:
            addr = int(parts[0], 16)
        except ValueError:
            raise InputError(f"line {lineno}: not 'ADDRESS TYPE NAME'", path=path) from None
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
    absolute = lo == 0 and hi is not None
    return ObjectRecord(
        "vmlinux",
        "vmlinux",
        str(path),
        [(e[5], _nm_flags("A" if absolute and lo <= e[0] <= hi else e[6])) for e in entries],
    )


@gc_paused
def build_from_kallsyms(
    kallsyms_text: str,
    modules_text: str | None = None,
    *,
    release: str | None = None,
    db=None,
    symvers=None,
    sources: list[str] | None = None,
) -> SymbolDB:
    """A saved ``/proc/kallsyms`` (kernel order as printed; module symbols carry
    ``[module]``) and optionally ``/proc/modules`` for dependencies.

    In /proc/kallsyms a module symbol's letter case says *exported* (upper) rather
    than binding, so module bindings are recorded as 'unknown'.
    """
    if not release:
        release = os.uname().release
    objs: dict[str, ObjectRecord] = {"vmlinux": ObjectRecord("vmlinux", "vmlinux", None, [])}
    exported: dict[str, set] = {}
    for lineno, line in enumerate(kallsyms_text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3:
            raise InputError(f"/proc/kallsyms line {lineno}: expected 'ADDRESS TYPE NAME [MODULE]'")
        letter, name = parts[1], parts[2]
        obj = "vmlinux"
        if len(parts) > 3:
            obj = parts[3].strip("[]")
            if obj.startswith("__builtin") or obj == "bpf":
                continue
        if letter in "Uu":
            continue
        rec = objs.get(obj)
        if rec is None:
            rec = objs[obj] = ObjectRecord(obj, "module", None, [])
        if obj == "vmlinux":
            flags = _nm_flags(letter)
        else:
            flags = rules.KALLSYMS_BIND_UNKNOWN | (rules.letter_flags(letter) & 0xF0)
            if letter.isupper():
                exported.setdefault(obj, set()).add(name)
        rec.rows.append((name, flags))
    for obj, rec in objs.items():
        names = {n for n, _f in rec.rows}
        ks = {n[len("__ksymtab_") :] for n in names if n.startswith("__ksymtab_")}
        for n in sorted(ks | exported.get(obj, set())):
            if n in names:
                rec.exports.append(Export(n, obj, "", None, None))  # type unknown
    if modules_text:
        users: dict[str, list[str]] = {}
        for line in modules_text.splitlines():
            parts = line.split()
            if len(parts) >= 4:
                for user in parts[3].split(","):
                    if user and user != "-":
                        users.setdefault(user, []).append(parts[0])
        for obj, rec in objs.items():
            rec.depends = sorted(users.get(obj, []))
    symset = SymbolSet(release, "kallsyms", "", list(sources or []), list(objs.values()))
    return _finish(symset, symvers, db, True)

"""vmlinux and modules read from ELF files: their kallsyms symbols in kernel order, their
exports, build id and release (the rules of which symbols and which order are in
:mod:`klpkit.symbols.rules`); and the modules of a ``lib/modules/<release>`` tree.
Used by the tree, Debian and image sources."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Generator, Iterable, Sequence
from itertools import compress
from operator import itemgetter
from pathlib import Path
from typing import Literal

from klpkit.elf import constants as C
from klpkit.elf.compressed import SUFFIXES, read_many
from klpkit.elf.fast import ElfScan, open_scan
from klpkit.errors import ElfError, InputError, KlpkitError
from klpkit.fileio import read_regular
from klpkit.kernel.modinfo import Modinfo, module_name
from klpkit.symbols import rules
from klpkit.symbols.db import NONCORE
from klpkit.symbols.model import ObjectRecord, SymbolSet
from klpkit.symbols.pages import FLAGS_HEX, column_records, oid_prefix, pos_hex
from klpkit.symbols.speed import gc_paused
from klpkit.symbols.symvers import Export

#: what the command passes in to show progress: (items, label) -> the same items, drawn
Progress = Callable[[Sequence[str], str], Iterable[str]]

# what a module file is called: plain, or compressed as CONFIG_MODULE_COMPRESS_{XZ,ZSTD,GZIP}
# install it (Debian 6.12: .ko.xz)
MODULE_SUFFIXES = (".ko", *(".ko" + s for s in SUFFIXES))
MAX_MODULES_DEP = 64 << 20  # modules.dep of a distribution kernel: ~0.5 MiB


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


def export_symbols(scan: ElfScan) -> dict[str, tuple[int, int]]:
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
    a ``.o`` has none of these, so pass Module.symvers)."""
    relocatable = scan.type == C.ET_REL
    secnames = scan.sh_names
    by_name = export_symbols(scan)
    contents: dict[int, bytes] = {}  # each section read once, not once per export

    def data_at(shndx: int, value: int, size: int) -> bytes:
        if shndx not in contents:
            contents[shndx] = scan.section_data(shndx)
        off = value if relocatable else value - scan.sh_addrs[shndx]
        return contents[shndx][off : off + size] if off >= 0 else b""

    le: Literal["little", "big"] = "little" if scan.little_endian else "big"
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


def gnu_build_id(notes: bytes | bytearray, little_endian: bool = True) -> str:
    """The GNU build id (an ``NT_GNU_BUILD_ID`` note) in a block of ELF notes, or ""."""
    le: Literal["little", "big"] = "little" if little_endian else "big"
    off = 0
    while off + 12 <= len(notes):
        namesz = int.from_bytes(notes[off : off + 4], le)
        descsz = int.from_bytes(notes[off + 4 : off + 8], le)
        ntype = int.from_bytes(notes[off + 8 : off + 12], le)
        name_end = off + 12 + namesz
        desc = name_end + (-namesz % 4)
        if notes[off + 12 : name_end].rstrip(b"\0") == b"GNU" and ntype == 3:
            return bytes(notes[desc : desc + descsz]).hex()
        off = desc + descsz + (-descsz % 4)
    return ""


def build_id(scan: ElfScan) -> str:
    """The GNU build id (NT_GNU_BUILD_ID note; vmlinux keeps it in ``.notes``)."""
    for i, (stype, size) in enumerate(zip(scan.sh_types, scan.sh_sizes, strict=True)):
        if stype != C.SHT_NOTE or size > 1 << 20:
            continue
        found = gnu_build_id(scan.section_data(i), scan.little_endian)
        if found:
            return found
    return ""


_BANNER = re.compile(rb"Linux version (\S+)")


def banner_release(scan: ElfScan) -> str | None:
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
    return m.group(1).decode("utf-8", "surrogateescape") if m else None


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
            0, list(map(itemgetter(0), table)), letters.translate(rules.LETTER_FLAGS), path
        )
        return (
            ObjectRecord("vmlinux", "vmlinux", path, rows, machine=scan.machine),
            build_id(scan),
            banner_release(scan),
            exports_from_object(scan, "vmlinux") if derive_exports else [],
        )


# st_info -> stored flags (bind | type << 4); -1 for section and file symbols
_INFO_FLAGS = [
    -1 if (i & 0xF) in (C.STT_SECTION, C.STT_FILE) else (i >> 4) | ((i & 0xF) << 4)
    for i in range(256)
]


# st_info -> hex digits of the stored flags of a symbol in a core section, in an
# init-only one, or undefined; None for what kallsyms leaves out (section, file symbols)
CORE_HEX = [None if f < 0 else FLAGS_HEX[f] for f in _INFO_FLAGS]
INIT_HEX = [None if f < 0 else FLAGS_HEX[f | NONCORE] for f in _INFO_FLAGS]
NO_HEX = [None] * 256


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
            CORE_HEX if c == 2 else INIT_HEX if c == 1 else NO_HEX
            for c in rules.module_section_classes(scan)
        ]
        nsec = len(by_section)
        strtab = scan.strtab
        find = strtab.find
        prefix, ph = oid_prefix(max(oid, 0), path), pos_hex(len(scan.st_names), path)
        # hot loop (~800k symbols per kernel): one comprehension making the database's
        # records (name NUL oid pos flags) directly, with table lookups, no calls;
        # names stay bytes (UTF-8 as stored). Reserved section indexes (SHN_ABS...)
        # are init-only; ph is a shared table longer than the symbol table.
        rows = [
            strtab[o : find(b"\0", o)] + prefix + hp + h
            for o, i, x, hp in zip(scan.st_names, scan.infos, scan.shndxs, ph, strict=False)
            if o and (h := (by_section[x] if x < nsec else INIT_HEX)[i])
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
    """Every module file under ``root`` (sorted, so builds are reproducible): regular
    files only (a FIFO named ``x.ko`` would block the reader); symbolic links to
    directories are not followed."""
    out = []
    stack = [os.fspath(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue  # (as os.walk: an unreadable directory holds no module)
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
            elif e.name.endswith(MODULE_SUFFIXES) and e.is_file():
                out.append(e.path)
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
    progress: Progress | None = None,
) -> None:
    """Read modules into ``symset``; bad ones are collected and either skipped
    (``skip_bad``) or reported together as one error."""
    seen: dict[str, str] = {o.name: o.path or "" for o in symset.objects}
    bad: list[tuple[str, str]] = []
    # compressed modules (Debian 6.12: 4,230 .ko.xz) are decompressed by threads ahead
    # of this loop (read_many: liblzma runs without the GIL); b"" for plain .ko files
    loaded = read_many(paths)
    try:
        for path in progress(paths, "scanning modules") if progress else paths:
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
    finally:
        if isinstance(loaded, Generator):
            loaded.close()
    if bad:
        if not skip_bad:
            path, reason = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise KlpkitError(
                f"{path}: {reason}{more}; fix the input or pass --skip-bad "
                f"to leave such modules out"
            )
        symset.skipped.extend(bad)


def apply_modules_dep(symset: SymbolSet, moddir: Path) -> None:
    """Fill ``depends`` from depmod's ``modules.dep`` for modules whose .modinfo has
    none (modules.dep lists every dependency, direct and indirect, in load order)."""
    dep = moddir / "modules.dep"
    if not dep.is_file():
        return
    by_path = {}
    text = read_regular(dep, MAX_MODULES_DEP, "modules.dep").decode("utf-8", "surrogateescape")
    for line in text.splitlines():
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

"""Synthetic kernel images for the image decoder's tests.

A small vmlinux ELF (program headers, no section headers: what matters of the stripped
vmlinux in a bzImage) whose data holds kallsyms tables laid out as scripts/kallsyms
writes them -- the v6.1 order (offsets, relative base, num_syms, names, markers,
seqs_of_names, token table, token index) or the v6.4+ order (num_syms, names, markers,
token table, token index, offsets, relative base, seqs_of_names) --, an export table
(``__ksymtab``/``__ksymtab_gpl`` with PREL32 or pointer entries, ``__kcrctab``), a GNU
build-id note and ``linux_banner``; wrapped in an x86 bzImage with any payload
compression the kernel uses.  Written from the format's facts (the decoder's docstrings
cite the kernel code), so the decoder is checked against an independent encoder.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import struct
import subprocess
from collections import Counter
from dataclasses import dataclass, field

TEXT64 = 0xFFFFFFFF81000000
TEXT32 = 0xC1000000
RELEASE = "6.1.0-synthetic"
BUILD_ID = bytes(range(20))
SEGMENT_AT = 0x1000  # file offset of the loaded segment


@dataclass
class Sym:
    letter: str
    name: str
    addr: int


@dataclass
class Export:
    name: str
    gpl: bool = False
    namespace: str = ""
    crc: int = 0


@dataclass
class Image:
    """What a synthetic vmlinux holds (what the decoder must find)."""

    elf: bytes
    symbols: list[Sym]  # kernel order, letters as kallsyms stores them
    exports: list[Export]
    tables: dict[str, int] = field(default_factory=dict)  # kallsyms table -> file offset


def _align(blob: bytearray, n: int) -> None:
    blob += b"\0" * (-len(blob) % n)


def _tokens(entries: list[bytes]) -> tuple[list[bytes], dict[bytes, int]]:
    """The token table: every used byte stands for itself; free codes get frequent
    pairs (code: pair -> its code)."""
    tokens: list[bytes | None] = [None] * 256
    for e in entries:
        for c in e:
            tokens[c] = bytes((c,))
    free = [c for c in range(256) if tokens[c] is None]
    pairs = Counter(e[i : i + 2] for e in entries for i in range(len(e) - 1))
    best = [p for p, _n in pairs.most_common(len(free))]
    code = {}
    for c, p in zip(free, best, strict=False):
        tokens[c] = p
        code[p] = c
    for c in free[len(best) :]:
        tokens[c] = b"zq"  # never used: any non-empty string
    return [t or b"zq" for t in tokens], code


def _names(entries: list[bytes], code: dict[bytes, int]) -> tuple[bytearray, list[int]]:
    """kallsyms_names (each entry as tokens, length first) and its markers."""
    names = bytearray()
    markers = []
    for i, e in enumerate(entries):
        if i % 256 == 0:
            markers.append(len(names))
        out, j = [], 0
        while j < len(e):
            if e[j : j + 2] in code:
                out.append(code[e[j : j + 2]])
                j += 2
            else:
                out.append(e[j])
                j += 1
        n = len(out)
        names += bytes((n,)) if n < 0x80 else bytes(((n & 0x7F) | 0x80, n >> 7))
        names += bytes(out)
    return names, markers


def encode_kallsyms(
    symbols: list[Sym],
    *,
    order: str = "6.1",
    ptr: int = 8,
    absolute_percpu: bool = True,
    base_relative: bool = True,
    seqs: bool = True,
) -> tuple[bytes, dict[str, int], list[Sym]]:
    """(blob, label -> offset in blob, symbols as stored) for ``symbols`` sorted by
    address.  With ``absolute_percpu`` the symbols in [__per_cpu_start, __per_cpu_end]
    get the letter 'A' (make_percpus_absolute)."""
    syms = [Sym(s.letter, s.name, s.addr) for s in symbols]
    bounds = {s.name: s.addr for s in syms}
    lo, hi = bounds.get("__per_cpu_start"), bounds.get("__per_cpu_end")
    absolute = [absolute_percpu and lo is not None and lo <= s.addr <= hi for s in syms]
    for s, a in zip(syms, absolute, strict=True):
        if a:
            s.letter = "A"
    entries = [(s.letter + s.name).encode() for s in syms]
    tokens, code = _tokens(entries)
    names, markers = _names(entries, code)
    table = b"".join(t + b"\0" for t in tokens)
    index, off = [], 0
    for t in tokens:
        index.append(off)
        off += len(t) + 1
    pfmt = "<Q" if ptr == 8 else "<I"
    addrs = [s.addr for s in syms]
    rel = [a for a, ab in zip(addrs, absolute, strict=True) if not ab]
    base = rel[0] if rel else 0
    if base_relative:
        mask = (1 << (8 * ptr)) - 1
        offsets = [
            a if ab else (base - a - 1 if absolute_percpu else a - base) & mask
            for a, ab in zip(addrs, absolute, strict=True)
        ]
        addr_blob = b"".join(struct.pack("<I", o & 0xFFFFFFFF) for o in offsets)
    else:
        addr_blob = b"".join(struct.pack(pfmt, a) for a in addrs)
    order_by_name = sorted(range(len(syms)), key=lambda i: (syms[i].name, addrs[i], i))
    seq_blob = b"".join(i.to_bytes(3, "big") for i in order_by_name)
    blob = bytearray()
    at: dict[str, int] = {}

    def put(label: str, data: bytes) -> None:
        _align(blob, ptr)
        at[label] = len(blob)
        blob.extend(data)

    def addresses() -> None:
        put("kallsyms_offsets" if base_relative else "kallsyms_addresses", addr_blob)
        if base_relative:
            put("kallsyms_relative_base", struct.pack(pfmt, base))

    if order == "6.1":
        addresses()
    put("kallsyms_num_syms", struct.pack("<I", len(syms)))
    put("kallsyms_names", bytes(names))
    put("kallsyms_markers", b"".join(struct.pack("<I", m) for m in markers))
    if seqs and order == "6.1":
        put("kallsyms_seqs_of_names", seq_blob)
    put("kallsyms_token_table", table)
    put("kallsyms_token_index", b"".join(struct.pack("<H", i) for i in index))
    if order != "6.1":
        addresses()
        if seqs:
            put("kallsyms_seqs_of_names", seq_blob)
    _align(blob, ptr)
    return bytes(blob), at, syms


def default_symbols(text: int) -> list[Sym]:
    """Code symbols with every lower-case letter, duplicates, weak ones, a long name."""
    syms = [
        Sym("T", "_text", text),
        Sym("T", "startup_64", text),
        Sym("t", "abcdefghijklmnopqrstuvwxyz", text + 0x10),
    ]
    for i in range(600):  # > 256: several markers
        syms.append(Sym("tT"[i % 2], f"func_{i}_{'xyz'[i % 3]}", text + 0x20 + 8 * i))
    syms += [
        Sym("t", "dup_helper", text + 0x2000),
        Sym("t", "dup_helper", text + 0x2010),
        Sym("W", "weak_fn", text + 0x2020),
        Sym("t", "dup_helper", text + 0x2030),
        Sym("T", "very_long_" + "n" * 200, text + 0x2040),
    ]
    return syms


def make_vmlinux(
    *,
    order: str = "6.1",
    ptr: int = 8,
    absolute_percpu: bool = True,
    base_relative: bool = True,
    seqs: bool = True,
    release: str = RELEASE,
    symbols: list[Sym] | None = None,
    exports: list[Export] | None = None,
    percpu: bool = True,
    code_only: bool = False,
) -> Image:
    """A vmlinux as described in the module doc; ``code_only``: every symbol typed as
    code, as in a kernel without CONFIG_KALLSYMS_ALL."""
    text = TEXT64 if ptr == 8 else TEXT32
    vaddr0 = text  # vaddr of SEGMENT_AT
    syms = list(symbols) if symbols is not None else default_symbols(text)
    exports = (
        exports
        if exports is not None
        else [
            Export("func_5_z", crc=0x11111111),
            Export("func_3_x", crc=0x22222222),
            Export("func_1_y", gpl=True, namespace="MY_NS", crc=0x33333333),
        ]
    )
    data = bytearray(b"\xcc" * 0x3000)  # "code"
    data += struct.pack("<Q", 5) + struct.pack("<Q", 7) * 3  # decoy small words
    banner_at = len(data)
    data += f"Linux version {release} (test@klpkit) #1 SMP\n\0".encode()
    _align(data, 4)
    notes_at = len(data)
    data += struct.pack("<III", 4, len(BUILD_ID), 3) + b"GNU\0" + BUILD_ID
    _align(data, 8)
    # the export tables: entries sorted by name, __ksymtab then __ksymtab_gpl
    plain = sorted((e for e in exports if not e.gpl), key=lambda e: e.name)
    gpl = sorted((e for e in exports if e.gpl), key=lambda e: e.name)
    entry = 12 if ptr == 8 else 3 * ptr
    ksymtab_at = len(data)
    data += b"\0" * entry * (len(plain) + len(gpl))
    kcrctab_at = len(data)
    data += b"".join(struct.pack("<I", e.crc) for e in plain + gpl)
    strings_at = len(data)
    where = {}
    for e in plain + gpl:
        for s in (e.name, e.namespace):
            if s not in where:
                where[s] = len(data)
                data += s.encode() + b"\0"
    for i, e in enumerate(plain + gpl):
        at = ksymtab_at + i * entry
        value = text + 0x20
        if entry == 12 and ptr == 8:
            fields = (
                value - (vaddr0 + at),
                vaddr0 + where[e.name] - (vaddr0 + at + 4),
                vaddr0 + where[e.namespace] - (vaddr0 + at + 8),
            )
            struct.pack_into("<iii", data, at, *fields)
        else:
            fmt = "<QQQ" if ptr == 8 else "<III"
            struct.pack_into(
                fmt, data, at, value, vaddr0 + where[e.name], vaddr0 + where[e.namespace]
            )
    _align(data, 0x1000)
    kallsyms_at = len(data)

    def va(off: int) -> int:
        return vaddr0 + off

    gpl_at = ksymtab_at + entry * len(plain)
    extra = [
        Sym("D", "linux_banner", va(banner_at)),
        Sym("R", "__start___ksymtab", va(ksymtab_at)),
        Sym("R", "__stop___ksymtab", va(gpl_at)),
        Sym("R", "__start___ksymtab_gpl", va(gpl_at)),
        Sym("R", "__stop___ksymtab_gpl", va(kcrctab_at)),
        Sym("R", "__start___kcrctab", va(kcrctab_at)),
        Sym("R", "__start___kcrctab_gpl", va(kcrctab_at + 4 * len(plain))),
        Sym("D", "__start_rodata", va(strings_at)),
    ]
    extra += [
        Sym("r", f"__ksymtab_{e.name}", va(ksymtab_at + i * entry))
        for i, e in enumerate(plain + gpl)
    ]
    if percpu:
        extra += [
            Sym("D", "__per_cpu_start", 0),
            Sym("D", "fixed_percpu_data", 0),
            Sym("d", "static_pcpu", 0x40),
            Sym("D", "__per_cpu_end", 0x1000),
        ]
    everything = sorted(syms + extra, key=lambda s: s.addr)  # stable: input order on ties
    if code_only:
        everything = [Sym("T" if s.letter.isupper() else "t", s.name, s.addr) for s in everything]
    blob, labels, stored = encode_kallsyms(
        everything,
        order=order,
        ptr=ptr,
        absolute_percpu=absolute_percpu,
        base_relative=base_relative,
        seqs=seqs,
    )
    data += blob
    data += b"\xee" * 64
    # the ELF: header, PT_LOAD (the whole data), PT_NOTE
    seg = bytes(data)
    if ptr == 8:
        phoff, phsize = 64, 56
        head = (
            b"\x7fELF"
            + bytes((2, 1, 1))
            + b"\0" * 9
            + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, text, phoff, 0, 0, 64, phsize, 2, 64, 0, 0)
        )
        ph = struct.pack(
            "<IIQQQQQQ", 1, 5, SEGMENT_AT, vaddr0, vaddr0 & 0xFFFFFFF, len(seg), len(seg), 0x1000
        )
        ph += struct.pack(
            "<IIQQQQQQ",
            4,
            4,
            SEGMENT_AT + notes_at,
            va(notes_at),
            0,
            12 + 4 + len(BUILD_ID),
            12 + 4 + len(BUILD_ID),
            4,
        )
    else:
        phoff, phsize = 52, 32
        head = (
            b"\x7fELF"
            + bytes((1, 1, 1))
            + b"\0" * 9
            + struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, text, phoff, 0, 0, 52, phsize, 2, 40, 0, 0)
        )
        ph = struct.pack(
            "<IIIIIIII", 1, SEGMENT_AT, vaddr0, vaddr0 & 0xFFFFFFF, len(seg), len(seg), 5, 0x1000
        )
        ph += struct.pack(
            "<IIIIIIII",
            4,
            SEGMENT_AT + notes_at,
            va(notes_at),
            0,
            12 + 4 + len(BUILD_ID),
            12 + 4 + len(BUILD_ID),
            4,
            4,
        )
    elf = bytearray(head + ph)
    elf += b"\0" * (SEGMENT_AT - len(elf))
    elf += seg
    elf += b"RELOCS" * 4  # (vmlinux.relocs follows the ELF)
    tables = {k: SEGMENT_AT + kallsyms_at + v for k, v in labels.items()}
    return Image(bytes(elf), stored, exports, tables)


# --- the bzImage ----------------------------------------------------------------------
def compress(data: bytes, fmt: str) -> bytes | None:
    """``data`` compressed as the kernel's Makefiles do (None: tool not installed)."""
    if fmt == "gzip":
        return gzip.compress(data, 9)
    if fmt == "xz":
        return lzma.compress(data, lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    if fmt == "lzma":
        return lzma.compress(data, lzma.FORMAT_ALONE)
    if fmt == "bzip2":
        return bz2.compress(data, 9)
    cmd = {
        "zstd": ["zstd", "-q", "-c", "-19"],
        "lz4": ["lz4", "-q", "-l", "-c"],
        "lzo": ["lzop", "-q", "-c"],
    }[fmt]
    if not shutil.which(cmd[0]):
        return None
    return subprocess.run(cmd, input=data, capture_output=True, check=True).stdout


def bzimage(
    vmlinux: bytes,
    fmt: str = "xz",
    *,
    version: str = f"{RELEASE} (t@t) #1 SMP",
    protocol: int = 0x020F,
    payload: bytes | None = None,
) -> bytes:
    """An x86 bzImage around ``vmlinux``: 4 setup sectors with the setup header, a stub,
    then the payload (compressed vmlinux + its size, 4 bytes little-endian)."""
    setup = bytearray(5 * 512)
    setup[0x1F1] = 4
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, protocol)
    vs = version.encode() + b"\0"
    setup[0x400 : 0x400 + len(vs)] = vs
    struct.pack_into("<H", setup, 0x20E, 0x400 - 0x200)
    if payload is None:
        packed = compress(vmlinux, fmt)
        assert packed is not None, f"{fmt} tool missing"
        payload = packed + struct.pack("<I", len(vmlinux))
    stub = b"\x90" * 0x300
    struct.pack_into("<II", setup, 0x248, len(stub), len(payload))
    return bytes(setup) + stub + payload + b"\0" * 32

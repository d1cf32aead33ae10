"""vmlinux's symbols from the compressed kernel image alone: its kallsyms tables.

Why: a distribution kernel's image package (Debian: ``boot/vmlinuz-<release>``, 70 MB
with the modules) carries the kernel's own symbol table, the kallsyms tables that
``scripts/kallsyms`` generated at build time (every symbol with ``KALLSYMS_ALL``, which
``LIVEPATCH`` depends on).  Those tables are exactly what the livepatch core walks:
``klp_find_object_symbol()`` (kernel/livepatch/core.c) counts names through
``kallsyms_on_each_symbol()`` (v6.1) or ``kallsyms_on_each_match_symbol()`` (v6.2+),
so they are the truth for vmlinux's names, order and sympos, and the 855 MB ``-dbg``
package is not needed to know them.

Reading takes four steps; each names the kernel code that fixes the format (read for
the facts, nothing copied):

1. **The payload** (:func:`payload_of`).  An x86 bzImage starts with the real-mode
   setup whose header (Documentation/x86/boot.rst, ``HdrS`` at 0x202) says, since boot
   protocol 2.08, where the compressed kernel is: ``payload_offset`` (0x248, from the
   start of the protected-mode code, which follows the ``setup_sects`` + 1 sectors of
   setup) and ``payload_length`` (0x24c).  arch/x86/boot/compressed/Makefile compresses
   ``vmlinux.bin`` (``objcopy -S`` of vmlinux: an ELF whose symbol table is stripped but
   whose program and section headers remain, followed by the relocations of a
   relocatable kernel) and appends its size as 4 little-endian bytes (``size_append``;
   ``mkpiggy`` reads it back), so the last 4 bytes of the payload are the decompressed
   size, checked here.
2. **Decompression** (:class:`Inflater`), streamed: the tables sit in ``.rodata``, a
   third of the way into a 66 MB vmlinux, so decompression stops once they (and
   ``.notes``, the export tables) have come out.  gzip, bzip2, xz and lzma with the
   standard library (the formats of lib/decompress_*.c); zstd, lz4 and lzo with their
   command-line tools when installed, else an error naming the format.
3. **Locating the tables** (:func:`find_kallsyms`): the payload has no symbol table, so
   ``kallsyms_token_table`` & co. are found by their shape (see each ``_find_*``), and
   the shape is checked end to end (every token offset, every marker, the addresses'
   order, and the names against ``kallsyms_seqs_of_names``' order where there is one),
   so a damaged image fails with one error instead of producing wrong symbols (a
   damaged character of a name in a kernel without that index goes unnoticed: the
   tables carry no checksum).
4. **Decoding** (kernel/kallsyms.c ``kallsyms_expand_symbol()``,
   ``kallsyms_sym_address()``): names, their type letters, addresses where the layout
   allows, and ``kallsyms_seqs_of_names`` when present.

:func:`read_image` does it all; :func:`read_vmlinuz` turns the result into database
records and :func:`build_from_vmlinuz` is the source built on it (a bare image, with its
modules when given); tests/symbols/test_image.py compares them with the ``-dbg`` route.
"""

from __future__ import annotations

import bz2
import codecs
import functools
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from array import array
from dataclasses import dataclass, field
from itertools import accumulate, islice
from operator import gt
from pathlib import Path
from typing import Any

from klpkit.errors import InputError
from klpkit.fileio import read_regular
from klpkit.symbols import rules
from klpkit.symbols.db import SymbolDB
from klpkit.symbols.elf_objects import apply_modules_dep, find_modules, gnu_build_id, scan_modules
from klpkit.symbols.finish import ProgressArg, finish, settle_release
from klpkit.symbols.model import ObjectRecord, SymbolSet
from klpkit.symbols.pages import column_records
from klpkit.symbols.speed import gc_paused
from klpkit.symbols.symvers import Export


class ImageError(InputError):
    """A kernel image whose symbols klpkit cannot read (damaged, or a format it does not
    know); always one line naming the file."""


MAX_IMAGE = 1 << 30  # a kernel image is ~10 MB; refuse to slurp more than 1 GiB
MAX_VMLINUX = 1 << 29  # a stripped vmlinux is ~70 MB; refuse to inflate past 512 MiB
WALK_BUDGET = 1 << 24  # kallsyms_names entries tried over all candidates (~100k real)
CHUNK = 4 << 20  # decompress in 4 MiB steps (stop as soon as the tables are out)
ELFMAG = b"\x7fELF"

# x86 setup header (Documentation/x86/boot.rst)
_HDR_MAGIC_AT = 0x202
_HDR_MAGIC = b"HdrS"
_SETUP_SECTS = 0x1F1
_VERSION_AT = 0x206
_KERNEL_VERSION_AT = 0x20E
_PAYLOAD_AT = 0x248  # payload_offset, payload_length (protocol 2.08+)

# compressed formats the kernel's boot decompressors accept (lib/decompress_*.c), by magic
_FORMATS = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\x89LZO", "lzo"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
# formats Python 3.11's standard library cannot read: (command, Debian package)
_TOOLS = {"zstd": ("zstd", "zstd"), "lz4": ("lz4", "lz4"), "lzo": ("lzop", "lzop")}


# --- 1. the payload ---------------------------------------------------------------------
@dataclass
class Payload:
    """The compressed vmlinux inside an image (or the vmlinux itself)."""

    data: bytes  # compressed bytes, size trailer removed
    compression: str  # 'xz', 'gzip', ..., or 'none' (an ELF given directly)
    size: int | None  # decompressed size the image declares
    version: str = ""  # the setup header's kernel_version string


def payload_of(image: bytes, path: str | None = None) -> Payload:
    """The compressed payload of a bzImage, or an uncompressed ELF vmlinux as is."""
    if image[:4] == ELFMAG:
        return Payload(image, "none", len(image))
    if len(image) < _PAYLOAD_AT + 8 or image[_HDR_MAGIC_AT : _HDR_MAGIC_AT + 4] != _HDR_MAGIC:
        raise ImageError(
            "not a kernel image: no x86 bzImage setup header ('HdrS' at "
            "0x202) and not an ELF vmlinux",
            path=path,
        )
    (proto,) = struct.unpack_from("<H", image, _VERSION_AT)
    if proto < 0x208:
        raise ImageError(
            f"bzImage boot protocol {proto >> 8}.{proto & 0xFF:02d} has no "
            f"payload fields (they came with 2.08, Linux 2.6.26)",
            path=path,
        )
    version = ""
    (vptr,) = struct.unpack_from("<H", image, _KERNEL_VERSION_AT)
    if vptr and vptr + 0x200 < len(image):
        raw = image[vptr + 0x200 : vptr + 0x200 + 512].split(b"\0", 1)[0]
        version = raw.decode("ascii", "replace")
    offset, length = struct.unpack_from("<II", image, _PAYLOAD_AT)
    start = ((image[_SETUP_SECTS] or 4) + 1) * 512 + offset
    if length < 8 or start + length > len(image):
        raise ImageError(
            f"the setup header's payload ({length} bytes at {start:#x}) does "
            f"not fit in the file ({len(image)} bytes)",
            path=path,
        )
    raw = image[start : start + length]
    fmt = next((name for magic, name in _FORMATS if raw.startswith(magic)), None)
    if fmt is None:
        raise ImageError(
            f"the bzImage payload is in no compression format the kernel "
            f"uses (starts {raw[:6].hex()})",
            path=path,
        )
    (size,) = struct.unpack_from("<I", raw, length - 4)
    if size > MAX_VMLINUX:
        raise ImageError(
            f"the bzImage declares a {size}-byte vmlinux, more than klpkit "
            f"inflates ({MAX_VMLINUX >> 20} MiB)",
            path=path,
        )
    return Payload(raw[:-4], fmt, size, version)


# --- 2. decompression ---------------------------------------------------------------------
class Inflater:
    """The decompressed vmlinux, produced on demand: :attr:`buf` grows by :data:`CHUNK`
    until :meth:`ensure` has what its caller needs.  Use as a context manager (a tool
    process may be running)."""

    def __init__(self, payload: Payload, path: str | None = None):
        self.path = path
        self.format = payload.compression
        self.declared = payload.size
        self.done = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: str | None = None
        self._dec: Any = None  # a decompressor object of lzma, bz2, zlib or zstd
        fmt = payload.compression
        if fmt == "none":
            self.buf = bytearray(payload.data)
            self.done = True
            return
        self.buf = bytearray()
        self._input = payload.data
        if fmt in ("xz", "lzma"):
            self._dec = lzma.LZMADecompressor(lzma.FORMAT_XZ if fmt == "xz" else lzma.FORMAT_ALONE)
        elif fmt == "bzip2":
            self._dec = bz2.BZ2Decompressor()
        elif fmt == "gzip":
            self._dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif fmt == "zstd" and _stdlib_zstd() is not None:
            self._dec = _stdlib_zstd().ZstdDecompressor()  # Python 3.14+
        else:
            self._start_tool(fmt)

    # life cycle
    def __enter__(self) -> Inflater:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            for pipe in (self._proc.stdout, self._proc.stderr):
                if pipe is not None:
                    pipe.close()
            self._proc = None
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except OSError:
                pass
            self._tmp = None

    # reading
    def ensure(self, end: int) -> bool:
        """Decompress until :attr:`buf` holds ``end`` bytes; False if the vmlinux is
        shorter."""
        while len(self.buf) < end and not self.done:
            self._step(max(CHUNK, end - len(self.buf)))
        return len(self.buf) >= end

    def more(self) -> bool:
        """Decompress one more chunk; False when everything is out already."""
        if self.done:
            return False
        self._step(CHUNK)
        return True

    def finish(self) -> bytearray:
        while not self.done:
            self._step(CHUNK)
        return self.buf

    def _limit(self, want: int) -> int:
        cap = min(self.declared if self.declared is not None else MAX_VMLINUX, MAX_VMLINUX) + 1
        return max(1, min(want, cap - len(self.buf)))

    def _inflate(self, want: int) -> bytes:
        """Up to ``want`` more bytes of vmlinux (fewer at the end)."""
        if self._proc is not None and self._proc.stdout is not None:
            chunk = self._proc.stdout.read(want)
            if not chunk:
                self._tool_ended()
            return chunk
        chunk = self._dec.decompress(self._input, want)
        gzip = self.format == "gzip"
        self._input = self._dec.unconsumed_tail if gzip else b""
        if self._dec.eof:
            self.done = True
        elif not chunk and (not self._input if gzip else self._dec.needs_input):
            self._fail(f"the {self.format} payload is truncated")
        return chunk

    def _step(self, want: int) -> None:
        want = self._limit(want)
        try:
            chunk = self._inflate(want)
        except (lzma.LZMAError, zlib.error, OSError, EOFError, ValueError) as e:
            self._fail(f"the {self.format} payload is damaged: {_one_line(e)}")
        except Exception as e:  # compression.zstd's own error class (Python 3.14+)
            if self.format == "zstd" and self._dec is not None:
                self._fail(f"the {self.format} payload is damaged: {_one_line(e)}")
            raise
        self.buf += chunk
        if len(self.buf) > MAX_VMLINUX:
            self._fail(f"the payload inflates past {MAX_VMLINUX >> 20} MiB, more than any vmlinux")
        if self.declared is not None and len(self.buf) > self.declared:
            self._fail(
                f"the payload decompresses to more than the {self.declared} bytes "
                f"the image declares"
            )
        if self.done and self.declared is not None and len(self.buf) != self.declared:
            self._fail(
                f"the payload decompresses to {len(self.buf)} bytes, the image "
                f"declares {self.declared}"
            )

    def _fail(self, message: str):
        self.done = True
        raise ImageError(message, path=self.path)

    # formats the standard library lacks: their command-line tool, reading its output as
    # it comes (stdout is a pipe, the tool is killed once enough is out)
    def _start_tool(self, fmt: str) -> None:
        cmd, package = _TOOLS[fmt]
        exe = shutil.which(cmd)
        if exe is None:
            raise ImageError(
                f"the kernel image is {fmt}-compressed: Python's standard "
                f"library cannot decompress {fmt} and the '{cmd}' command is "
                f"not installed (apt-get install {package})",
                path=self.path,
            )
        fd, tmp = tempfile.mkstemp(prefix="klpkit-vmlinuz-", suffix=f".{fmt}")
        self._tmp = tmp
        with os.fdopen(fd, "wb") as f:
            f.write(self._input)
        self._input = b""
        self._cmd = cmd
        self._proc = subprocess.Popen(
            [exe, "-d", "-c", "-q", tmp],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def _tool_ended(self) -> None:
        proc = self._proc
        if proc is None:
            return
        rc = proc.wait()
        err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
        self.done = True
        if rc != 0:
            lines = [line.strip() for line in err.splitlines() if line.strip()]
            self._fail(
                f"the {self.format} payload is damaged: {self._cmd} says "
                f"{lines[-1] if lines else f'exit status {rc}'}"
            )


def _stdlib_zstd():
    try:
        from compression import zstd  # type: ignore[import-not-found]  # Python 3.14+
    except ImportError:
        return None
    return zstd


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# --- the ELF header and program headers of the payload ------------------------------------
@dataclass
class ElfLayout:
    """What the payload's ELF header and program headers say (they come first in the
    file; the section headers come last, and are not needed)."""

    elf64: bool
    little_endian: bool
    type: int
    machine: int
    loads: list[tuple[int, int, int]]  # PT_LOAD: (vaddr, file offset, file size)
    notes: list[tuple[int, int]]  # PT_NOTE: (file offset, size)

    @property
    def ptr(self) -> int:
        """Bytes of a pointer: scripts/kallsyms aligns each table to it (``ALGN``)."""
        return 8 if self.elf64 else 4

    @property
    def end(self) -> str:
        return "<" if self.little_endian else ">"

    def offset_of(self, vaddr: int, size: int = 1) -> int | None:
        """The file offset of ``size`` bytes at ``vaddr``, None when no segment has them."""
        for start, off, filesz in self.loads:
            if start <= vaddr and vaddr + size <= start + filesz:
                return off + vaddr - start
        return None

    def segment_start(self, offset: int) -> int:
        """File offset where the loaded segment holding ``offset`` starts (0 if none)."""
        for _v, off, filesz in self.loads:
            if off <= offset < off + filesz:
                return off
        return 0


def elf_layout(inf: Inflater) -> ElfLayout:
    fail = ImageError("the decompressed payload is not an ELF vmlinux", path=inf.path)
    if (
        not inf.ensure(64)
        or inf.buf[:4] != ELFMAG
        or inf.buf[4] not in (1, 2)
        or inf.buf[5] not in (1, 2)
    ):
        raise fail
    elf64, le = inf.buf[4] == 2, inf.buf[5] == 1
    e = "<" if le else ">"
    if elf64:
        etype, machine = struct.unpack_from(e + "HH", inf.buf, 16)
        (phoff,) = struct.unpack_from(e + "Q", inf.buf, 32)
        phentsize, phnum = struct.unpack_from(e + "HH", inf.buf, 54)
        fmt, need = e + "IIQQQQ", 56
    else:
        etype, machine = struct.unpack_from(e + "HH", inf.buf, 16)
        (phoff,) = struct.unpack_from(e + "I", inf.buf, 28)
        phentsize, phnum = struct.unpack_from(e + "HH", inf.buf, 42)
        fmt, need = e + "IIIIII", 32
    if phentsize < need or phnum == 0 or phnum > 4096 or not inf.ensure(phoff + phentsize * phnum):
        raise ImageError("the vmlinux in the image has no readable program headers", path=inf.path)
    loads, notes = [], []
    for i in range(phnum):
        f = struct.unpack_from(fmt, inf.buf, phoff + i * phentsize)
        if elf64:
            ptype, _flags, off, vaddr, _paddr, filesz = f
        else:
            ptype, off, vaddr, _paddr, filesz, _mem = f
        if ptype == 1:
            loads.append((vaddr, off, filesz))
        elif ptype == 4:
            notes.append((off, filesz))
    return ElfLayout(elf64, le, etype, machine, loads, notes)


# --- 3 & 4. the kallsyms tables -------------------------------------------------------------
@dataclass
class Kallsyms:
    """vmlinux's kallsyms table in kernel order (the table's own order)."""

    entries: list[str]  # expanded entries: type letter + name
    addresses: list[int] | None  # None when no address layout validated
    seqs_raw: bytes | None = None  # kallsyms_seqs_of_names (v6.2, backported), 3 bytes each
    found: dict[str, int] = field(default_factory=dict)  # table -> file offset in vmlinux

    def __len__(self) -> int:
        return len(self.entries)

    @functools.cached_property
    def names(self) -> list[str]:
        return [e[1:] for e in self.entries]

    @property
    def types(self) -> str:
        """The type letters, one per symbol (``kallsyms_get_symbol_type()``)."""
        return "".join([e[0] for e in self.entries])

    @property
    def seqs_of_names(self) -> list[int] | None:
        """kallsyms_seqs_of_names: table positions in name order (``get_symbol_seq()``:
        3 bytes, most significant first)."""
        return None if self.seqs_raw is None else _decode_seqs(self.seqs_raw)

    def address_of(self, name: str) -> int | None:
        """The address of the first symbol called ``name`` (None: absent or no addresses)."""
        if self.addresses is None:
            return None
        for i, e in enumerate(self.entries):
            if e.endswith(name) and len(e) == len(name) + 1:
                return self.addresses[i]
        return None


_U32 = next(code for code in "IL" if array(code).itemsize == 4)


def _decode_seqs(raw: bytes) -> list[int]:
    """3-byte big-endian positions, read as 32-bit words (a zero byte in front of each)
    in one go rather than one ``int`` at a time."""
    words = bytearray(len(raw) // 3 * 4)
    words[1::4], words[2::4], words[3::4] = raw[0::3], raw[1::3], raw[2::3]
    seqs = array(_U32, words)
    if sys.byteorder == "little":
        seqs.byteswap()
    return seqs.tolist()


# Every character used in some symbol name keeps its own code as a one-character token
# (scripts/kallsyms.c insert_real_symbols_in_table(); only the unused codes get
# multi-character tokens), and every real kernel has names with each lower-case letter,
# so tokens 0x61..0x7a read "a\0b\0...z\0": a 52-byte string the token table holds and
# .rodata otherwise hardly ever does.  It only points at candidates; the whole table is
# then checked.
_TOKEN_ANCHOR = b"".join(bytes((c, 0)) for c in range(0x61, 0x7B))
_ANCHOR_TOKEN = 0x61


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def _token_table_at(buf: bytearray, hit: int, ptr: int, e: str):
    """(table offset, index offset, tokens) when the anchor at ``hit`` is in a real
    kallsyms_token_table followed by its kallsyms_token_index, else None.

    scripts/kallsyms.c write_src(): the table is 256 NUL-terminated, non-empty tokens;
    then, aligned to a pointer (``ALGN``), the index: 256 u16 offsets of the tokens in the
    table (``kallsyms_expand_symbol()`` reads ``token_table[token_index[byte]]``)."""
    p = hit
    for _ in range(0x100 - _ANCHOR_TOKEN):  # to the end of token 0xff
        q = buf.find(b"\0", p, p + 0x10000)
        if q <= p:  # not found, or an empty token
            return None
        p = q + 1
    index_at = _align(p, ptr)
    if index_at + 512 > len(buf) or any(buf[p:index_at]):
        return None
    index = struct.unpack_from(e + "256H", buf, index_at)
    start = hit - index[_ANCHOR_TOKEN]
    if index[0] != 0 or start < 0 or start % ptr:
        return None
    tokens = bytes(buf[start : p - 1]).split(b"\0")
    if len(tokens) != 256 or not all(tokens):
        return None
    if list(accumulate((len(t) + 1 for t in tokens[:-1]), initial=0)) != list(index):
        return None
    return start, index_at, tokens


def _find_token_table(inf: Inflater, ptr: int, e: str):
    """(table offset, index offset, tokens): the first anchor (``_TOKEN_ANCHOR``) that is
    in a real token table, decompressing chunk by chunk until one is."""
    searched = 0
    while True:
        hit = inf.buf.find(_TOKEN_ANCHOR, searched)
        if hit < 0:
            searched = max(0, len(inf.buf) - len(_TOKEN_ANCHOR) + 1)
            if not inf.more():
                raise ImageError(
                    "no kallsyms token table in the kernel image (was it "
                    "built without CONFIG_KALLSYMS?)",
                    path=inf.path,
                )
            continue
        inf.ensure(hit + 0x10000 * 2)  # the rest of the table and its index
        found = _token_table_at(inf.buf, hit, ptr, e)
        if found is not None:
            return found
        searched = hit + 1


def _small_words(buf, lo: int, hi: int, ptr: int, swap: bool) -> list[tuple[int, int]]:
    """(offset, value) of the pointer-aligned words in ``buf[lo:hi]`` whose value is in
    1..2^24-1 (``lo`` aligned), in address order.  (One C-level array read and one
    comprehension: cheaper than finding the words' zero bytes with a regex, measured.)"""
    words = array("Q" if ptr == 8 else _U32, bytes(buf[lo:hi]))
    if swap:
        words.byteswap()
    return [(lo + i * ptr, v) for i, v in enumerate(words) if 0 < v < 0x1000000]


def _names_walk(buf, start: int, count: int, limit: int, letter: bytes, charmap: dict):
    """((entries, marks, end), entries walked): the ``count`` entries of kallsyms_names
    from ``start`` expanded (type letter first), the offset of every 256th entry's length
    byte and where the stream ends; None (and how far it got) as soon as the stream stops
    looking like one.

    Each entry (scripts/kallsyms.c write_src(), ``kallsyms_expand_symbol()``): its length
    in one byte, or two (ULEB128: bit 7 set, 7 bits each) from v6.1 on, then that many
    token bytes; the first token expands to a string starting with the type letter
    (``letter[byte]`` says whether it does).  Each entry is expanded as it is walked, by
    one C-level ``charmap`` decode with the tokens as the character map (the cheapest
    expansion measured: a third faster than joining tokens in Python)."""
    pos = start
    entries: list[str] = []
    marks: list[int] = []
    put = entries.append
    decode = codecs.charmap_decode
    for block in range(0, count, 256):
        marks.append(pos - start)
        for _ in range(min(256, count - block)):
            if pos + 2 > limit:
                return None, len(entries)
            n = buf[pos]
            if n & 0x80:
                n = (n & 0x7F) | (buf[pos + 1] << 7)
                pos += 1
            pos += 1
            if not n or not letter[buf[pos]]:
                return None, len(entries)
            put(decode(buf[pos : pos + n], "strict", charmap)[0])
            pos += n
    if pos > limit:
        return None, count
    return (entries, marks, pos), count


def _markers_match(buf, at: int, marks: list[int], e: str) -> bool:
    """kallsyms_markers: the offset in kallsyms_names of every 256th entry's length
    byte (``get_symbol_offset()`` starts its walk there)."""
    count = len(marks)
    if at + 4 * count > len(buf):
        return False
    return list(struct.unpack_from(f"{e}{count}I", buf, at)) == marks


def _find_names(inf: Inflater, lay: ElfLayout, table_at: int, tokens: list[bytes]):
    """(num_syms offset, names offset, entries, markers offset): the entries expanded,
    type letter first.

    kallsyms_num_syms is an ``unsigned int`` followed, after ``ALGN``, by
    kallsyms_names, whose ``(num_syms + 255) / 256`` markers come next; all of it precedes
    the token table in every kernel (the v6.4 reorder, "scripts/kallsyms: change the
    output order", kept num_syms, names, markers, token table in that order).  Candidates
    are the pointer-aligned words below the token table holding a plausible count
    (1..2^24: kallsyms_seqs_of_names stores 3 bytes per position) followed by zero
    padding, nearest first; the first whose names walk and markers check out wins."""
    buf, ptr, e = inf.buf, lay.ptr, lay.end
    letter = bytes(t[:1].isalpha() for t in tokens)
    charmap = {i: t.decode("latin-1") for i, t in enumerate(tokens)}
    low = lay.segment_start(table_at)
    hi = table_at - table_at % ptr
    window = 1 << 20
    budget = WALK_BUDGET
    swap = (sys.byteorder == "little") != lay.little_endian
    while hi > low:
        lo = max(low, hi - window)
        lo += -lo % ptr
        for at, count in reversed(_small_words(buf, lo, hi, ptr, swap)):
            names_at = at + ptr
            if count * 2 > table_at - names_at:
                continue
            first = names_at + 1 + (buf[names_at] >> 7)
            if not buf[names_at] or not letter[buf[first]]:
                continue
            walked, steps = _names_walk(buf, names_at, count, table_at, letter, charmap)
            budget -= steps
            if budget < 0:
                raise ImageError(
                    "no kallsyms_names stream found before the token table "
                    "(search budget spent: damaged image?)",
                    path=inf.path,
                )
            if walked is None:
                continue
            entries, marks, end = walked
            markers_at = _align(end, ptr)
            if _markers_match(buf, markers_at, marks, e):
                if not all(map(bytes.isascii, tokens)):
                    # names are UTF-8 and a token may hold part of a character: decoded
                    # byte-wise above, re-read as UTF-8 here
                    entries = [
                        n if n.isascii() else n.encode("latin-1").decode("utf-8", "surrogateescape")
                        for n in entries
                    ]
                return at, names_at, entries, markers_at
        hi = lo
    raise ImageError(
        "the kernel image has a kallsyms token table but no kallsyms_names "
        "stream that fits it (damaged image?)",
        path=inf.path,
    )


def _addresses(inf: Inflater, lay: ElfLayout, num_at: int, count: int, index_at: int):
    """(addresses, where, end of the address tables) for the first address layout that
    decodes to a table sorted by address (scripts/kallsyms.c sorts it so;
    compare_symbols()), else (None, {}, None).

    Layouts (scripts/kallsyms.c write_src(); kernel/kallsyms.c kallsyms_sym_address()):
    * ``CONFIG_KALLSYMS_BASE_RELATIVE``: kallsyms_offsets (``int`` each) and
      kallsyms_relative_base (a pointer): v6.1 puts them before kallsyms_num_syms, v6.4+
      after kallsyms_token_index.  With ``--absolute-percpu`` (x86_64 SMP) an offset >= 0
      is an absolute value (a per-cpu symbol) and a negative one means
      ``relative_base - 1 - offset``; otherwise every offset is ``relative_base + (u32)``.
    * without it, kallsyms_addresses: one pointer per symbol, same places."""
    buf, ptr, e = inf.buf, lay.ptr, lay.end
    pfmt = "Q" if ptr == 8 else "I"
    candidates: list[tuple[str, int, int | None]] = []
    # (offsets, relative base) before num_syms: offsets, ALGN, base, num_syms
    before = num_at - ptr
    candidates.append(("relative", (before - 4 * count) // ptr * ptr, before))
    after = _align(index_at + 512, ptr)
    candidates.append(("relative", after, _align(after + 4 * count, ptr)))
    candidates.append(("absolute", (num_at - ptr * count) // ptr * ptr, None))
    candidates.append(("absolute", after, None))
    for kind, at, base_at in candidates:
        size = (4 if kind == "relative" else ptr) * count
        if at < 0 or base_at is not None and base_at < 0 or not inf.ensure(at + size + ptr):
            continue
        if kind == "absolute" or base_at is None:
            addrs = list(struct.unpack_from(f"{e}{count}{pfmt}", buf, at))
            if _sorted(addrs):
                return addrs, {"kallsyms_addresses": at}, at + size
            continue
        (base,) = struct.unpack_from(e + pfmt, buf, base_at)
        offs = struct.unpack_from(f"{e}{count}i", buf, at)
        if not offs:
            continue
        where = {"kallsyms_offsets": at, "kallsyms_relative_base": base_at}
        first_negative = next((o for o in offs if o < 0), None)
        modes = ("relative", "percpu") if first_negative is None else ("percpu", "relative")
        for mode in modes:
            if mode == "relative" and offs[0] == 0:
                # every offset from the base, the first symbol's address
                # (record_relative_base())
                addrs = [base + (o & 0xFFFFFFFF) for o in offs]
            elif mode == "percpu" and first_negative in (None, -1):
                # --absolute-percpu: absolute values first (per-cpu symbols, linked from
                # 0), then the first non-absolute symbol at the base (offset -1)
                mask = (1 << (8 * ptr)) - 1
                addrs = [o if o >= 0 else (base - 1 - o) & mask for o in offs]
            else:
                continue
            if _sorted(addrs):
                return addrs, where, base_at + ptr
    return None, {}, None


def _sorted(values: list[int]) -> bool:
    """Sorted as scripts/kallsyms sorts the table, and not a run of equal values (zero
    padding before the tables would otherwise read as a table of aliases)."""
    return values == sorted(values) and len(set(values)) * 4 > len(values)


def _seqs(
    inf: Inflater,
    lay: ElfLayout,
    count: int,
    markers_end: int,
    table_at: int,
    addresses_end: int | None,
) -> tuple[bytes | None, int | None]:
    """kallsyms_seqs_of_names (v6.2 "kallsyms: Improve the performance of
    kallsyms_lookup_name()", backported to Debian's 6.1): 3 bytes per symbol, between the
    markers and the token table (v6.2..v6.3) or after the address tables (v6.4+).
    Between markers and token table it must fill the gap exactly; after the base it must
    be a permutation of the table positions.  None when absent."""
    ptr = lay.ptr
    places = [_align(markers_end, ptr)]
    if addresses_end is not None:
        places.append(_align(addresses_end, ptr))
    for at in places:
        end = at + 3 * count
        fits = at == places[0]
        if fits and _align(end, ptr) != table_at:
            continue
        if not inf.ensure(end):
            continue
        raw = bytes(inf.buf[at:end])
        if fits:  # exactly fills the gap up to the token table: v6.2..v6.3's layout
            return raw, at
        seqs = set(_decode_seqs(raw))
        if len(seqs) == count and max(seqs, default=-1) == count - 1:
            return raw, at
    return None, None


def find_kallsyms(inf: Inflater, lay: ElfLayout) -> Kallsyms:
    """Locate and decode the kallsyms tables of the vmlinux ``inf`` produces."""
    table_at, index_at, tokens = _find_token_table(inf, lay.ptr, lay.end)
    num_at, names_at, entries, markers_at = _find_names(inf, lay, table_at, tokens)
    count = len(entries)
    # (the walk checked each entry's first token starts with a letter)
    if entries and min(map(len, entries)) < 2:
        raise ImageError(
            "a kallsyms entry has a type letter but no name (damaged kallsyms_names?)",
            path=inf.path,
        )
    addrs, where, addresses_end = _addresses(inf, lay, num_at, count, index_at)
    markers_end = markers_at + 4 * ((count + 255) // 256)
    seqs, seqs_at = _seqs(inf, lay, count, markers_end, table_at, addresses_end)
    found = {
        "kallsyms_num_syms": num_at,
        "kallsyms_names": names_at,
        "kallsyms_markers": markers_at,
        "kallsyms_token_table": table_at,
        "kallsyms_token_index": index_at,
        **where,
    }
    if seqs_at is not None:
        found["kallsyms_seqs_of_names"] = seqs_at
    ks = Kallsyms(entries, addrs, seqs, found)
    if seqs is not None:
        _check_name_order(ks, inf.path)
    return ks


def _check_name_order(ks: Kallsyms, path: str | None) -> None:
    """The names must be in kallsyms_seqs_of_names' order: scripts/kallsyms.c
    sort_symbols_by_name() sorted the positions by name (strcmp, type letter excluded;
    after cleanup_symbol_name(), which cuts ``.llvm.`` suffixes, with clang LTO).  A
    table whose tokens or names were damaged but kept their shape fails here."""
    seqs = ks.seqs_of_names
    if seqs is None:
        return
    count = len(ks.entries)
    if max(seqs, default=-1) >= count:
        raise ImageError("kallsyms_seqs_of_names points past the table (damaged image?)", path=path)
    names = ks.names
    ordered = list(map(names.__getitem__, seqs))
    if ".llvm." in "\0".join(ordered):
        ordered = [n.split(".llvm.", 1)[0] for n in ordered]
    # (compare names as the kernel's strcmp() does: bytes; here one code point per byte,
    # or UTF-8, whose code point order is its byte order)
    if any(map(gt, ordered, islice(ordered, 1, None))):
        raise ImageError(
            "the kallsyms names are not in kallsyms_seqs_of_names' order "
            "(damaged token table or names?)",
            path=path,
        )


# --- the export table ---------------------------------------------------------------------
_EXPORT_TYPES = (
    ("__ksymtab", "__kcrctab", "EXPORT_SYMBOL"),
    ("__ksymtab_gpl", "__kcrctab_gpl", "EXPORT_SYMBOL_GPL"),
)


def read_exports(inf: Inflater, lay: ElfLayout, ks: Kallsyms) -> list[Export]:
    """vmlinux's exports from its own export tables, found through kallsyms.

    kernel/module/main.c find_exported_symbol_in_section(): ``__ksymtab`` and
    ``__ksymtab_gpl`` hold one ``struct kernel_symbol`` per export, sorted by name, from
    ``__start___ksymtab[_gpl]`` to ``__stop___ksymtab[_gpl]``; with
    ``CONFIG_HAVE_ARCH_PREL32_RELOCATIONS`` (x86_64) an entry is three ``int`` offsets
    from the field itself (value, name, namespace; include/linux/export.h), else three
    pointers.  ``symversion()`` reads the CRC of entry ``i`` at ``__kcrctab[_gpl][i]``
    (``CONFIG_MODVERSIONS``).  A namespace is "" when there is none.  Each entry is
    cross-checked with the ``__ksymtab_<name>`` symbol kallsyms has at its address."""
    if ks.addresses is None:
        raise ImageError(
            "cannot read vmlinux's exports: the kallsyms addresses did not "
            "decode (pass --symvers Module.symvers)",
            path=inf.path,
        )
    at, entry_names = _export_marks(ks, ks.addresses)
    out: list[Export] = []
    for tab, crctab, etype in _EXPORT_TYPES:
        start, stop = at.get("__start_" + tab), at.get("__stop_" + tab)
        if start is None or stop is None or stop < start:
            continue
        count = sum(1 for a in entry_names if start <= a < stop)
        if count:
            crc_at = at.get("__start_" + crctab)
            out += _export_table(inf, lay, (tab, etype), (start, stop, count), crc_at, entry_names)
    return out


def _export_marks(ks: Kallsyms, addresses: list[int]) -> tuple[dict[str, int], dict[int, str]]:
    """The addresses of the export tables' start and stop symbols, and the exported name
    of each ``__ksymtab_<name>`` symbol's address."""
    at: dict[str, int] = {}
    marks = {"__start_" + s for t in _EXPORT_TYPES for s in t[:2]} | {
        "__stop_" + t[0] for t in _EXPORT_TYPES
    }
    entry_names = {}
    for i, entry in enumerate(ks.entries):
        if entry.startswith("__", 1):  # (a C-level filter first: 1 in 5 do)
            name = entry[1:]
            if name in marks:
                at.setdefault(name, addresses[i])
            elif name.startswith("__ksymtab_"):
                entry_names[addresses[i]] = name[10:]
    return at, entry_names


def _export_table(
    inf: Inflater,
    lay: ElfLayout,
    table: tuple[str, str],
    span_of: tuple[int, int, int],
    crc_at: int | None,
    entry_names: dict[int, str],
) -> list[Export]:
    """The exports of one table (``__ksymtab`` or ``__ksymtab_gpl``: name, export type)
    from ``start`` to ``stop`` holding ``count`` entries, CRCs from ``crc_at``."""
    (tab, etype), (start, stop, count) = table, span_of
    e = lay.end
    span = stop - start
    if span % count or span // count not in (12, 3 * lay.ptr):
        raise ImageError(
            f"cannot read vmlinux's export table {tab}: {span} bytes for {count} exports",
            path=inf.path,
        )
    size = span // count
    prel = size == 12 and lay.elf64
    off = lay.offset_of(start, span)
    crc_off = lay.offset_of(crc_at, 4 * count) if crc_at is not None else None
    if (
        off is None
        or not inf.ensure(off + span)
        or crc_off is not None
        and not inf.ensure(crc_off + 4 * count)
    ):
        raise ImageError(
            f"vmlinux's export table {tab} is not in the image's loaded segments", path=inf.path
        )
    fields = struct.unpack_from(f"{e}{3 * count}{'i' if prel else _ptr(lay)}", inf.buf, off)
    crcs = (
        struct.unpack_from(f"{e}{count}I", inf.buf, crc_off)
        if crc_off is not None
        else [None] * count
    )
    starts = range(start, stop, size)
    if prel:
        name_addrs = [a + 4 + f for a, f in zip(starts, fields[1::3], strict=True)]
        ns_addrs = [a + 8 + f for a, f in zip(starts, fields[2::3], strict=True)]
    else:
        name_addrs, ns_addrs = list(fields[1::3]), list(fields[2::3])
    names = _cstrings(inf, lay, name_addrs)
    namespaces = _cstrings(inf, lay, ns_addrs)
    get = entry_names.get
    for i, (addr, name) in enumerate(zip(starts, names, strict=True)):
        if get(addr, name) != name:
            raise ImageError(
                f"vmlinux's export table {tab} disagrees with kallsyms at entry {i} ({name!r})",
                path=inf.path,
            )
    return [
        Export(name, "vmlinux", etype, ns or None, crc)
        for name, ns, crc in zip(names, namespaces, crcs, strict=True)
    ]


def _ptr(lay: ElfLayout) -> str:
    return "Q" if lay.elf64 else "I"


def _cstrings(inf: Inflater, lay: ElfLayout, addrs: list[int]) -> list[str]:
    """The NUL-terminated strings at ``addrs`` (exports' names and namespaces: at most
    KSYM_NAME_LEN bytes each, all in ``__ksymtab_strings``, so one segment)."""
    if not addrs:
        return []
    lo, hi = min(addrs), max(addrs)
    base = lay.offset_of(lo, hi - lo + 1)
    if base is None:
        raise ImageError(
            f"the export table's strings ({lo:#x}..{hi:#x}) are outside the "
            f"image's loaded segments",
            path=inf.path,
        )
    inf.ensure(base + hi - lo + 1024)
    buf = inf.buf
    find = buf.find
    offsets = [base + a - lo for a in addrs]
    ends = [find(b"\0", o, o + 1024) for o in offsets]
    if min(ends) < 0:
        bad = addrs[ends.index(-1)]
        raise ImageError(f"an export's name at {bad:#x} is not terminated", path=inf.path)
    return [buf[o:t].decode("utf-8", "surrogateescape") for o, t in zip(offsets, ends, strict=True)]


# --- all together --------------------------------------------------------------------------
@dataclass
class KernelImage:
    """What :func:`read_image` read from a kernel image."""

    path: str
    compression: str
    version: str  # the bzImage header's kernel_version ("" for an ELF)
    release: str | None  # from linux_banner, else the header's version string
    build_id: str
    machine: int
    kallsyms: Kallsyms
    exports: list[Export] | None
    decompressed: int  # bytes decompressed (reading stops after the tables)
    declared: int | None  # the vmlinux size the image declares


_BANNER = re.compile(rb"Linux version (\S+)")
# type letters of data symbols: kallsyms has them only with CONFIG_KALLSYMS_ALL
_DATA_LETTERS = re.compile("[bBdDrRgGsSvV]")


def read_image(
    path: str | os.PathLike, *, exports: bool = True, data: bytes | None = None
) -> KernelImage:
    """vmlinux's kallsyms table (and, with ``exports``, its export table) from a bzImage
    or an ELF vmlinux, decompressing only as far as they reach.  ``data``: the file's
    contents when already in memory (``path`` then only names it in errors)."""
    path = os.fspath(path)
    if data is None:
        data = read_regular(path, MAX_IMAGE, "kernel image")
    payload = payload_of(data, path)
    with Inflater(payload, path) as inf:
        try:
            lay = elf_layout(inf)
            ks = find_kallsyms(inf, lay)
            if not _DATA_LETTERS.search(ks.types):
                raise ImageError(
                    "the image's kallsyms holds code symbols only: the kernel "
                    "was built without CONFIG_KALLSYMS_ALL (which "
                    "CONFIG_LIVEPATCH needs)",
                    path=path,
                )
            build_id = ""
            for off, size in lay.notes:
                if size < 1 << 20 and inf.ensure(off + size):
                    build_id = gnu_build_id(inf.buf[off : off + size], lay.little_endian)
                    if build_id:
                        break
            release = _banner_release(inf, lay, ks)
            if release is None and payload.version:
                release = payload.version.split()[0]
            exps = read_exports(inf, lay, ks) if exports else None
        except (struct.error, IndexError, MemoryError) as e:  # a defect no check caught
            raise ImageError(f"damaged kernel image ({_one_line(e)})", path=path) from None
        return KernelImage(
            path,
            payload.compression,
            payload.version,
            release,
            build_id,
            lay.machine,
            ks,
            exps,
            len(inf.buf),
            payload.size,
        )


def _banner_release(inf: Inflater, lay: ElfLayout, ks: Kallsyms) -> str | None:
    """The release in ``linux_banner`` ("Linux version <release> ..."), as build.py reads
    it from a vmlinux with symbols."""
    addr = ks.address_of("linux_banner")
    off = lay.offset_of(addr, 64) if addr is not None else None
    if off is None or not inf.ensure(off + 256):
        return None
    m = _BANNER.match(bytes(inf.buf[off : off + 256]))
    return m.group(1).decode("ascii", "replace") if m else None


# --- the source: vmlinux (and modules) of a kernel image -----------------------------------
@gc_paused
def read_vmlinuz(
    path: str | os.PathLike, *, derive_exports: bool = True
) -> tuple[ObjectRecord, str, str | None, list[Export], KernelImage]:
    """vmlinux from a compressed kernel image (bzImage) or a stripped vmlinux: its
    kallsyms tables, decoded above.  Returns what
    :func:`klpkit.symbols.elf_objects.read_vmlinux` returns, and the image read.

    The table *is* the kernel's order and the kernel's selection of symbols (what
    :func:`rules.vmlinux_kallsyms` reconstructs from an ELF symbol table), and each
    entry's type letter gives binding and type (``rules.LETTER_FLAGS``)."""
    path = os.fspath(path)
    img = read_image(path, exports=derive_exports)
    letters = img.kallsyms.types.encode("latin-1")
    rows = column_records(0, img.kallsyms.names, letters.translate(rules.LETTER_FLAGS), path)
    rec = ObjectRecord("vmlinux", "vmlinux", path, rows, machine=img.machine)
    return rec, img.build_id, img.release, img.exports or [], img


@gc_paused
def build_from_vmlinuz(
    image: str | os.PathLike,
    *,
    modules_dir: str | os.PathLike | None = None,
    symvers: str | os.PathLike | None = None,
    release: str | None = None,
    db: str | os.PathLike | None = None,
    skip_bad: bool = False,
    progress: ProgressArg = None,
) -> SymbolDB:
    """A bare kernel image (bzImage, e.g. ``/boot/vmlinuz-$(uname -r)``, or a stripped
    vmlinux), and optionally its modules (a ``lib/modules/<release>`` tree): vmlinux's
    symbols from the image's kallsyms tables (:func:`read_vmlinuz`)."""
    image = Path(image)
    rec, build_id, found, vexports, _img = read_vmlinuz(image, derive_exports=symvers is None)
    release = settle_release(release, found, image, "image")
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
            progress=progress or None,
        )
        apply_modules_dep(symset, moddir)
        symset.sources.append(str(moddir.resolve()))
    return finish(symset, symvers, db)

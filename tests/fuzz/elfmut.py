"""Structured mutators over real ELF64 little-endian relocatable objects (kernel modules).

The mutants are made on the raw bytes with ``struct`` -- never with klpkit's own ELF
writer, which is code under test.  A renamed symbol or section gets its new name from a
copy of its string table appended at the end of the file (the section header then points
there): the rest of the file is untouched, so each mutant differs from a real module in
exactly the way its description says.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")
RELA = struct.Struct("<QQq")

SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_REL = 2, 3, 4, 8, 9
SHT_DYNSYM, SHT_GROUP, SHT_SYMTAB_SHNDX = 11, 17, 18
SHN_UNDEF, SHN_LIVEPATCH, SHN_ABS, SHN_COMMON, SHN_XINDEX = 0, 0xFF20, 0xFFF1, 0xFFF2, 0xFFFF
SHF_ALLOC, SHF_INFO_LINK, SHF_RELA_LIVEPATCH = 0x2, 0x40, 0x100000

SIG_MAGIC = b"~Module signature appended~\n"


@dataclass
class Section:
    index: int
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int
    header: int  # file offset of its section header


@dataclass
class Symbol:
    index: int
    name: str
    info: int
    shndx: int
    entry: int  # file offset of its entry


class Elf:
    """A read-only view of an ELF64 LE relocatable: sections, symbols, relocations."""

    def __init__(self, data: bytes):
        self.data = bytes(data)
        h = EHDR.unpack_from(self.data, 0)
        self.shoff, self.shnum, self.shstrndx = h[6], h[12], h[13]
        self.sections: list[Section] = []
        for i in range(self.shnum):
            off = self.shoff + i * SHDR.size
            f = SHDR.unpack_from(self.data, off)
            self.sections.append(Section(i, "", f[1], f[2], f[4], f[5], f[6], f[7], f[9], off))
        names = self.sections[self.shstrndx]
        for s in self.sections:
            s.name = self._cstr(names.offset + SHDR.unpack_from(self.data, s.header)[0])
        self.symtab = next(s for s in self.sections if s.type == SHT_SYMTAB)
        strtab = self.sections[self.symtab.link]
        self.symbols: list[Symbol] = []
        for i in range(self.symtab.size // SYM.size):
            off = self.symtab.offset + i * SYM.size
            st_name, info, _other, shndx, _v, _s = SYM.unpack_from(self.data, off)
            self.symbols.append(Symbol(i, self._cstr(strtab.offset + st_name), info, shndx, off))

    def _cstr(self, off: int) -> str:
        end = self.data.index(b"\0", off)
        return self.data[off:end].decode("utf-8", "surrogateescape")

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def relas(self) -> list[Section]:
        return [s for s in self.sections if s.type == SHT_RELA and s.size >= RELA.size]

    def undefined(self) -> list[Symbol]:
        return [s for s in self.symbols if s.shndx == SHN_UNDEF and s.name]

    def named(self, prefix: str) -> list[Symbol]:
        return [s for s in self.symbols if s.name.startswith(prefix)]


_SHDR_FIELDS = {  # field: (offset in Elf64_Shdr, struct format)
    "name": (0, "<I"),
    "type": (4, "<I"),
    "flags": (8, "<Q"),
    "addr": (16, "<Q"),
    "offset": (24, "<Q"),
    "size": (32, "<Q"),
    "link": (40, "<I"),
    "info": (44, "<I"),
    "align": (48, "<Q"),
    "entsize": (56, "<Q"),
}


def _set_shdr(buf: bytearray, sec: Section, field: str, value: int) -> None:
    off, fmt = _SHDR_FIELDS[field]
    struct.pack_into(fmt, buf, sec.header + off, value & ((1 << (8 * struct.calcsize(fmt))) - 1))


def set_shdr(data: bytes, elf: Elf, index: int, field: str, value: int) -> bytes:
    buf = bytearray(data)
    _set_shdr(buf, elf.sections[index], field, value)
    return bytes(buf)


def rename_symbols(data: bytes, elf: Elf, renames: dict[int, bytes]) -> bytes:
    """Give symbols new names (raw bytes): the string table is copied to the end of the
    file with the new names appended, and ``.symtab``'s ``sh_link`` table points there."""
    strtab = elf.sections[elf.symtab.link]
    table = bytearray(data[strtab.offset : strtab.offset + strtab.size])
    buf = bytearray(data)
    for index, name in renames.items():
        off = len(table)
        table += name + b"\0"
        struct.pack_into("<I", buf, elf.symbols[index].entry, off)
    return _move_table(buf, strtab, table)


def rename_section(data: bytes, elf: Elf, index: int, name: bytes) -> bytes:
    names = elf.sections[elf.shstrndx]
    table = bytearray(data[names.offset : names.offset + names.size])
    buf = bytearray(data)
    struct.pack_into("<I", buf, elf.sections[index].header, len(table))
    table += name + b"\0"
    return _move_table(buf, names, table)


def _move_table(buf: bytearray, sec: Section, table: bytes | bytearray) -> bytes:
    while len(buf) % 8:
        buf.append(0)
    _set_shdr(buf, sec, "offset", len(buf))
    _set_shdr(buf, sec, "size", len(table))
    return bytes(buf + table)


def set_symbol(data: bytes, sym: Symbol, *, info=None, shndx=None, value=None, size=None) -> bytes:
    buf = bytearray(data)
    st_name, i, other, sh, v, s = SYM.unpack_from(buf, sym.entry)
    SYM.pack_into(
        buf,
        sym.entry,
        st_name,
        i if info is None else info & 0xFF,
        other,
        sh if shndx is None else shndx & 0xFFFF,
        v if value is None else value & (2**64 - 1),
        s if size is None else size & (2**64 - 1),
    )
    return bytes(buf)


def set_rela(data: bytes, sec: Section, n: int, *, offset=None, sym=None, type=None, addend=None):
    buf = bytearray(data)
    at = sec.offset + n * RELA.size
    r_off, r_info, r_add = RELA.unpack_from(buf, at)
    s = r_info >> 32 if sym is None else sym & 0xFFFFFFFF
    t = r_info & 0xFFFFFFFF if type is None else type & 0xFFFFFFFF
    RELA.pack_into(
        buf,
        at,
        r_off if offset is None else offset & (2**64 - 1),
        (s << 32) | t,
        r_add if addend is None else max(-(2**63), min(2**63 - 1, addend)),
    )
    return bytes(buf)


# --- the plain ELF mutants (truncation, header, symbol, relocation, signature) ----------------

_EHDR_FIELDS = {  # field: (offset, struct format)
    "e_ident.class": (4, "B"),
    "e_ident.data": (5, "B"),
    "e_ident.version": (6, "B"),
    "e_type": (16, "<H"),
    "e_machine": (18, "<H"),
    "e_shoff": (40, "<Q"),
    "e_ehsize": (52, "<H"),
    "e_shentsize": (58, "<H"),
    "e_shnum": (60, "<H"),
    "e_shstrndx": (62, "<H"),
}


def _interesting(rng: random.Random, bits: int, near: int = 0) -> int:
    top = (1 << bits) - 1
    return (
        rng.choice(
            [0, 1, 2, near - 1, near, near + 1, top, top - 1, top >> 1, rng.randrange(top + 1)]
        )
        & top
    )


def truncate(rng: random.Random, data: bytes, elf: Elf) -> tuple[bytes, str]:
    points = [0, 1, 16, 63, 64, elf.shoff, elf.shoff + SHDR.size, len(data) - 1]
    points += [s.offset + rng.randrange(max(1, s.size)) for s in rng.sample(elf.sections, 3)]
    cut = max(0, min(len(data) - 1, rng.choice(points)))
    return data[:cut], f"truncated to {cut} bytes"


def header(rng: random.Random, data: bytes, elf: Elf) -> tuple[bytes, str]:
    field = rng.choice(list(_EHDR_FIELDS))
    off, fmt = _EHDR_FIELDS[field]
    size = struct.calcsize(fmt)
    near = {"e_shnum": elf.shnum, "e_shstrndx": elf.shstrndx, "e_shoff": elf.shoff}.get(field, 0)
    value = _interesting(rng, 8 * size, near)
    buf = bytearray(data)
    struct.pack_into(fmt, buf, off, value)
    return bytes(buf), f"{field}={value:#x}"


def section_header(rng: random.Random, data: bytes, elf: Elf) -> tuple[bytes, str]:
    sec = rng.choice(elf.sections[1:])
    field = rng.choice(["offset", "size", "name", "entsize", "align", "flags", "addr"])
    near = {"offset": sec.offset, "size": sec.size}.get(field, 0)
    bits = 32 if field == "name" else 64
    value = rng.choice([_interesting(rng, bits, near), len(data), len(data) - sec.offset + 1])
    return set_shdr(data, elf, sec.index, field, value), f"section {sec.name} sh_{field}={value:#x}"


def symbol(rng: random.Random, data: bytes, elf: Elf) -> tuple[bytes, str]:
    sym = rng.choice(elf.symbols[1:])
    what = rng.choice(["shndx", "name", "info", "value", "size"])
    if what == "shndx":
        v = rng.choice(
            [elf.shnum, elf.shnum + 1, SHN_XINDEX, SHN_LIVEPATCH, SHN_ABS, SHN_COMMON, 0xFF00]
            + [SHN_UNDEF, elf.symtab.index, rng.randrange(0x10000)]
        )
        return set_symbol(data, sym, shndx=v), f"symbol {sym.name!r} st_shndx={v:#x}"
    if what == "name":
        buf = bytearray(data)
        v = _interesting(rng, 32, elf.sections[elf.symtab.link].size)
        struct.pack_into("<I", buf, sym.entry, v)
        return bytes(buf), f"symbol {sym.name!r} st_name={v:#x}"
    if what == "info":
        v = rng.randrange(256)
        return set_symbol(data, sym, info=v), f"symbol {sym.name!r} st_info={v:#x}"
    v = _interesting(rng, 64)
    return set_symbol(data, sym, **{what: v}), f"symbol {sym.name!r} st_{what}={v:#x}"


def relocation(rng: random.Random, data: bytes, elf: Elf) -> tuple[bytes, str]:
    sec = rng.choice(elf.relas())
    n = rng.randrange(sec.size // RELA.size)
    what = rng.choice(["sym", "type", "offset", "addend"])
    nsyms = len(elf.symbols)
    if what == "sym":
        v = rng.choice([0, nsyms, nsyms + 1, 0xFFFFFFFF, rng.randrange(nsyms)])
    elif what == "type":
        v = rng.choice([0, 3, 8, 24, 37, 42, 43, 0xFF, 0xFFFFFFFF, rng.randrange(64)])
    elif what == "offset":
        target = elf.sections[sec.info] if sec.info < elf.shnum else sec
        v = rng.choice([target.size, target.size - 1, target.size - 3, 2**64 - 1, 2**63])
    else:
        v = rng.choice([2**63 - 1, -(2**63), -1, 1 << 40])
    return set_rela(data, sec, n, **{what: v}), f"{sec.name}[{n}] r_{what}={v:#x}"


def signature(rng: random.Random, data: bytes, elf: Elf) -> tuple[bytes, str]:
    """An appended module signature (struct module_signature + magic) that lies."""
    blob = bytes(rng.randrange(256) for _ in range(rng.choice([0, 16, 300])))
    sig_len = rng.choice([len(blob), 0, len(blob) + 1, len(data) + len(blob), 0xFFFFFFFF])
    id_type = rng.choice([2, 0, 1, 7])
    signer, key_id = rng.choice([(0, 0), (4, 4), (255, 255)])
    trailer = struct.pack(">BBBBB3xI", 0, 0, id_type, signer, key_id, sig_len)
    tail = SIG_MAGIC if rng.random() < 0.85 else SIG_MAGIC[: rng.randrange(len(SIG_MAGIC))]
    what = f"signature sig_len={sig_len} id_type={id_type} signer/key={signer}/{key_id}"
    return data + blob + trailer + tail, what


def byte_flips(rng: random.Random, data: bytes, elf: Elf) -> tuple[bytes, str]:
    buf = bytearray(data)
    spots = [rng.randrange(len(buf)) for _ in range(rng.choice([1, 2, 8]))]
    # mostly inside the headers and tables, where a flip changes structure
    spots += [rng.randrange(elf.shoff, min(len(buf), elf.shoff + elf.shnum * SHDR.size))]
    for i in spots:
        buf[i] = rng.randrange(256)
    return bytes(buf), f"bytes changed at {sorted(set(spots))}"


PLAIN = {
    "truncation": truncate,
    "header": header,
    "section-header": section_header,
    "symbol": symbol,
    "relocation": relocation,
    "signature": signature,
    "byte-flips": byte_flips,
}


# --- structurally odd sections ----------------------------------------------------------------


def odd_section(rng: random.Random, data: bytes, elf: Elf) -> tuple[bytes, str]:
    kind = rng.choice(["info", "link", "type", "type", "flags", "entsize", "annotation"])
    relas = elf.relas()
    if kind == "annotation":
        annots = [s for s in elf.sections if s.name.startswith(".klp.module_relocs.")]
        if annots:
            return _odd_annotation(rng, data, elf, rng.choice(annots))
        kind = "type"
    if kind == "info":
        sec = rng.choice(relas)
        v = rng.choice([0, elf.shnum, elf.shnum + 5, 0xFFFFFFFF, sec.index, elf.symtab.index])
        v = rng.choice([v, *(s.index for s in elf.sections if s.type in (SHT_RELA, SHT_NOBITS))])
        return set_shdr(data, elf, sec.index, "info", v), f"{sec.name} sh_info={v}"
    if kind == "link":
        sec = rng.choice([*relas, elf.symtab])
        v = rng.choice(
            [0, elf.shnum, 0xFFFFFFFF, sec.index, elf.shstrndx, rng.randrange(elf.shnum)]
        )
        return set_shdr(data, elf, sec.index, "link", v), f"{sec.name} sh_link={v}"
    if kind == "type":
        sec = rng.choice(elf.sections[1:])
        v = rng.choice(
            [SHT_SYMTAB_SHNDX, SHT_NOBITS, SHT_RELA, SHT_REL, SHT_SYMTAB, SHT_DYNSYM, SHT_GROUP]
            + [0, SHT_STRTAB, 0x6FFFFFF6, rng.randrange(40)]
        )
        return set_shdr(data, elf, sec.index, "type", v), f"{sec.name} sh_type={v:#x}"
    if kind == "flags":
        sec = rng.choice(elf.sections[1:])
        v = sec.flags ^ rng.choice([SHF_ALLOC, SHF_INFO_LINK, SHF_RELA_LIVEPATCH, 0x400])
        return set_shdr(data, elf, sec.index, "flags", v), f"{sec.name} sh_flags={v:#x}"
    sec = rng.choice([*relas, elf.symtab])
    v = rng.choice([0, 1, 23, 25, 48, 0xFFFFFFFF])
    return set_shdr(data, elf, sec.index, "entsize", v), f"{sec.name} sh_entsize={v}"


def _odd_annotation(rng, data, elf, sec) -> tuple[bytes, str]:
    what = rng.choice(["size", "sympos", "rela-info", "rename", "empty"])
    if what == "size" and sec.size:
        v = rng.choice([sec.size - 1, sec.size + 1, sec.size // 2 + 3, 1])
        return set_shdr(data, elf, sec.index, "size", v), f"{sec.name} sh_size={v}"
    if what == "sympos" and sec.size >= 16:
        buf = bytearray(data)
        # each entry: the symbol (a pointer, relocated) then the sympos
        at = sec.offset + rng.randrange(sec.size // 8) * 8
        v = rng.choice([2**63, 2**64 - 1, 2**32, 4301, 1 << 40])
        struct.pack_into("<Q", buf, at, v)
        return bytes(buf), f"{sec.name} word at +{at - sec.offset}={v:#x}"
    if what == "rename":
        name = rng.choice(
            [b".klp.module_relocs.", b".klp.module_relocs.x" * 10, b".klp.module_relocs.\xff"]
        )
        return rename_section(data, elf, sec.index, name), f"{sec.name} renamed {name!r}"
    rela = next((r for r in elf.relas() if r.info == sec.index), None)
    if what == "rela-info" and rela is not None:
        v = rng.choice([elf.shnum, 0, elf.symtab.index])
        return set_shdr(data, elf, rela.index, "info", v), f"{rela.name} sh_info={v}"
    return set_shdr(data, elf, sec.index, "size", 0), f"{sec.name} emptied"


# --- names: numbers in .klp.sym positions, bytes that are not UTF-8 ---------------------------

#: positions no kernel tool writes: > 4,300 digits (Python's int() limit), non-ASCII digits
#: that str.isdigit() accepts, signs, blanks, underscores, hex, overflow
ODD_NUMBERS = [
    "9" * 4301,
    "1" + "0" * 5000,
    "0" * 4400 + "1",
    "²",
    "١",
    "１",
    "٣٤",
    "𝟙",
    "߁",
    "-1",
    "+1",
    " 1",
    "1 ",
    "1_0",
    "0x1",
    "",
    "18446744073709551616",
    "4294967296",
    "2147483648",
    "99999999999999999999999",
]

#: bytes that are not UTF-8 (a stray continuation, a lone lead byte, an encoded
#: surrogate, an overlong form, 0xff)
BAD_BYTES = [b"\xff", b"\x80", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xfe\xfe", b"\xe2\x82"]


def odd_number(rng: random.Random) -> str:
    return rng.choice(ODD_NUMBERS)


def klp_sym_position(rng: random.Random, data: bytes, elf: Elf) -> tuple[bytes, str] | None:
    """A ``.klp.sym.<obj>.<name>,<pos>`` or ``.klp.sym.rela.*`` name with an odd position."""
    syms = elf.named(".klp.sym.")
    if not syms:
        return None
    sym = rng.choice(syms)
    pos = odd_number(rng)
    head, sep, _old = sym.name.rpartition(",")
    if not sep:  # v3 intermediate names: <sym>.<pos>
        head, _sep, _old = sym.name.rpartition(".")
        sep = "."
    if rng.random() < 0.2:
        sep = rng.choice([",", ".", ",,", ""])
    new = (head + sep + pos).encode("utf-8", "surrogateescape")
    return rename_symbols(data, elf, {sym.index: new}), f"{sym.name} -> {_short(new)}"


def bad_utf8_name(rng: random.Random, data: bytes, elf: Elf) -> tuple[bytes, str]:
    """A symbol (undefined, .klp.sym, defined) or a section whose name is not UTF-8."""
    bad = rng.choice(BAD_BYTES)
    if rng.random() < 0.2:
        sec = rng.choice(elf.sections[1:])
        new = _spoil(rng, sec.name.encode("utf-8", "surrogateescape"), bad)
        return rename_section(data, elf, sec.index, new), f"section {sec.name} -> {_short(new)}"
    pools = [elf.undefined(), elf.named(".klp.sym."), [s for s in elf.symbols[1:] if s.name]]
    pool = rng.choice([p for p in pools if p])
    sym = rng.choice(pool)
    new = _spoil(rng, sym.name.encode("utf-8", "surrogateescape"), bad)
    return rename_symbols(data, elf, {sym.index: new}), f"symbol {sym.name} -> {_short(new)}"


def _spoil(rng: random.Random, name: bytes, bad: bytes) -> bytes:
    where = rng.choice(["end", "start", "middle", "all"])
    if where == "end":
        return name + bad
    if where == "start":
        return bad + name
    if where == "all":
        return bad * 4
    i = rng.randrange(len(name) + 1)
    return name[:i] + bad + name[i:]


def _short(name: bytes) -> str:
    text = repr(name)
    return text if len(text) <= 60 else text[:50] + f"...({len(name)} bytes)"

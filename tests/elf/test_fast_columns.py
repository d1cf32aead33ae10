"""The fast reader (klpkit.elf.fast) on every class and byte order: its columns, built
when the file is opened or on first access, hold what decoding each record with
struct gives; the combined reads give the same result whatever the layout; the
one-pass check of section indexes agrees with the exact rule."""

import struct

import pytest

from klpkit.elf import constants as C
from klpkit.elf.fast import _HI_FLAGS, _indexes_fine, _lo_flags, open_scan
from klpkit.elf.structs import ident_layout
from klpkit.errors import ElfError

SHDR_COLUMNS = (
    "sh_names",
    "sh_types",
    "sh_flags",
    "sh_addrs",
    "sh_offsets",
    "sh_sizes",
    "sh_links",
    "sh_infos",
    "_aligns",
    "sh_entsizes",
)


def _tables(data: bytes):
    """(layout, shoff, section header rows, symtab index) decoded with struct."""
    lay = ident_layout(data)
    ehdr = lay.ehdr.unpack_from(data, 0)
    shoff, shnum = ehdr[6], ehdr[12]
    rows = list(lay.shdr.iter_unpack(data[shoff : shoff + shnum * lay.shdr.size]))
    symtab = next(i for i, r in enumerate(rows) if r[1] == C.SHT_SYMTAB)
    return lay, shoff, rows, symtab


def _expected_symbols(data: bytes, lay, rows, symtab):
    sh = rows[symtab]
    strtab = data[rows[sh[6]][4] : rows[sh[6]][4] + rows[sh[6]][5]]
    out = []
    for name, value, size, info, other, shndx in lay.iter_syms(data[sh[4] : sh[4] + sh[5]]):
        text = strtab[name : strtab.index(b"\0", name)].decode()
        out.append((text, value, size, info, other, shndx))
    return out


def _scan_view(scan) -> dict:
    view = {c: getattr(scan, c) for c in SHDR_COLUMNS}
    view.update(
        symbols=scan.symbols,
        st_names=scan.st_names,
        infos=scan.infos,
        others=scan.others,
        values=scan.values,
        sizes=scan.sizes,
        shndxs=scan.shndxs,
        strtab=scan.strtab,
        symtab_index=scan.symtab_index,
    )
    return view


def test_columns_match_struct_decoding(compiled, tmp_path):
    _, data = compiled
    lay, _, rows, symtab = _tables(data)
    path = tmp_path / "t.o"
    path.write_bytes(data)
    for target, name in ((data, "t.o"), (str(path), None)):
        with open_scan(target, name) as scan:
            assert scan.elfclass == lay.elfclass and scan.little_endian == lay.little_endian
            for k, column in enumerate(SHDR_COLUMNS[1:], 1):
                assert getattr(scan, column) == [r[k] for r in rows], column
                assert type(getattr(scan, column)) is list
            assert [tuple(s)[1:] for s in scan.sections] == [r[1:] for r in rows]
            assert scan.symtab_index == symtab
            expected = _expected_symbols(data, lay, rows, symtab)
            assert scan.symbols == expected
            assert type(scan.values) is list and type(scan.sizes) is list
            assert type(scan.infos) is bytes and type(scan.others) is bytes
            assert scan.others == bytes(s[4] for s in expected)
            for i in range(len(rows)):
                assert scan.section_data(i) == (
                    b""
                    if rows[i][1] == C.SHT_NOBITS or i == 0
                    else data[rows[i][4] : rows[i][4] + rows[i][5]]
                )
        # a column built on first access is then an ordinary attribute
        scan = open_scan(data, "t.o")
        scan.values = [0] * len(scan.values)
        assert scan.values == [0] * len(expected)
    with open_scan(data, "t.o", symbols=False) as scan:
        assert scan.symtab_index == 0 and scan.values == [] and scan.others == b""
        assert scan.sh_links == [r[6] for r in rows]


def _move_to_end(data: bytes, index: int, pad: int) -> bytes:
    """The file with section ``index``'s contents appended after ``pad`` zero bytes (its
    header pointing there): a layout other than ld's."""
    lay, shoff, rows, _ = _tables(data)
    off, size = rows[index][4], rows[index][5]
    out = bytearray(data) + bytes(pad)
    new_off = len(out)
    out += data[off : off + size]
    row = list(rows[index])
    row[4] = new_off
    lay.shdr.pack_into(out, shoff + index * lay.shdr.size, *row)
    return bytes(out)


@pytest.mark.parametrize(
    "what, pad",
    [
        ("shstrtab", 0),
        ("shstrtab", 5000),
        ("strtab", 0),
        ("strtab", 9000),
        ("symtab", 0),
        ("symtab", 9000),
    ],
)
def test_reads_whatever_the_layout(compiled, what, pad):
    _, data = compiled
    lay, _, rows, symtab = _tables(data)
    index = {
        "shstrtab": lay.ehdr.unpack_from(data, 0)[13],
        "symtab": symtab,
        "strtab": rows[symtab][6],
    }[what]
    moved = _move_to_end(data, index, pad)
    with open_scan(data, "a.o") as a, open_scan(moved, "b.o") as b:
        va, vb = _scan_view(a), _scan_view(b)
        assert va.pop("sh_offsets")[:index] == vb.pop("sh_offsets")[:index]
        assert va == vb


def test_truncated_tables_are_refused(compiled):
    _, data = compiled
    lay, _, rows, symtab = _tables(data)
    for index in (symtab, rows[symtab][6]):
        moved = _move_to_end(data, index, 100)
        with pytest.raises(ElfError, match="^t.o: .*extends past the end"):
            open_scan(moved[:-1], "t.o")


@pytest.mark.parametrize("nsec", [1, 2, 40, 255, 256])
def test_shndx_flags_agree_with_the_exact_rule(nsec):
    lo = _lo_flags(nsec)
    for v in range(0x10000):
        fine = not lo[v & 0xFF] & _HI_FLAGS[v >> 8]
        assert fine == (not nsec <= v < C.SHN_LORESERVE and v != C.SHN_XINDEX), hex(v)


def test_every_section_index_value(compiled):
    """A symbol's st_shndx: accepted as it is below the section count or reserved,
    refused (one ElfError) otherwise, and SHN_XINDEX needs a SHT_SYMTAB_SHNDX."""
    _, data = compiled
    lay, shoff, rows, symtab = _tables(data)
    nsec = len(rows)
    sym = rows[symtab][4] + lay.sym.size  # symbol 1
    at = sym + (6 if lay.elfclass == 64 else 14)
    fmt = ("<" if lay.little_endian else ">") + "H"
    for v in sorted(
        {
            0,
            1,
            nsec - 1,
            nsec,
            nsec + 1,
            0xFF,
            0x100,
            0x1FF,
            0xFEFF,
            C.SHN_LORESERVE,
            C.SHN_ABS,
            C.SHN_COMMON,
            0xFFFE,
            C.SHN_XINDEX,
        }
    ):
        patched = bytearray(data)
        struct.pack_into(fmt, patched, at, v)
        if nsec <= v < C.SHN_LORESERVE or v == C.SHN_XINDEX:
            with pytest.raises(ElfError, match="^t.o: "):
                open_scan(bytes(patched), "t.o")
        else:
            assert open_scan(bytes(patched), "t.o").shndxs[1] == v


def test_one_pass_index_check(compiled):
    """_indexes_fine on each class and byte order: True exactly when every index is
    fine (below the section count or reserved, not SHN_XINDEX)."""
    _, data = compiled
    lay, _, rows, symtab = _tables(data)
    raw = bytearray(data[rows[symtab][4] : rows[symtab][4] + rows[symtab][5]])
    count = len(raw) // lay.sym.size
    at = 6 if lay.elfclass == 64 else 14
    fmt = ("<" if lay.little_endian else ">") + "H"

    def fine(v, nsec):
        return not nsec <= v < C.SHN_LORESERVE and v != C.SHN_XINDEX

    values = [
        0,
        1,
        2,
        0x0D,
        0x0E,
        0x7F,
        0xFE,
        0xFF,
        0x100,
        0x101,
        0x1FF,
        0xD00,
        0xFEFF,
        C.SHN_LORESERVE,
        0xFF01,
        C.SHN_ABS,
        C.SHN_COMMON,
        0xFFFE,
        C.SHN_XINDEX,
    ]
    for nsec in (1, 0x0E, 0xFF, 0x100):
        for v in values:
            for other in (0, C.SHN_ABS):  # every symbol v, or v and a fine index in turn
                for k in range(count):
                    struct.pack_into(fmt, raw, k * lay.sym.size + at, v if k % 2 else other)
                expected = fine(v, nsec) or count < 2
                assert _indexes_fine(bytes(raw), lay, nsec) == expected, (nsec, hex(v))
    assert not _indexes_fine(bytes(raw), lay, 0x101)  # more sections: the exact check

"""Malformed input: every defect ends in one ElfError naming the file, never a traceback,
a hang or an unbounded allocation (mutations of a real module and of a small object)."""

import random
import re
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from klpkit.elf import ElfFile, GroupSection
from klpkit.elf.fast import open_scan, read_symbols
from klpkit.errors import ElfError

from .conftest import compile_object


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return compile_object(tmp_path_factory.mktemp("m"), "x86_64")


def exercise(data: bytes) -> None:
    """Everything a tool may do with an input; only ElfError may escape."""
    try:
        elf = ElfFile.from_bytes(data, "fuzz.ko")
        if elf.symtab is not None:
            assert isinstance(elf.symtab.symbols, list)
        for rs in elf.relocation_sections():
            assert isinstance(rs.relocations, list)
        for sec in elf.sections:
            if isinstance(sec, GroupSection):
                sec.decode()
        elf.to_bytes()
    except ElfError as e:
        assert str(e).startswith("fuzz.ko: ") and "\n" not in str(e)
    try:
        read_symbols(data, "fuzz.ko")
    except ElfError as e:
        assert str(e).startswith("fuzz.ko: ")
    scan_everything(data, "fuzz.ko")


def scan_everything(target, path) -> None:
    """The unified fast reader, every path: headers, names, symbols, every section's
    contents on demand (what the symbol database builder reads)."""
    try:
        with open_scan(target, path) as scan:
            assert len(scan.names) == len(scan.shndxs) == len(scan.values)
            assert len(scan.sections) == len(scan.sh_types)
            for i in range(len(scan.sh_types)):
                assert isinstance(scan.section_data(i), bytes)
            for name in set(scan.sh_names):
                scan.section_data(name)
    except ElfError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e)


def _shdr_fields(data):
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shnum = struct.unpack_from("<H", data, 0x3C)[0]
    return shoff, shnum


def test_truncations(sample):
    for cut in list(range(0, 80)) + list(range(80, len(sample), 7)):
        exercise(sample[:cut])


def test_header_fields_bogus(sample):
    for off, fmt in [(0x04, "B"), (0x05, "B"), (0x28, "Q"), (0x3A, "H"), (0x3C, "H"), (0x3E, "H")]:
        for value in (0, 1, 2, 3, 0xFF, 0xFFFF, 0xFFFFFFFF, 2**63):
            try:
                patched = bytearray(sample)
                struct.pack_into("<" + fmt, patched, off, value)
            except struct.error:
                continue
            exercise(bytes(patched))


def test_section_header_fields_bogus(sample):
    shoff, shnum = _shdr_fields(sample)
    for i in range(shnum):
        base = shoff + i * 64
        # name, type, flags, addr, offset, size, link, info, addralign, entsize
        for field_off, fmt in [
            (0, "I"),
            (4, "I"),
            (24, "Q"),
            (32, "Q"),
            (40, "I"),
            (44, "I"),
            (56, "Q"),
        ]:
            for value in (0, 1, 0x7FFF, 0xFFFFFFFF, 2**40):
                try:
                    patched = bytearray(sample)
                    struct.pack_into("<" + fmt, patched, base + field_off, value)
                except struct.error:
                    continue
                exercise(bytes(patched))


def test_huge_section_count_is_refused_quickly(sample):
    patched = bytearray(sample)
    struct.pack_into("<H", patched, 0x3C, 0)  # e_shnum 0: count from shdr[0].sh_size
    shoff, _ = _shdr_fields(sample)
    struct.pack_into("<Q", patched, shoff + 32, 2**62)
    with pytest.raises(ElfError, match="extends past the end of the file"):
        ElfFile.from_bytes(bytes(patched), "x.ko")


def test_string_and_symbol_indexes_out_of_range(sample):
    elf = ElfFile.from_bytes(sample)
    symtab = elf.symtab
    shoff, _ = _shdr_fields(sample)
    sym_off = struct.unpack_from("<Q", sample, shoff + symtab.index * 64 + 24)[0]
    for i in range(1, len(symtab.symbols)):
        for field_off, fmt, value in [(0, "I", 0xFFFFFF), (6, "H", 0xFEFF), (6, "H", 0xFFFF)]:
            patched = bytearray(sample)
            struct.pack_into("<" + fmt, patched, sym_off + i * 24 + field_off, value)
            exercise(bytes(patched))
    for rs in elf.relocation_sections():
        rel_off = struct.unpack_from("<Q", sample, shoff + rs.index * 64 + 24)[0]
        patched = bytearray(sample)
        struct.pack_into("<Q", patched, rel_off + 8, (0xFFFFFF << 32) | 2)
        with pytest.raises(ElfError, match="uses symbol index"):
            e = ElfFile.from_bytes(bytes(patched), "x.ko")
            [r.relocations for r in e.relocation_sections()]


def test_section_data_past_the_end_from_a_path(sample, tmp_path):
    """On a path the reader preads on demand: a section whose contents lie past the end
    of the file is refused when read, naming the file."""
    shoff, shnum = _shdr_fields(sample)
    path = tmp_path / "m.ko"
    for i in range(1, shnum):
        patched = bytearray(sample)
        struct.pack_into("<Q", patched, shoff + i * 64 + 24, len(sample) - 1)  # sh_offset
        struct.pack_into("<Q", patched, shoff + i * 64 + 32, 2)  # sh_size
        path.write_bytes(bytes(patched))
        scan_everything(str(path), str(path))
        sh_type = struct.unpack_from("<I", patched, shoff + i * 64 + 4)[0]
        if sh_type in (0, 8):  # SHT_NULL, SHT_NOBITS: no contents to read
            continue
        # (the section name table is read at open; any other section when asked for)
        with pytest.raises(ElfError, match=f"^{re.escape(str(path))}: .*extends past the end"):
            with open_scan(str(path), symbols=False) as scan:
                scan.section_data(i)
    for cut in range(0, len(sample), 97):
        path.write_bytes(sample[:cut])
        scan_everything(str(path), str(path))


def test_random_bit_flips(sample):
    rng = random.Random(1234)
    for _ in range(3000):
        patched = bytearray(sample)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(patched))
            patched[pos] ^= 1 << rng.randrange(8)
        exercise(bytes(patched))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.data())
def test_hypothesis_overwrites(sample, data):
    patched = bytearray(sample)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(patched) - 1))
        chunk = data.draw(st.binary(min_size=1, max_size=8))
        patched[pos : pos + len(chunk)] = chunk
    exercise(bytes(patched[: data.draw(st.integers(0, len(patched)))]))


def test_cli_reports_one_line_and_exit_2(tmp_path, sample):
    bad = tmp_path / "bad.ko"
    bad.write_bytes(sample[:100])
    proc = subprocess.run(
        [sys.executable, "-m", "klpkit.cli", "inspect", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr
    assert bad.read_bytes() == sample[:100]

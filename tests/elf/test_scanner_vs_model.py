"""The scanner (klpkit.elf.fast) refuses at least everything the model (klpkit.elf)
refuses, on what both read: the ELF header, the section header table, the section
names and the (first) symbol table. Both apply klpkit.elf.headers' rules; this holds
them to it on mutants of small objects of every class and byte order."""

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from klpkit.elf import ElfFile
from klpkit.elf.fast import open_scan
from klpkit.elf.structs import ident_layout
from klpkit.errors import ElfError

from .conftest import TOOLCHAINS, compile_object

PATH = "m.o"
INTERESTING = (0, 1, 2, 3, 4, 7, 8, 9, 11, 12, 13, 17, 18, 0xFF, 0xFF00, 0xFFFF, 2**31, 2**32 - 1)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("objs")
    return {arch: compile_object(tmp, arch) for arch in sorted(TOOLCHAINS)}


def model_refusal(data: bytes) -> str | None:
    try:
        elf = ElfFile.from_bytes(data, PATH)
        if elf.symtab is not None:
            elf.symtab.symbols  # noqa: B018 - decode
    except ElfError as e:
        return str(e)
    return None


def scanner_refusal(data: bytes) -> str | None:
    try:
        with open_scan(data, PATH) as scan:
            scan.names  # noqa: B018 - decode
    except ElfError as e:
        return str(e)
    return None


def assert_scanner_refuses_what_the_model_refuses(data: bytes) -> None:
    model = model_refusal(data)
    scanner = scanner_refusal(data)
    for message in (model, scanner):
        assert message is None or (message.startswith(f"{PATH}: ") and "\n" not in message)
    if model is not None:
        assert scanner is not None, f"the model refuses ({model}), the scanner accepts"


def header_field(data: bytes, section: int, field: int, value: int) -> bytes:
    """``data`` with field ``field`` (0-9: name ... entsize) of section header ``section``
    set to ``value`` (truncated to the field's width)."""
    lay = ident_layout(data)
    ehdr = lay.ehdr.unpack_from(data, 0)
    shoff, shnum = ehdr[6], ehdr[12]
    base = shoff + (section % shnum) * lay.shdr.size
    row = list(lay.shdr.unpack_from(data, base))
    width = 8 if lay.elfclass == 64 and field in (2, 3, 4, 5, 8, 9) else 4
    row[field] = value & ((1 << (8 * width)) - 1)
    out = bytearray(data)
    lay.shdr.pack_into(out, base, *row)
    return bytes(out)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    arch=st.sampled_from(sorted(TOOLCHAINS)),
    edits=st.lists(
        st.tuples(
            st.integers(0, 40),
            st.integers(0, 9),
            st.one_of(st.sampled_from(INTERESTING), st.integers(0, 2**32)),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_section_header_mutants(samples, arch, edits):
    data = samples[arch]
    for section, field, value in edits:
        data = header_field(data, section, field, value)
    assert_scanner_refuses_what_the_model_refuses(data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.data())
def test_byte_overwrites_and_truncations(samples, data):
    arch = data.draw(st.sampled_from(sorted(TOOLCHAINS)))
    mutant = bytearray(samples[arch])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(mutant) - 1))
        chunk = data.draw(st.binary(min_size=1, max_size=8))
        mutant[pos : pos + len(chunk)] = chunk
    cut = data.draw(st.integers(0, len(mutant)))
    assert_scanner_refuses_what_the_model_refuses(bytes(mutant[:cut]))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    arch=st.sampled_from(sorted(TOOLCHAINS)),
    offset=st.sampled_from((0x04, 0x05, 0x10, 0x2E, 0x30, 0x32, 0x3A, 0x3C, 0x3E)),
    value=st.sampled_from(INTERESTING),
)
def test_elf_header_mutants(samples, arch, offset, value):
    """e_ident class/encoding, e_type, e_shentsize, e_shnum, e_shstrndx (offsets of the
    ELF64 header; on ELF32 the same bytes are other fields, which is fine too)."""
    mutant = bytearray(samples[arch])
    fmt = ("<" if mutant[5] == 1 else ">") + ("B" if offset < 0x10 else "H")
    struct.pack_into(fmt, mutant, offset, value & (0xFF if fmt[1] == "B" else 0xFFFF))
    assert_scanner_refuses_what_the_model_refuses(bytes(mutant))


def test_the_unmutated_objects_are_read_by_both(samples):
    for data in samples.values():
        assert model_refusal(data) is None and scanner_refusal(data) is None

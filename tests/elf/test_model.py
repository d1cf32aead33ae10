"""The ELF model on objects gcc builds in the test run: ELF64/ELF32, LSB/MSB, RELA/REL."""

import pytest

from klpkit.elf import ElfFile, Relocation, Section, Symbol
from klpkit.elf import constants as C

from .conftest import compile_object
from .oracle import assert_pyelftools_agrees, elflint_messages, readelf_warnings

EXPECTED = {
    "x86_64": (64, True, C.SHT_RELA),
    "i386": (32, True, C.SHT_REL),
    "ppc": (32, False, C.SHT_RELA),
    "s390x": (64, False, C.SHT_RELA),
}


def test_reads_class_order_and_relocation_kind(compiled):
    arch, data = compiled
    elf = ElfFile.from_bytes(data, "t.o")
    cls, little, rtype = EXPECTED[arch]
    assert (elf.elfclass, elf.little_endian) == (cls, little)
    assert {s.type for s in elf.relocation_sections()} == {rtype}
    names = {s.name for s in elf.symtab.symbols}
    assert {"api", "ext_func", "ext_data", "helper", "counter", "fptr"} <= names
    helper = elf.symtab.get("helper")
    assert helper.is_local and helper.type == C.STT_FUNC
    assert elf.symtab.get("ext_func").is_undefined
    assert elf.symtab.get("api").section.name.startswith(".text")
    assert elf.symtab.get("weak_one").bind == C.STB_WEAK


def test_noop_write_is_byte_identical(compiled):
    _, data = compiled
    assert ElfFile.from_bytes(data).to_bytes() == data


def test_decoded_write_is_byte_identical(compiled):
    """Decoding every table and re-encoding it changes nothing."""
    _, data = compiled
    elf = ElfFile.from_bytes(data)
    for rs in elf.relocation_sections():
        assert rs.relocations is not None
    assert elf.to_bytes() == data
    assert_pyelftools_agrees(data, elf)


def _rename_and_move(elf: ElfFile, name: str) -> int:
    """The klp-convert edit: rename an undefined symbol and move its relocations."""
    target = elf.symtab.get(name)
    moved = 0
    for rs in list(elf.relocation_sections()):
        mine = [r for r in rs.relocations if r.symbol is target]
        if not mine:
            continue
        rs.relocations = [r for r in rs.relocations if r.symbol is not target]
        new = elf.new_relocation_section(
            f".klp.rela.vmlinux.{rs.target.name}",
            rs.target,
            rela=rs.is_rela,
            flags=C.SHF_ALLOC | C.SHF_INFO_LINK | C.SHF_RELA_LIVEPATCH,
        )
        new.relocations = mine
        moved += len(mine)
    target.name = f".klp.sym.vmlinux.{name},0"
    target.shndx = C.SHN_LIVEPATCH
    return moved


def test_rename_and_move_relocations(compiled, tmp_path):
    arch, data = compiled
    elf = ElfFile.from_bytes(data)
    untouched = {
        i: s.data
        for i, s in enumerate(elf.sections)
        if not s.is_relocation and s.type not in (C.SHT_SYMTAB, C.SHT_STRTAB)
    }
    assert _rename_and_move(elf, "ext_func") >= 1
    out = elf.to_bytes()
    path = tmp_path / "out.o"
    path.write_bytes(out)
    back = ElfFile.from_bytes(out)
    assert_pyelftools_agrees(out, back)
    sym = back.symtab.get(".klp.sym.vmlinux.ext_func,0")
    assert sym is not None and sym.shndx == C.SHN_LIVEPATCH
    klp = [s for s in back.sections if s.name.startswith(".klp.rela.")]
    assert klp and all(s.flags & C.SHF_RELA_LIVEPATCH for s in klp)
    assert all(r.symbol is sym for s in klp for r in s.relocations)
    for s in back.relocation_sections():
        if not s.name.startswith(".klp.rela."):
            assert all(r.symbol is not sym for r in s.relocations)
    for i, data_before in untouched.items():
        assert back.sections[i].data == data_before, back.sections[i].name
    assert readelf_warnings(path) == []
    lint = [
        m
        for m in elflint_messages(path)
        if "0x100000" not in m and "invalid section index" not in m
    ]
    assert lint == [] or lint == ["No errors"], lint


def test_adding_a_local_renumbers_relocations(compiled):
    """A new local must precede all globals: every relocation index shifts, sh_info too."""
    _, data = compiled
    elf = ElfFile.from_bytes(data)
    before = {
        (rs.name, r.offset): r.symbol.name if r.symbol else None
        for rs in elf.relocation_sections()
        for r in rs.relocations
    }
    text = elf.section(".text")
    elf.symtab.add(Symbol("new_local", 0, 0, C.STB_LOCAL, C.STT_FUNC, 0, text))
    out = elf.to_bytes()
    back = ElfFile.from_bytes(out)
    after = {
        (rs.name, r.offset): r.symbol.name if r.symbol else None
        for rs in back.relocation_sections()
        for r in rs.relocations
    }
    assert before == after
    syms = back.symtab.symbols
    first_global = back.symtab.info
    assert all(s.bind == C.STB_LOCAL for s in syms[:first_global])
    assert all(s.bind != C.STB_LOCAL for s in syms[first_global:])
    assert back.symtab.get("new_local").is_local
    assert_pyelftools_agrees(out, back)


def test_add_and_remove_sections(compiled, tmp_path):
    _, data = compiled
    elf = ElfFile.from_bytes(data)
    if elf.section(".comment") is None:  # the assembled object has none: add one first
        elf.add_section(
            Section(".comment", C.SHT_PROGBITS, C.SHF_MERGE | C.SHF_STRINGS, b"\0test\0", entsize=1)
        )
        elf = ElfFile.from_bytes(elf.to_bytes())
    elf.remove_section(elf.section(".comment"))
    blob = elf.add_section(
        Section(".klpkit.note", C.SHT_PROGBITS, C.SHF_ALLOC, b"\x01" * 13, addralign=16)
    )
    out = elf.to_bytes()
    back = ElfFile.from_bytes(out)
    assert back.section(".comment") is None
    new = back.section(".klpkit.note")
    assert new.data == blob.data
    offset = _offset_of(out, back, new)
    assert offset % 16 == 0
    assert_pyelftools_agrees(out, back)
    path = tmp_path / "o.o"
    path.write_bytes(out)
    assert readelf_warnings(path) == []


def _offset_of(data, elf, sec):
    lay = elf.layout
    shoff = lay.ehdr.unpack_from(data, 0)[6]
    return lay.shdr.unpack_from(data, shoff + sec.index * lay.shdr.size)[4]


def test_every_section_stays_aligned_after_growth(compiled):
    _, data = compiled
    elf = ElfFile.from_bytes(data)
    for i in range(50):
        elf.symtab.add(Symbol(f"grow_{i}_" + "x" * 40, shndx=C.SHN_UNDEF))
    out = elf.to_bytes()
    back = ElfFile.from_bytes(out)
    for sec in back.sections[1:]:
        if sec.type != C.SHT_NOBITS:
            assert _offset_of(out, back, sec) % max(sec.addralign, 1) == 0, sec.name


def test_rel_cannot_take_an_explicit_addend(tmp_path):
    data = compile_object(tmp_path, "i386")
    elf = ElfFile.from_bytes(data, "t32.o")
    rs = elf.relocation_sections()[0]
    rs.relocations.append(Relocation(0, 1, None, 5))
    with pytest.raises(Exception, match="SHT_REL cannot hold the explicit addend 5"):
        elf.to_bytes()


def test_symbol_in_removed_section_is_an_error(compiled):
    _, data = compiled
    elf = ElfFile.from_bytes(data, "t.o")
    api = elf.symtab.get("api")
    elf.remove_section(api.section)
    with pytest.raises(Exception, match="no longer in the file"):
        elf.to_bytes()

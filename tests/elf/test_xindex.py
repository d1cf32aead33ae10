"""More than SHN_LORESERVE sections: the e_shnum / e_shstrndx escapes and SHT_SYMTAB_SHNDX."""

import shutil
import subprocess

import pytest

from klpkit.elf import ElfFile, Section, Symbol
from klpkit.elf import constants as C
from klpkit.elf.fast import read_symbols

from .conftest import require
from .oracle import assert_pyelftools_agrees, readelf_warnings

NSECTIONS = 66000


@pytest.fixture(scope="module")
def big_object(tmp_path_factory):
    require(shutil.which("as") is not None, "GNU as is not installed")
    tmp = tmp_path_factory.mktemp("xindex")
    src = tmp / "big.s"
    src.write_text(
        "\n".join(
            f'.section .text.f{i},"ax",@progbits\n.globl f{i}\nf{i}: ret' for i in range(NSECTIONS)
        )
        + "\n.text\ncall ext_func\n"
    )
    subprocess.run(["as", str(src), "-o", str(tmp / "big.o")], check=True)
    return (tmp / "big.o").read_bytes()


def test_escapes_are_read(big_object):
    elf = ElfFile.from_bytes(big_object)
    assert len(elf.sections) > C.SHN_LORESERVE
    assert elf.shstrtab.name == ".shstrtab"
    last = elf.symtab.get(f"f{NSECTIONS - 1}")
    assert last.section.name == f".text.f{NSECTIONS - 1}"
    assert last.section.index >= C.SHN_LORESERVE
    scan = read_symbols(big_object)
    i = scan.names.index(f"f{NSECTIONS - 1}")
    assert scan.shndxs[i] == last.section.index


def test_noop_and_decoded_writes_are_identical(big_object):
    assert ElfFile.from_bytes(big_object).to_bytes() == big_object
    elf = ElfFile.from_bytes(big_object)
    elf.symtab.symbols  # noqa: B018 - decode, so the writer re-encodes symtab and shndx
    assert elf.to_bytes() == big_object


def test_edit_above_loreserve(big_object, tmp_path):
    elf = ElfFile.from_bytes(big_object)
    text = elf.section(".text")
    new = elf.add_section(Section(".klpkit.extra", C.SHT_PROGBITS, C.SHF_ALLOC, b"\x90" * 8))
    elf.symtab.add(Symbol("extra_local", 0, 8, C.STB_LOCAL, C.STT_FUNC, 0, new))
    ext = elf.symtab.get("ext_func")
    ext.name = ".klp.sym.vmlinux.ext_func,0"
    ext.shndx = C.SHN_LIVEPATCH
    rs = elf.relocations_for(text)[0]
    moved = [r for r in rs.relocations if r.symbol is ext]
    rs.relocations = [r for r in rs.relocations if r.symbol is not ext]
    klp = elf.new_relocation_section(
        ".klp.rela.vmlinux..text", text, flags=C.SHF_ALLOC | C.SHF_INFO_LINK | C.SHF_RELA_LIVEPATCH
    )
    klp.relocations = moved
    out = elf.to_bytes()
    path = tmp_path / "out.o"
    path.write_bytes(out)
    back = ElfFile.from_bytes(out)
    assert back.symtab.get("extra_local").section.name == ".klpkit.extra"
    assert back.symtab.get("extra_local").section.index > C.SHN_LORESERVE
    assert back.symtab.get(".klp.sym.vmlinux.ext_func,0").shndx == C.SHN_LIVEPATCH
    assert readelf_warnings(path) == []
    assert_pyelftools_agrees(out, back)

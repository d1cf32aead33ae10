"""Structurally odd sections, built by mutating a small gcc object: every one ends in one
clear ElfError line naming the file (in the reader, the writer, the planner, inspect and
check alike) or in an output that readelf and eu-elflint accept as they accepted the
input."""

import shutil
import struct

import pytest

from klpkit.check.engine import check_bytes
from klpkit.cli import main as cli_main
from klpkit.convert.plan import make_plan
from klpkit.elf import ElfFile, Section
from klpkit.elf import constants as C
from klpkit.elf.fast import open_scan
from klpkit.errors import ElfError

from .conftest import compile_object, require
from .oracle import elflint_messages, readelf_warnings

# Offsets of the fields of an ELF64 section header.
SH_TYPE, SH_SIZE, SH_LINK, SH_INFO, SH_ENTSIZE = 4, 32, 40, 44, 56
FORMATS = {SH_TYPE: "<I", SH_SIZE: "<Q", SH_LINK: "<I", SH_INFO: "<I", SH_ENTSIZE: "<Q"}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> bytes:
    return compile_object(tmp_path_factory.mktemp("odd"), "x86_64")


def index_of(data: bytes, name: str) -> int:
    return next(i for i, s in enumerate(ElfFile.from_bytes(data).sections) if s.name == name)


def patched(data: bytes, name: str, **fields: int) -> bytes:
    """``data`` with fields (type, size, link, info, entsize) of section ``name`` set."""
    out = bytearray(data)
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    base = shoff + index_of(data, name) * 64
    for field, value in fields.items():
        off = {"type": SH_TYPE, "size": SH_SIZE, "link": SH_LINK, "info": SH_INFO}.get(field)
        off = SH_ENTSIZE if field == "entsize" else off
        struct.pack_into(FORMATS[off], out, base + off, value)
    return bytes(out)


def refused_everywhere(data: bytes, tmp_path, match: str) -> None:
    """The reader (every table decoded), the planner, inspect and check all refuse
    ``data`` with the same one-line error naming the file."""
    path = tmp_path / "odd.o"
    path.write_bytes(data)
    with pytest.raises(ElfError, match=match) as caught:
        ElfFile.read(path).validate()
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    try:
        elf = ElfFile.read(path)
    except ElfError as e:
        assert str(e) == message
    else:
        with pytest.raises(ElfError) as planned:
            make_plan(elf, None)
        assert str(planned.value) == message
    with pytest.raises(ElfError) as checked:
        check_bytes(data, None, "6.1", path=str(path))
    assert str(checked.value) == message


def inspect_exit(path, capsys) -> tuple[int, str]:
    code = cli_main(["inspect", str(path)])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("info", [0, 13, 0xFFFF])
def test_relocation_section_whose_sh_info_is_not_a_section(sample, tmp_path, capsys, info):
    data = patched(sample, ".rela.text", info=info)
    refused_everywhere(data, tmp_path, "sh_info .* does not name the section its relocations")
    code, err = inspect_exit(tmp_path / "odd.o", capsys)
    assert code == 2 and err.count("\n") == 1 and "sh_info" in err


def test_relocation_section_of_the_wrong_entry_size(sample, tmp_path):
    refused_everywhere(patched(sample, ".rela.text", entsize=16), tmp_path, "entry size 16")


def test_relocation_section_not_linked_to_a_symbol_table(sample, tmp_path):
    strtab = index_of(sample, ".strtab")
    refused_everywhere(
        patched(sample, ".rela.text", link=strtab), tmp_path, "does not name a symbol table"
    )


def test_section_index_field_out_of_range_is_refused_by_both_readers(sample, tmp_path):
    data = patched(sample, ".rela.text", link=40)
    refused_everywhere(data, tmp_path, "sh_link 40 is not a section index")
    with pytest.raises(ElfError, match="sh_link 40 is not a section index"):
        open_scan(data, "odd.o")


@pytest.mark.parametrize(
    ("name", "fields", "match"),
    [
        (".data", {}, "SHT_SYMTAB_SHNDX whose sh_link 0 is not a symbol table"),
        (".rela.text", {}, "SHT_SYMTAB_SHNDX of 96 bytes for a symbol table of 312 bytes"),
    ],
)
def test_section_retyped_to_symtab_shndx(sample, tmp_path, name, fields, match):
    """An extended-index table is the writer's to regenerate: a section that only says
    it is one (not its symbol table's, or of another length) is refused when read, so
    nothing is ever written over it."""
    data = patched(sample, name, type=C.SHT_SYMTAB_SHNDX, **fields)
    refused_everywhere(data, tmp_path, match)
    with pytest.raises(ElfError, match=match):
        open_scan(data, "odd.o")


def test_writer_refuses_an_extended_index_table_it_does_not_own(sample):
    elf = ElfFile.from_bytes(sample, "t.o")
    elf.add_section(Section(".stray", C.SHT_SYMTAB_SHNDX, addralign=4, entsize=4, link=elf.symtab))
    elf.symtab.symbols  # noqa: B018 - decoded: the writer regenerates the table
    with pytest.raises(ElfError, match="^t.o: section .stray: SHT_SYMTAB_SHNDX that is not"):
        elf.to_bytes()


def test_a_link_klpkit_cannot_renumber_is_refused_once_sections_move(sample):
    """sh_link of a PROGBITS section is no section index to the gABI: kept as it is while
    nothing moves (the no-op write stays byte-identical), refused once the section
    table is renumbered, since it would silently name another section."""
    data = patched(sample, ".note.GNU-stack", link=3)
    elf = ElfFile.from_bytes(data, "t.o")
    assert elf.to_bytes() == data
    elf.remove_section(elf.section(".comment"))
    with pytest.raises(ElfError, match="^t.o: section .note.GNU-stack: sh_link 3 .* renumbered"):
        elf.to_bytes()


def test_removing_a_section_renumbers_every_link(sample, tmp_path):
    """The edit convert makes when it drops annotation sections: the output is as clean
    to readelf and eu-elflint as the input."""
    require(shutil.which("eu-elflint") is not None, "eu-elflint is not installed")
    original = tmp_path / "in.o"
    original.write_bytes(sample)
    elf = ElfFile.read(original)
    elf.remove_section(elf.section(".comment"))
    out = tmp_path / "out.o"
    elf.write(out)
    assert readelf_warnings(out) == []
    assert set(elflint_messages(out)) <= set(elflint_messages(original)) | {"No errors"}
    back = ElfFile.read(out).validate()
    assert back.section(".rela.text").target is back.section(".text")
    assert back.symtab.strtab is back.section(".strtab")


@pytest.mark.parametrize(
    "fields",
    [{"info": 0}, {"link": 40}, {"type": C.SHT_SYMTAB_SHNDX}],
    ids=["sh_info 0", "sh_link out of range", "retyped"],
)
def test_check_refuses_what_the_reader_refuses_on_a_module(cdrom, tmp_path, fields):
    """check once judged a module the reader refuses ("loads and resolves"): now it
    refuses it too, with the reader's line (exit 2 from the CLI)."""
    data = patched(cdrom, ".rela.text", **fields)
    path = tmp_path / "cdrom.ko"
    path.write_bytes(data)
    with pytest.raises(ElfError) as read:
        ElfFile.read(path).validate()
    with pytest.raises(ElfError) as checked:
        check_bytes(data, None, "6.1", path=str(path))
    assert str(checked.value) == str(read.value)


@pytest.fixture(scope="module")
def cdrom(debian_image) -> bytes:
    """Debian's cdrom.ko (6.1), a real module of the test fixtures."""
    from klpkit.debian import DEFAULT_RELEASE

    path = debian_image / "lib" / "modules" / DEFAULT_RELEASE / "kernel/drivers/cdrom/cdrom.ko"
    require(path.is_file(), f"{path} is missing")
    return path.read_bytes()

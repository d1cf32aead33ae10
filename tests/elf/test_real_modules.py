"""The ELF layer on every module of the real Debian kernel (6.1.0-47-amd64, 6.1.170-3).

Each of the 4,022 modules: a no-op write is byte-identical (signature included); after
the livepatch edit (rename an undefined symbol to a .klp.sym name with SHN_LIVEPATCH
and move its relocations to new .klp.rela sections) readelf -a -W prints no warning,
eu-elflint --gnu-ld reports nothing beyond what the edit implies, every untouched
section is byte-identical, and pyelftools reads back exactly what the model wrote.
"""

import os
import re
from pathlib import Path

import pytest

from klpkit.elf import ElfFile
from klpkit.elf import constants as C
from klpkit.errors import KlpkitError
from klpkit.kernel.signature import ModuleSignature

from .conftest import require
from .oracle import assert_pyelftools_agrees, elflint_messages, readelf_warnings

CHUNKS = 16
pytestmark = pytest.mark.slow

# The only eu-elflint messages the livepatch edit may add: it knows neither the
# OS-specific section index of SHN_LIVEPATCH symbols nor the SHF_RELA_LIVEPATCH flag.
EXPECTED_LINT = ("invalid section index", "unknown flag(s) 0x100000")


@pytest.fixture(scope="session")
def all_modules():
    from klpkit.debian import DEFAULT_RELEASE, ensure_image

    try:
        root = ensure_image() / "lib" / "modules" / DEFAULT_RELEASE
    except (KlpkitError, OSError) as e:
        require(False, f"cannot fetch the Debian kernel image: {e}")
    found = sorted(str(p) for p in root.rglob("*.ko"))
    assert len(found) == 4022, f"expected 4,022 modules in {root}, found {len(found)}"
    return found


def _lint_kinds(path) -> set[str]:
    """eu-elflint messages with section and entry numbers removed: moving relocations
    renumbers them, so a complaint elflint already had about the input (e.g. a
    relocation type it does not know) must not count as new."""
    kinds = set()
    for m in elflint_messages(path):
        if any(e in m for e in EXPECTED_LINT):
            continue
        m = re.sub(r"section \[\s*\d+\] '[^']*'", "section", m)
        kinds.add(re.sub(r"\d+", "N", m))
    return kinds


def _chunk(files, i):
    return files[i::CHUNKS]


def livepatch_edit(elf: ElfFile) -> tuple[set[int], str] | None:
    """Convert the first undefined symbol that has relocations in SHF_ALLOC sections.

    Returns the indexes of the sections the edit touches (symbol and string tables,
    relocation sections it moved entries out of) and the new symbol name.
    """
    symtab = elf.symtab
    used = {}
    for rs in elf.relocation_sections():
        if rs.target is None or not rs.target.is_alloc:
            continue
        for r in rs.relocations:
            if r.symbol is not None and r.symbol.is_undefined and r.symbol.name:
                used.setdefault(id(r.symbol), r.symbol)
    if not used:
        return None
    target = next(iter(used.values()))
    # Every relocation (alloc or not) must move with the symbol's rename.
    touched = {symtab.index, symtab.strtab.index, elf.shstrtab.index}
    for rs in list(elf.relocation_sections()):
        mine = [r for r in rs.relocations if r.symbol is target]
        if not mine:
            continue
        touched.add(rs.index)
        rs.relocations = [r for r in rs.relocations if r.symbol is not target]
        new = elf.new_relocation_section(
            f".klp.rela.vmlinux.{rs.target.name}",
            rs.target,
            flags=C.SHF_ALLOC | C.SHF_INFO_LINK | C.SHF_RELA_LIVEPATCH,
        )
        new.relocations = mine
    target.name = f".klp.sym.vmlinux.{target.name},0"
    target.shndx = C.SHN_LIVEPATCH
    return touched, target.name


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_noop_write_is_byte_identical(all_modules, chunk):
    for path in _chunk(all_modules, chunk):
        data = Path(path).read_bytes()
        elf = ElfFile.from_bytes(data, path)
        assert ModuleSignature.from_trailer(elf.trailer) is not None, (
            f"{path}: Debian modules are signed"
        )
        assert elf.to_bytes() == data, path


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_livepatch_edit_is_clean(all_modules, chunk, tmp_path):
    edited = 0
    for path in _chunk(all_modules, chunk):
        data = Path(path).read_bytes()
        before = ElfFile.from_bytes(data, path)
        elf = ElfFile.from_bytes(data, path)
        result = livepatch_edit(elf)
        if result is None:
            continue
        touched, new_name = result
        out = elf.to_bytes()
        assert elf.trailer_dropped, "the signature must be dropped after an edit"
        out_path = tmp_path / os.path.basename(path)
        out_path.write_bytes(out)
        back = ElfFile.from_bytes(out, str(out_path))
        assert ModuleSignature.from_trailer(back.trailer) is None
        for i, sec in enumerate(before.sections):
            if i not in touched:
                assert back.sections[i].data == sec.data, f"{path}: {sec.name} changed"
                assert back.sections[i].name == sec.name
        sym = back.symtab.get(new_name)
        assert sym is not None and sym.shndx == C.SHN_LIVEPATCH
        assert_pyelftools_agrees(out, back)
        assert readelf_warnings(out_path) == [], path
        unexpected = _lint_kinds(out_path) - _lint_kinds(path)
        assert unexpected == set(), f"{path}: {unexpected}"
        out_path.unlink()
        edited += 1
    assert edited > 0

"""The ELF layer on every module of Debian's 6.12 line (6.12.117+deb12-amd64): 4,230
``.ko.xz`` files (CONFIG_MODULE_COMPRESS_XZ).

Each one is read through decompression, by the model and by the fast scanner: the model's
no-op write is byte-identical to what ``xz -d`` gives (the signature is inside the
compressed payload: ``Makefile.modinst`` signs, then compresses), and the scanner sees the
same sections and symbols as the model.
"""

import lzma

import pytest

from klpkit.debian import RELEASE_612, ensure_image
from klpkit.elf import ElfFile
from klpkit.elf.fast import open_scan
from klpkit.errors import KlpkitError
from klpkit.kernel.signature import ModuleSignature

from .conftest import require

CHUNKS = 8
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def modules_612():
    try:
        root = ensure_image(RELEASE_612) / "lib" / "modules" / RELEASE_612
    except (KlpkitError, OSError) as e:
        require(False, f"cannot fetch the Debian 6.12 kernel image: {e}")
    found = sorted(str(p) for p in root.rglob("*.ko*"))
    assert len(found) == 4230, f"expected 4,230 modules in {root}, found {len(found)}"
    assert all(p.endswith(".ko.xz") for p in found), "6.12's modules are all .ko.xz"
    return found


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_every_612_module_reads_through_xz(modules_612, chunk):
    """(The scanner reads every 4th module here: the symbol database tests read them all
    through it.)"""
    for k, path in enumerate(modules_612[chunk::CHUNKS]):
        with open(path, "rb") as f:
            packed = f.read()
        elf = ElfFile.from_bytes(packed, path)
        assert elf.compression == "xz"
        assert ModuleSignature.from_trailer(elf.trailer) is not None, (
            f"{path}: Debian modules are signed"
        )
        assert elf.to_bytes() == lzma.decompress(packed), path
        if k % 4 == 0:
            with open_scan(path) as scan:
                assert scan.compression == "xz"
                assert scan.sh_names == [s.name for s in elf.sections], path
                assert scan.names == [s.name for s in elf.symtab.symbols], path

"""Fixtures for the convert tests.

* ``small_db``: a symbol database imported from a hand-written Symbols.list (kernel
  format) — fast unit tests, no kernel data;
* ``cc``: compile a C (or assembler) snippet into an ELF relocatable with a chosen
  toolchain (x86_64, i386 = REL, s390x = big-endian, ppc = ELF32 big-endian RELA);
The real Debian symbol database (``debian_symdb``) and the test livepatch modules
(``lp_modules``) are shared session fixtures in tests/conftest.py.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.conftest import require, require_tools
from tests.convert.lp_issue12 import (  # noqa: F401 - fixtures
    debian_symbols_list,
    issue12_converted,
    issue12_modules,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CDROM = REPO / "examples" / "cdrom"
RELEASE = "6.1.0-47-amd64"

SMALL_LIST = """\
klp-convert-symbol-data.0.1
*vmlinux
__ksymtab_printk
printk
state_show
state_show
cmdline_proc_show
saved_command_line
debug
*cdrom
__ksymtab_cdrom_check_events
cdrom_check_events
cdrom_read_mech_status
debug
dup_static
dup_static
*scsi_mod
__ksymtab_scsi_device_get
scsi_device_get
*othermod
other_static
"""


@pytest.fixture(scope="session")
def small_list(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("symbols") / "Symbols.list"
    path.write_text(SMALL_LIST)
    return path


@pytest.fixture(scope="session")
def small_db(small_list):
    from klpkit.symbols import import_symbols_list

    db = import_symbols_list(
        small_list, release="6.1.0-test", db=small_list.parent / "small.sqlite"
    )
    yield db
    db.close()


TOOLCHAINS = {
    "x86_64": ["gcc", "-O2", "-fno-pic", "-fno-asynchronous-unwind-tables"],
    "i386": ["gcc", "-m32", "-O2", "-fno-pic", "-fno-asynchronous-unwind-tables"],
    "s390x": ["s390x-linux-gnu-gcc", "-O2", "-fno-asynchronous-unwind-tables"],
}


class Compiler:
    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.n = 0

    def __call__(self, source: str, arch: str = "x86_64", name: str | None = None) -> Path:
        self.n += 1
        name = name or f"obj{self.n}"
        if arch == "ppc":
            require_tools("powerpc-linux-gnu-as")
            src = self.tmp / f"{name}.s"
            src.write_text(source)
            out = self.tmp / f"{name}.o"
            cmd = ["powerpc-linux-gnu-as", "-a32", "-o", str(out), str(src)]
        else:
            argv = TOOLCHAINS[arch]
            require_tools(argv[0])
            src = self.tmp / f"{name}.c"
            src.write_text(source)
            out = self.tmp / f"{name}.o"
            cmd = [*argv, "-c", "-o", str(out), str(src)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            if arch == "i386" and "gnu/stubs-32.h" in r.stderr:
                require(False, "gcc -m32 has no 32-bit libc headers")
            raise AssertionError(f"{' '.join(cmd)} failed:\n{r.stderr}")
        return out


@pytest.fixture
def cc(tmp_path) -> Compiler:
    return Compiler(tmp_path)


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/sbin:/usr/sbin")
    require(path, f"{name} not installed")
    return path

"""Fixtures for the bad-input tests: small modules built with gcc, then given names the
compiler would never write (positions of 5,000 digits or non-ASCII digits, bytes that
are not UTF-8), and the convert tests' small symbol database."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from klpkit.elf import ElfFile
from tests.conftest import require_tools
from tests.convert.conftest import small_db, small_list  # noqa: F401 - fixtures

#: a livepatch-like object: an undefined exported symbol of cdrom, a non-exported one,
#: a vmlinux export, and the modinfo of a livepatch
LP_C = r"""
extern int printk(const char *, ...);
extern unsigned int cdrom_check_events(void *, unsigned int);
extern int cdrom_read_mech_status(void *, void *);
extern int placeholder_sym(void);
int lp_func(void *p)
{
    printk("%lx\n", (unsigned long) cdrom_check_events);
    return cdrom_read_mech_status(p, 0) + placeholder_sym();
}
const char modinfo[] __attribute__((section(".modinfo"), used, aligned(1))) =
    "livepatch=Y\0depends=cdrom\0vermagic=6.1.0-test SMP mod_unload ";
"""

BIG = "1" * 5000  # past Python's 4,300-digit int() limit
#: the placeholder's name in each mutant: positions no kernel tool writes
NUMBER_NAMES = {
    "klp_big": f".klp.sym.vmlinux.state_show,{BIG}",
    "klp_super": ".klp.sym.vmlinux.state_show,\u00b2",  # '²'.isdigit(), int('²') fails
    "klp_arabic": ".klp.sym.vmlinux.state_show,\u0663",  # int('٣') == 3, %lu refuses
    "klp_wide": ".klp.sym.vmlinux.state_show,18446744073709551616",  # 2**64
    "inter_big": f".klp.sym.rela.vmlinux.vmlinux.state_show,{BIG}",
    "inter_super": ".klp.sym.rela.vmlinux.vmlinux.state_show,\u00b2",
    "inter3_big": f".klp.sym.rela.vmlinux.vmlinux.state_show.{BIG}",
    "inter3_super": ".klp.sym.rela.vmlinux.vmlinux.state_show.\u00b2",
}


@pytest.fixture(scope="session")
def base_object(tmp_path_factory) -> Path:
    require_tools("gcc")
    d = tmp_path_factory.mktemp("badinput")
    (d / "lp.c").write_text(LP_C)
    out = d / "lp.o"
    cmd = ["gcc", "-O2", "-fno-pic", "-fno-asynchronous-unwind-tables", "-c", "-o", out]
    subprocess.run([*map(str, cmd), str(d / "lp.c")], check=True)
    return out


def renamed(src: Path, dst: Path, names: dict[str, str]) -> Path:
    """``src`` with its symbols renamed (old -> new), written to ``dst``."""
    elf = ElfFile.read(src)
    assert elf.symtab is not None
    for sym in elf.symtab.symbols:
        if sym.name in names:
            sym.name = names[sym.name]
    elf.write(dst)
    return dst


@pytest.fixture(scope="session")
def number_modules(base_object, tmp_path_factory) -> dict[str, Path]:
    """One object per entry of NUMBER_NAMES."""
    d = tmp_path_factory.mktemp("numbers")
    return {
        key: renamed(base_object, d / f"{key}.o", {"placeholder_sym": name})
        for key, name in NUMBER_NAMES.items()
    }


@pytest.fixture(scope="session")
def ff_module(base_object, tmp_path_factory) -> Path:
    """Names that are not UTF-8: an undefined symbol, a defined function, and a
    livepatch symbol whose name holds a 0xff byte (the bytes the file has)."""
    d = tmp_path_factory.mktemp("notutf8")
    return renamed(
        base_object,
        d / "lp_ff.o",
        {
            "cdrom_check_events": "cdrom_check_event\udcff",
            "lp_func": "lp_fun\udcff",
            "placeholder_sym": ".klp.sym.vmlinux.state_sho\udcff,1",
        },
    )

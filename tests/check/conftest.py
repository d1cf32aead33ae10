"""Fixtures for the check tests.

The real Debian symbol database and the seed's cdrom livepatch come from the convert
tests' session fixtures (``debian_symdb``, ``lp_modules``): reused, not rebuilt here.
``good_cdrom`` is that livepatch converted with the klpkit.convert API; ``cc`` is the
convert tests' compiler of C snippets; ``samples`` the kernel's own livepatch samples
and selftest modules of the release's source, built out of tree; the issue 12 modules
come from tests/convert/lp_issue12.py.
"""

from pathlib import Path

import pytest

from tests.convert.conftest import Compiler
from tests.convert.lp_issue12 import (  # noqa: F401 - fixtures
    debian_symbols_list,
    issue12_converted,
    issue12_modules,
)


@pytest.fixture
def cc(tmp_path) -> Compiler:
    return Compiler(tmp_path)


@pytest.fixture(scope="session")
def good_cdrom(lp_modules, debian_symdb, tmp_path_factory) -> Path:
    from klpkit.convert import convert_file

    out = tmp_path_factory.mktemp("check") / "lp_cdrom.ko"
    plan, result, _elf = convert_file(lp_modules["lp_cdrom"], out, debian_symdb)
    assert plan.ok, plan.errors
    assert result is not None and out.is_file()
    return out


@pytest.fixture(scope="session")
def samples(source_tree, debian_headers, debian_symdb, tmp_path_factory):
    """{module: path} of every sample and selftest module, and a database holding the
    targets among them (they are out-of-tree modules the livepatches patch)."""
    from klpkit.convert.objects import read_patched_objects
    from klpkit.elf import ElfFile
    from klpkit.symbols import add_modules
    from tests.kbuild import build_modules

    tmp = tmp_path_factory.mktemp("kernel-samples")
    root = source_tree.root  # read only: the sources are copied into the build dir
    files = sorted([*root.glob("samples/livepatch/*.c"), *root.glob("lib/livepatch/*.c")])
    sources = {f.name: f.read_text() for f in files}
    kbuild = "obj-m := " + " ".join(n[:-2] + ".o" for n in sources) + "\n"
    mods = {k.stem: k for k in build_modules(tmp / "build", sources, kbuild)}
    targets = [p for p in mods.values() if not read_patched_objects(ElfFile.read(p)).registers]
    db = add_modules(debian_symdb, targets, dest=tmp / "symbols.sqlite")
    yield mods, db
    db.close()

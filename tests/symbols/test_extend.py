"""Adding out-of-tree modules to a kernel's database (klpkit symbols add)."""

import subprocess
import sys

import pytest

from klpkit.errors import InputError
from klpkit.symbols import SymbolDB, add_modules, build_from_tree

from .conftest import compile_module

VENDOR = r"""
static int __attribute__((noinline, used)) vendor_helper(int x) { return x + 1; }
int vendor_api(int x) { return vendor_helper(x); }
static const char vermagic[] __attribute__((used, section(".modinfo"))) =
    "vermagic=%s SMP mod_unload ";
"""


@pytest.fixture
def small_db(small_tree, tmp_path):
    return build_from_tree(small_tree, db=tmp_path / "small.sqlite", progress=False)


def _vendor(tmp_path, name="vendor_mod", release="6.1.0-test"):
    d = tmp_path / name
    d.mkdir()
    return compile_module(d, name, [VENDOR % release])


def test_added_module_is_looked_up_like_an_in_tree_one(small_db, tmp_path):
    ko = _vendor(tmp_path)
    before = small_db.objects()
    db = add_modules(small_db, [ko], dest=tmp_path / "with-vendor.sqlite")
    assert set(db.objects()) == set(before) | {"vendor_mod"}
    (helper,) = db.lookup("vendor_helper")
    assert (helper.object, helper.bind, helper.type, helper.sympos) == (
        "vendor_mod",
        "local",
        "func",
        1,
    )
    assert db.counts()["objects"] == len(before) + 1
    assert str(ko) in " ".join(db.sources)
    # the original database is untouched when a destination is given
    assert "vendor_mod" not in SymbolDB.open(small_db.path).objects()


def test_module_of_another_kernel_is_refused_and_nothing_changes(small_db, tmp_path):
    ko = _vendor(tmp_path, release="5.4.0-other")
    data = small_db.path.read_bytes()
    with pytest.raises(
        InputError, match="built for kernel 5.4.0-other, the database is for 6.1.0-test"
    ):
        add_modules(small_db, [ko])
    assert small_db.path.read_bytes() == data
    assert [p.name for p in small_db.path.parent.iterdir() if p.suffix == ".tmp"] == []


def test_name_already_present_is_refused(small_db, tmp_path):
    ko = _vendor(tmp_path)
    db = add_modules(small_db, [ko])
    with pytest.raises(InputError, match="a module named vendor_mod is already in the database"):
        add_modules(db, [ko])


def test_cli_add_in_place(small_db, tmp_path):
    ko = _vendor(tmp_path)
    path = small_db.path
    small_db.close()
    proc = subprocess.run(
        [sys.executable, "-m", "klpkit.cli", "symbols", "add", str(ko), "--db", str(path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "vendor_mod" in SymbolDB.open(path).objects()
    again = subprocess.run(
        [sys.executable, "-m", "klpkit.cli", "symbols", "add", str(ko), "--db", str(path)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "already in the database" in again.stderr

"""Compressed modules in the symbol database: a kernel whose modules are ``.ko.xz`` (Debian's
6.12 line, CONFIG_MODULE_COMPRESS_XZ), ``.ko.zst`` or ``.ko.gz`` gives the same database as
the same modules uncompressed, and a damaged one is reported like any bad module."""

import gzip
import lzma
import shutil
import sqlite3
import subprocess

import pytest

from klpkit.errors import KlpkitError
from klpkit.symbols import build_from_debian, build_from_tree
from klpkit.symbols.elf_objects import find_modules, read_module
from tests.conftest import require

from .conftest import compile_module


def _compress(path, suffix: str):
    data = path.read_bytes()
    if suffix == ".xz":
        packed = lzma.compress(data, check=lzma.CHECK_CRC32)
    elif suffix == ".gz":
        packed = gzip.compress(data, mtime=0)
    else:
        packed = subprocess.run(
            ["zstd", "-q", "-c"], input=data, capture_output=True, check=True
        ).stdout
    out = path.with_name(path.name + suffix)
    out.write_bytes(packed)
    path.unlink()
    return out


def _content(db):
    with sqlite3.connect(db.path) as conn:
        exports = sorted(
            conn.execute(
                "SELECT e.name, o.name, e.type, e.namespace, e.crc "
                "FROM exports e JOIN objects o ON o.id = e.obj"
            )
        )
    return (
        db.all_symbols(),
        sorted(db.objects()),
        {m: db.module_depends(m) for m in db.objects() if m != "vmlinux"},
        exports,
    )


@pytest.mark.parametrize("suffix", [".xz", ".gz", ".zst"])
def test_tree_of_compressed_modules_equals_plain(small_tree, tmp_path, suffix):
    if suffix == ".zst" and not shutil.which("zstd"):
        require(False, "zstd not installed (scripts/setup.sh)")
    plain = build_from_tree(small_tree, db=tmp_path / "plain.sqlite", progress=False)
    for ko in list((small_tree / "drivers").glob("*.ko")):
        _compress(ko, suffix)
    assert [p.rsplit("/", 1)[1] for p in find_modules(small_tree)] == [
        f"mod-a.ko{suffix}",
        f"other_mod.ko{suffix}",
    ]
    packed = build_from_tree(small_tree, db=tmp_path / "packed.sqlite", progress=False)
    assert _content(packed) == _content(plain)
    assert packed.lookup("exported_fn")[0].object == "mod_a"


def test_module_name_without_modinfo_name(tmp_path, tools):
    """The in-kernel name of ``snd-foo.ko.xz`` is ``snd_foo`` (suffix and dashes)."""
    ko = compile_module(tmp_path, "snd-foo", ["int foo(void) { return 0; }\n"])
    rec, _mi = read_module(str(_compress(ko, ".xz")))
    assert rec.name == "snd_foo" and any(r.startswith(b"foo\0") for r in rec.records)


def test_debian_image_with_ko_xz_and_modules_dep(small_tree, tmp_path):
    """The 6.12 layout: lib/modules/<rel>/kernel/**.ko.xz, modules.dep naming .ko.xz."""
    img = tmp_path / "image"
    moddir = img / "lib" / "modules" / "6.1.0-test"
    (moddir / "kernel").mkdir(parents=True)
    shutil.copy(small_tree / "drivers" / "mod-a.ko", moddir / "kernel")
    plain = compile_module(tmp_path, "plain", ["int plain_fn(void) { return 0; }\n"])
    shutil.copy(plain, moddir / "kernel")
    for ko in list((moddir / "kernel").glob("*.ko")):
        _compress(ko, ".xz")
    (moddir / "modules.dep").write_text(
        "kernel/plain.ko.xz: kernel/mod-a.ko.xz\nkernel/mod-a.ko.xz:\n"
    )
    dbg = tmp_path / "dbg" / "usr" / "lib" / "debug" / "boot"
    dbg.mkdir(parents=True)
    shutil.copy(small_tree / "vmlinux", dbg / "vmlinux-6.1.0-test")
    db = build_from_debian(img, tmp_path / "dbg", db=tmp_path / "d.sqlite", progress=False)
    assert db.module_depends("plain") == ["mod_a"]  # from modules.dep
    assert db.lookup("plain_fn")[0].object == "plain"


def test_damaged_ko_xz_is_a_bad_module(small_tree, tmp_path):
    good = _compress(small_tree / "drivers" / "mod-a.ko", ".xz")
    bad = small_tree / "drivers" / "broken.ko.xz"
    bad.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(KlpkitError, match=r"broken\.ko\.xz: truncated xz data.*--skip-bad"):
        build_from_tree(small_tree, db=tmp_path / "x.sqlite", progress=False)
    db = build_from_tree(small_tree, db=tmp_path / "x.sqlite", progress=False, skip_bad=True)
    assert [p for p, _r in db.skipped] == [str(bad)]
    assert "mod_a" in db.objects()

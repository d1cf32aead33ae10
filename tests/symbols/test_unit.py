"""The symbol database on tiny gcc-built objects: rules, storage, refusals, round trips."""

import os
import sqlite3
import subprocess

import pytest

from klpkit.cli import main
from klpkit.errors import KlpkitError
from klpkit.kernel.modinfo import Modinfo, module_name
from klpkit.kernel.versions import ModVersion, parse_versions, serialize_versions
from klpkit.symbols import (
    SymbolDB,
    build_from_kallsyms,
    build_from_tree,
    export_symbols_list,
    import_symbols_list,
)
from klpkit.symbols.system_map import is_placeholder_system_map

from .conftest import MOD_A, compile_module, readelf_counts


@pytest.fixture
def tree_db(small_tree, tmp_path):
    return build_from_tree(small_tree, db=tmp_path / "db.sqlite", progress=False)


# --- .modinfo / __versions ----------------------------------------------------------
def test_modinfo_round_trip_and_edit():
    raw = (
        b"license=GPL\0alias=a\0alias=b\0depends=cdrom,scsi_mod\0name=sr_mod\0"
        b"vermagic=6.1.0-47-amd64 SMP preempt mod_unload modversions \0"
    )
    mi = Modinfo.parse(raw)
    assert mi.to_bytes() == raw
    assert mi.get_all("alias") == ["a", "b"]
    assert mi.depends == ["cdrom", "scsi_mod"] and mi.name == "sr_mod"
    assert mi.release == "6.1.0-47-amd64"
    mi.depends = ["scsi_mod"]
    assert b"depends=scsi_mod\0" in mi.to_bytes()
    assert Modinfo.parse(b"\0\0name=x\0\0").pairs == [("name", "x")]  # padding NULs
    assert module_name("/x/snd-hda-intel.ko") == "snd_hda_intel"
    assert module_name("/x/a-b.ko.xz", Modinfo([("name", "real")])) == "real"


@pytest.mark.parametrize("elfclass,le", [(64, True), (64, False), (32, True), (32, False)])
def test_versions_round_trip(elfclass, le):
    entries = [ModVersion("module_layout", 0xDEADBEEF), ModVersion("cdrom_check_events", 1)]
    data = serialize_versions(entries, elfclass, le)
    assert len(data) == 128
    assert parse_versions(data, elfclass, le) == entries
    word = 8 if elfclass == 64 else 4
    crc = int.from_bytes(data[:word], "little" if le else "big")
    assert crc == 0xDEADBEEF and data[word : word + 13] == b"module_layout"
    with pytest.raises(KlpkitError, match="too long"):
        serialize_versions([("x" * (64 - word), 0)], elfclass, le)
    with pytest.raises(KlpkitError, match="multiple of 64"):
        parse_versions(data[:-1], elfclass, le)


# --- sympos rules on small objects -------------------------------------------------
def test_module_rules_and_sympos(tree_db):
    db = tree_db
    assert db.release == "6.1.0-test"
    assert set(db.objects()) == {"vmlinux", "mod_a", "other_mod"}  # name= from .modinfo
    helpers = db.lookup("helper", "mod_a")
    assert [(e.sympos, e.count, e.bind, e.type) for e in helpers] == [
        (1, 2, "local", "func"),
        (2, 2, "local", "func"),
    ]
    assert [e.klp_sympos for e in helpers] == [1, 2]
    # one core copy and one in .init.text: after init unique, while loading two
    (core,) = db.lookup("dup_init_core", "mod_a")
    assert (core.sympos, core.count, core.load_sympos, core.load_count) == (1, 1, 1, 2)
    both = db.lookup("dup_init_core", "mod_a", include_init=True)
    assert [e.core for e in both] == [True, False]
    assert db.lookup("dup_init", "mod_a") == []  # init-only: not after init
    assert db.lookup("modinfo", "mod_a") == []  # .modinfo is not loaded
    assert db.lookup("modinfo", "mod_a", include_init=True)[0].core is False
    (e,) = db.lookup("exported_fn")
    assert (e.object, e.bind, e.exported, e.export_type, e.namespace, e.crc) == (
        "mod_a",
        "global",
        True,
        "EXPORT_SYMBOL_GPL",
        "MY_NS",
        0x12345678,
    )
    assert db.exporter("exported_fn") == "mod_a" and db.exporter("helper") is None
    assert db.module_depends("mod_a") == ["other_mod"]
    assert db.lookup("nonexistent") == []


def test_module_counts_match_readelf(small_tree, tree_db):
    core, total = readelf_counts(small_tree / "drivers" / "mod-a.ko")
    flags = [f for _n, f in tree_db.symbols_of("mod_a")]
    assert (sum(1 for f in flags if not f & 0x100), len(flags)) == (core, total)


def test_vmlinux_address_order_and_filters(tree_db, small_tree):
    dups = tree_db.lookup("dup", "vmlinux")
    assert [(e.sympos, e.count) for e in dups] == [(1, 2), (2, 2)]
    addrs = sorted(
        int(line.split()[1], 16)
        for line in subprocess.run(
            ["readelf", "-sW", str(small_tree / "vmlinux")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        if line.split()[-1:] == ["dup"]
    )
    assert len(addrs) == 2 and addrs[0] < addrs[1]  # two copies, kallsyms counts by address
    assert tree_db.lookup("abs_sym") == []  # absolute: not in kallsyms
    assert tree_db.lookup("__crc_hidden") == []  # dropped by mksysmap
    assert tree_db.lookup("weak_fn")[0].bind == "weak"
    assert tree_db.lookup("caller")[0].exported is False


# --- storage and refusals ----------------------------------------------------------
def _sql(path, statement: str, params=()) -> None:
    """Run one writing statement on a database file (to damage or age it)."""
    c = sqlite3.connect(path)
    try:
        c.execute(statement, params)
        c.commit()
    finally:
        c.close()


def test_truncated_db_refused(tree_db, tmp_path):
    bad = tmp_path / "trunc.sqlite"
    bad.write_bytes(tree_db.path.read_bytes()[: 8192 + 100])
    with pytest.raises(KlpkitError, match="truncated"):
        SymbolDB.open(bad)
    assert main(["symbols", "info", "--db", str(bad)]) == 2


def test_garbage_and_foreign_files_refused(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database" * 20)
    with pytest.raises(KlpkitError, match="no SQLite header"):
        SymbolDB.open(junk)
    other = tmp_path / "other.sqlite"
    _sql(other, "CREATE TABLE t(x)")
    with pytest.raises(KlpkitError, match="foreign SQLite"):
        SymbolDB.open(other)
    with pytest.raises(KlpkitError, match="no symbol database"):
        SymbolDB.open(tmp_path / "missing.sqlite")


def test_corrupt_pages_refused(tree_db, tmp_path):
    bad = tmp_path / "corrupt.sqlite"
    data = bytearray(tree_db.path.read_bytes())
    data[16384 + 8 : 16384 + 200] = os.urandom(192)  # scribble over the second page
    bad.write_bytes(bytes(data))
    with pytest.raises(KlpkitError):
        db = SymbolDB.open(bad)
        for name in ("helper", "dup", "exported_fn", "caller", "x"):
            db.lookup(name)
        db.objects()
        export_symbols_list(db, tmp_path / "o.list")


def test_bad_symbol_page_refused(tree_db, tmp_path, capsys):
    """A page whose records do not parse (valid SQLite, wrong contents) is one clear
    error, in the API and on the command line."""
    import shutil

    bad = tmp_path / "badpage.sqlite"
    shutil.copyfile(tree_db.path, bad)
    _sql(
        bad,
        "UPDATE symbol_pages SET records = ? WHERE first = (SELECT first FROM "
        "symbol_pages WHERE first <= ? ORDER BY first DESC LIMIT 1)",
        (b"helper\0zzzz", b"helper"),
    )
    with SymbolDB.open(bad) as db, pytest.raises(KlpkitError, match="corrupt symbol database"):
        db.lookup("helper")
    capsys.readouterr()
    assert main(["symbols", "lookup", "helper", "--db", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "symbol page" in err and "Traceback" not in err


def test_older_schema_refused_then_rebuilt(tmp_path):
    """A database an older klpkit wrote is refused with what to do, and a build over it
    replaces it (it is a cache)."""
    path = tmp_path / "old.sqlite"
    build_from_kallsyms("ffffffff81000000 T _text\n", release="6.1.0-x", db=path).close()
    _sql(path, "UPDATE meta SET value = '1' WHERE key = 'schema'")
    with pytest.raises(KlpkitError, match="schema 1 is not 4.*klpkit symbols build"):
        SymbolDB.open(path)
    db = build_from_kallsyms("ffffffff81000000 T _text\n", release="6.1.0-x", db=path)
    assert db.lookup("_text")[0].object == "vmlinux"
    db.close()


def test_wrong_release_refused(tree_db, small_tree):
    with pytest.raises(KlpkitError, match="is for kernel 6.1.0-test, not 6.1.0-47-amd64"):
        SymbolDB.open(tree_db.path, release="6.1.0-47-amd64")
    # and building another kernel into the same file is refused
    with pytest.raises(KlpkitError, match="refusing to mix"):
        build_from_kallsyms("ffffffff81000000 T _text\n", release="5.10.0-x", db=tree_db.path)


def test_module_of_another_kernel_refused(small_tree, tmp_path):
    src = MOD_A.replace("6.1.0-test", "5.10.0-old").replace("name=mod_a", "name=old_mod")
    compile_module(small_tree / "drivers", "old_mod", [src])
    with pytest.raises(KlpkitError, match="built for kernel 5.10.0-old, not 6.1.0-test"):
        build_from_tree(small_tree, db=tmp_path / "x.sqlite", progress=False)


def test_corrupt_module_needs_skip_bad(small_tree, tmp_path, capsys):
    bad = small_tree / "drivers" / "broken.ko"
    data = (small_tree / "drivers" / "mod-a.ko").read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # truncated: symbol table cut off
    with pytest.raises(KlpkitError, match=r"broken\.ko: .*--skip-bad"):
        build_from_tree(small_tree, db=tmp_path / "x.sqlite", progress=False)
    assert not (tmp_path / "x.sqlite").exists()  # clean failure: no file left
    rc = main(["symbols", "build", "--tree", str(small_tree), "--db", str(tmp_path / "x.sqlite")])
    err = capsys.readouterr().err
    assert rc == 2 and "broken.ko" in err and err.count("\n") == 1
    rc = main(
        [
            "symbols",
            "build",
            "--tree",
            str(small_tree),
            "--db",
            str(tmp_path / "x.sqlite"),
            "--skip-bad",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0 and "skipped" in err and "broken.ko" in err
    db = SymbolDB.open(tmp_path / "x.sqlite")
    assert [p for p, _r in db.skipped] == [str(bad)]
    assert "mod_a" in db.objects()


# --- Symbols.list --------------------------------------------------------------------
def test_symbols_list_round_trip(tree_db, tmp_path):
    out = tmp_path / "Symbols.list"
    export_symbols_list(tree_db, out)
    lines = out.read_text().splitlines()
    assert lines[0] == "klp-convert-symbol-data.0.1" and lines[1] == "*vmlinux"
    mod = lines[lines.index("*mod_a") + 1 :]
    assert mod.index("helper") < len(mod) and "__ksymtab_exported_fn" in mod
    again = import_symbols_list(out, db=tmp_path / "again.sqlite")
    assert again == tree_db
    assert again.lookup("helper", "mod_a") == tree_db.lookup("helper", "mod_a")


def test_import_kernel_generated_symbols_list(tmp_path):
    src = tmp_path / "symbols.klp"
    src.write_text(
        "klp-convert-symbol-data.0.1\n*vmlinux\nprintk\n__ksymtab_printk\n"
        "homonym\nhomonym\n*test_mod\ndriver_name\n"
    )
    db = import_symbols_list(src, release="6.1.0-x", db=tmp_path / "k.sqlite")
    assert [(e.sympos, e.count) for e in db.lookup("homonym")] == [(1, 2), (2, 2)]
    (p,) = db.lookup("printk")
    assert p.exported and p.bind == "unknown"
    assert db.meta["source"] == "symbols-list(nm)"
    bad = tmp_path / "bad.klp"
    bad.write_text("something else\n")
    with pytest.raises(KlpkitError, match="unknown format"):
        import_symbols_list(bad, release="x", db=tmp_path / "b.sqlite")
    bad.write_text("klp-convert-symbol-data.0.1\nname_before_object\n")
    with pytest.raises(KlpkitError, match="before any"):
        import_symbols_list(bad, release="x", db=tmp_path / "b.sqlite")


# --- /proc/kallsyms --------------------------------------------------------------------
KALLSYMS = """\
ffffffff81000000 T _text
ffffffff81001000 t dup
ffffffff81002000 T printk
ffffffff81003000 t dup
ffffffff82000000 r __ksymtab_printk
ffffffffc0001000 t cdrom_ioctl_media_changed\t[cdrom]
ffffffffc0002000 T cdrom_check_events\t[cdrom]
ffffffffc0003000 t helper\t[cdrom]
ffffffffc0004000 t helper\t[cdrom]
ffffffffc0010000 t sr_block_open\t[sr_mod]
ffffffffc0020000 t bpf_prog_x\t[bpf]
"""
MODULES = """\
sr_mod 28672 0 - Live 0x0000000000000000
cdrom 77824 1 sr_mod, Live 0x0000000000000000
"""


def test_build_from_kallsyms(tmp_path):
    db = build_from_kallsyms(KALLSYMS, MODULES, release="6.1.0-k", db=tmp_path / "k.sqlite")
    assert db.objects() == ["vmlinux", "cdrom", "sr_mod"]
    assert [e.sympos for e in db.lookup("dup")] == [1, 2]
    (c,) = db.lookup("cdrom_check_events")
    assert c.exported and c.object == "cdrom"
    assert db.lookup("printk")[0].exported
    assert db.lookup("cdrom_ioctl_media_changed")[0].exported is False
    assert [(e.sympos, e.count) for e in db.lookup("helper", "cdrom")] == [(1, 2), (2, 2)]
    assert db.module_depends("sr_mod") == ["cdrom"] and db.module_depends("cdrom") == []
    assert db.lookup("bpf_prog_x") == []


# --- CLI ------------------------------------------------------------------------------
def test_cli(small_tree, tmp_path, capsys, monkeypatch):
    dbp = tmp_path / "c.sqlite"
    assert main(["symbols", "build", "--tree", str(small_tree), "--db", str(dbp)]) == 0
    capsys.readouterr()
    monkeypatch.setenv("KLPKIT_SYMBOLS_DB", str(dbp))
    assert main(["symbols", "lookup", "helper", "--object", "mod_a"]) == 0
    out = capsys.readouterr().out
    assert "1/2" in out and "2/2" in out and "local" in out
    assert main(["symbols", "lookup", "exported_fn", "--json"]) == 0
    import json

    (e,) = json.loads(capsys.readouterr().out)
    assert e["export_type"] == "EXPORT_SYMBOL_GPL" and e["klp_sympos"] == 0
    assert main(["symbols", "lookup", "nope"]) == 1
    assert main(["symbols", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["release"] == "6.1.0-test" and info["counts"]["objects"] == 3
    assert main(["symbols", "export-list", str(tmp_path / "S.list")]) == 0
    assert (tmp_path / "S.list").read_text().startswith("klp-convert-symbol-data.0.1\n")
    assert main(["symbols", "info", "--release", "9.9.9"]) == 2


def test_cache_location(small_tree, tmp_path, monkeypatch):
    monkeypatch.setenv("KLPKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KLPKIT_SYMBOLS_DB", raising=False)
    db = build_from_tree(small_tree, progress=False)
    assert db.path == tmp_path / "cache" / "symbols" / "6.1.0-test.sqlite"
    assert main(["symbols", "info", "--release", "6.1.0-test"]) == 0


def test_debian_placeholder_detected(tmp_path):
    from klpkit.symbols import build_from_debian

    img = tmp_path / "image"
    (img / "boot").mkdir(parents=True)
    (img / "lib" / "modules" / "6.1.0-47-amd64").mkdir(parents=True)
    sm = img / "boot" / "System.map-6.1.0-47-amd64"
    sm.write_text(
        "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n"
    )
    assert is_placeholder_system_map(sm)
    with pytest.raises(KlpkitError, match=r"placeholder.*linux-image-6\.1\.0-47-amd64-dbg"):
        build_from_debian(img, db=tmp_path / "d.sqlite", progress=False)


@pytest.mark.parametrize(
    "cc,flags", [("gcc", ("-m32",)), ("powerpc64-linux-gnu-gcc", ()), ("s390x-linux-gnu-gcc", ())]
)
def test_other_classes_and_byte_orders(tmp_path, tools, cc, flags):
    import shutil

    from tests.conftest import require

    require(shutil.which(cc), f"{cc} not installed")
    ld = "ld" if cc == "gcc" else cc.replace("-gcc", "-ld")
    require(shutil.which(ld), f"{ld} not installed")
    ldflags = ["-m", "elf_i386"] if "-m32" in flags else []
    ko = compile_module(
        tmp_path,
        "m",
        [MOD_A.replace("name=mod_a", "name=m32")],
        cc=cc,
        ld=ld,
        cflags=flags,
        ldflags=ldflags,
    )
    from klpkit.symbols.elf_objects import read_module

    rec, mi = read_module(str(ko))
    names = [n for n, _flags in rec.pairs()]
    assert "exported_fn" in names and "helper" in names and "dup_init" in names
    assert mi.name == "m32"
    (exp,) = rec.exports
    assert (exp.name, exp.export_type, exp.namespace, exp.crc) == (
        "exported_fn",
        "EXPORT_SYMBOL_GPL",
        "MY_NS",
        0x12345678,
    )


def test_debian_layout_modules_dep_and_system_map(small_tree, tmp_path):
    import shutil

    from klpkit.symbols import build_from_debian

    img = tmp_path / "image"
    moddir = img / "lib" / "modules" / "6.1.0-test"
    (moddir / "kernel").mkdir(parents=True)
    shutil.copy(small_tree / "drivers" / "mod-a.ko", moddir / "kernel")
    plain = compile_module(tmp_path, "plain", ["int plain_fn(void) { return 0; }\n"])
    shutil.copy(plain, moddir / "kernel")
    (moddir / "modules.dep").write_text("kernel/plain.ko: kernel/mod-a.ko\nkernel/mod-a.ko:\n")
    dbg = tmp_path / "dbg" / "usr" / "lib" / "debug" / "boot"
    dbg.mkdir(parents=True)
    shutil.copy(small_tree / "vmlinux", dbg / "vmlinux-6.1.0-test")
    db = build_from_debian(img, tmp_path / "dbg", db=tmp_path / "d.sqlite", progress=False)
    assert db.module_depends("plain") == ["mod_a"]  # from modules.dep
    assert db.module_depends("mod_a") == ["other_mod"]  # .modinfo wins
    assert db.build_id  # gcc's --build-id note
    # the same vmlinux through its System.map (nm -n, as mksysmap writes it)
    nm = subprocess.run(
        ["nm", "-n", str(dbg / "vmlinux-6.1.0-test")], capture_output=True, text=True, check=True
    ).stdout
    (dbg / "vmlinux-6.1.0-test").unlink()
    (dbg / "System.map-6.1.0-test").write_text(nm)
    db2 = build_from_debian(img, tmp_path / "dbg", db=tmp_path / "d2.sqlite", progress=False)
    assert [n for n, _f in db2.symbols_of("vmlinux")] == [n for n, _f in db.symbols_of("vmlinux")]
    assert [(e.sympos, e.bind) for e in db2.lookup("dup")] == [(1, "local"), (2, "local")]
    # several releases installed: the caller must choose
    (img / "lib" / "modules" / "5.10.0-old").mkdir()
    with pytest.raises(KlpkitError, match="pass --release"):
        build_from_debian(img, tmp_path / "dbg", db=tmp_path / "d3.sqlite", progress=False)


def test_page_records_sort_and_find():
    """Records sort as (name, object, position); a name that reads like a payload is
    never confused with one (the NUL-parity rule of payloads_of)."""
    from klpkit.symbols.pages import Page, make_pages, make_records, parse_record, payloads_of

    assert make_records(5, []) == []  # an object without symbols
    hexname = "0001000002002"  # 13 hex digits: looks like a payload
    recs = (
        make_records(1, [("b", 2), ("a", 1), ("b", 0x112), (hexname, 1)])
        + make_records(0, [("b", 0x22), ("ab", 1)])
        + make_records(2, [("a", 0x21)])
    )
    recs.sort()
    assert [parse_record(r) for r in recs] == [
        (hexname.encode(), 1, 3, 1),
        (b"a", 1, 1, 1),
        (b"a", 2, 0, 0x21),
        (b"ab", 0, 1, 1),
        (b"b", 0, 0, 0x22),
        (b"b", 1, 0, 2),
        (b"b", 1, 2, 0x112),
    ]
    for rows in (1, 2, 3, 64):
        pages = make_pages(recs, rows)
        # a page never splits one name's records, and its key is its first name
        for first, blob in pages:
            page = Page.decode(blob)
            assert page.names[0] == first
        names = [n for _f, blob in pages for n in Page.decode(blob).names]
        assert names == [parse_record(r)[0] for r in recs]
        for name, want in (
            (b"b", 3),
            (b"a", 2),
            (b"ab", 1),
            (hexname.encode(), 1),
            (b"0001", 0),
            (b"c", 0),
        ):
            got = sum(len(payloads_of(blob, name)) for _f, blob in pages)
            assert got == want, (rows, name)
    # "x" at position 0 has the payload 0001 000000 001: a record named so is found
    # by its own position (1), and without one the payload is not taken for it
    blob = b"\0".join(sorted(make_records(1, [("x", 1), ("0001000000001", 1)])))
    assert payloads_of(blob, b"0001000000001") == [b"0001000001001"]
    blob = b"\0".join(sorted(make_records(1, [("x", 1), ("y", 1)])))
    assert blob.startswith(b"x\x000001000000001\0y")
    assert payloads_of(blob, b"0001000000001") == []

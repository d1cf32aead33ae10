"""Bad input against the symbol database and its sources: damaged database files (every
variant x every command that opens one), names that are not UTF-8, paths that are not
what they should be, and malformed source files.  Every one ends in exit 2 and one
line naming the file, never a traceback."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from klpkit.cli import main
from klpkit.errors import KlpkitError
from klpkit.symbols import (
    SymbolDB,
    SymbolDBError,
    build_from_kallsyms,
    export_symbols_list,
    import_symbols_list,
)
from klpkit.symbols.db import export_check, page_check
from tests.conftest import require_tools

RELEASE = "6.1.0-test"
KALLSYMS = """\
ffffffff81000000 T _text
ffffffff81000010 t dup
ffffffff81000020 t dup
ffffffff81000030 T cdrom_check_events
ffffffff81000040 T klp_enable_patch
ffffffff81000050 T module_layout
ffffffffc0000000 t helper\t[cdrom]
ffffffffc0000010 T cdrom_get_media_event\t[cdrom]
ffffffffc0000020 r __ksymtab_cdrom_get_media_event\t[cdrom]
"""
SYMVERS = (
    "0x12345678\tcdrom_check_events\tvmlinux\tEXPORT_SYMBOL\t\n"
    "0x9abcdef0\tcdrom_get_media_event\tdrivers/cdrom/cdrom\tEXPORT_SYMBOL_GPL\tCDROM_NS\n"
    "0x11111111\tklp_enable_patch\tvmlinux\tEXPORT_SYMBOL_GPL\t\n"
    "0x22222222\tmodule_layout\tvmlinux\tEXPORT_SYMBOL\t\n"
)
# a livepatch-like module using a vmlinux symbol (its name made not UTF-8 after the
# build) and a module's export
LP_C = r"""
extern int cdrom_get_media_event(int);
extern int cdrom_check_eventsX(int);
int lp_fn(int x) { return cdrom_get_media_event(x) + cdrom_check_eventsX(x); }
static const char modinfo[] __attribute__((used, section(".modinfo"), aligned(1)))
    = "license=GPL\0name=lp_test\0vermagic=6.1.0-test SMP mod_unload \0";
static char thismod[0x380] __attribute__((used, section(".gnu.linkonce.this_module")));
"""
OOT_C = r"""
int oot_fn(int x) { return x + 1; }
static const char modinfo[] __attribute__((used, section(".modinfo"), aligned(1)))
    = "license=GPL\0name=oot\0vermagic=6.1.0-test SMP mod_unload \0";
"""


def _compile(tmp: Path, name: str, source: str) -> Path:
    (tmp / f"{name}.c").write_text(source)
    subprocess.run(["gcc", "-c", "-O2", "-o", f"{name}.o", f"{name}.c"], cwd=tmp, check=True)
    subprocess.run(["ld", "-r", "-o", f"{name}.ko", f"{name}.o"], cwd=tmp, check=True)
    return tmp / f"{name}.ko"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A good database, the livepatch-like module (one undefined name not UTF-8), an
    out-of-tree module for ``symbols add``."""
    require_tools("gcc", "ld")
    tmp = tmp_path_factory.mktemp("bad-input")
    (tmp / "kallsyms").write_text(KALLSYMS)
    (tmp / "Module.symvers").write_text(SYMVERS)
    build_from_kallsyms(
        KALLSYMS, release=RELEASE, db=tmp / "good.sqlite", symvers=tmp / "Module.symvers"
    ).close()
    lp = _compile(tmp, "lp", LP_C)
    raw = lp.read_bytes().replace(b"cdrom_check_eventsX\0", b"cdrom_check_events\xff\0")
    (tmp / "lp_ff.ko").write_bytes(raw)
    return {
        "db": tmp / "good.sqlite",
        "lp": tmp / "lp_ff.ko",
        "oot": _compile(tmp, "oot", OOT_C),
        "dir": tmp,
    }


def _sql(path: Path, *statements: str, params=()) -> None:
    c = sqlite3.connect(path)
    try:
        for s in statements:
            c.execute(s, params if "?" in s else ())
        c.commit()
    finally:
        c.close()


def _meta(key: str, value) -> str:
    if value is None:
        return f"DELETE FROM meta WHERE key = '{key}'"
    return f"UPDATE meta SET value = {value} WHERE key = '{key}'"


def _rewrite_page(path: Path, fn) -> None:
    """Replace the (only) page's records by ``fn(records)``, its check kept consistent:
    a page that is well-formed as SQLite data and as a checked row, wrong inside."""
    c = sqlite3.connect(path)
    try:
        first, records = c.execute("SELECT first, records FROM symbol_pages").fetchone()
        new = fn(records)
        c.execute(
            "UPDATE symbol_pages SET records = ?, chk = ? WHERE first = ?",
            (new, page_check(new), first),
        )
        c.commit()
    finally:
        c.close()


# the looked-up name's record, up to its object id
_CDROM = b"\0cdrom_get_media_event\x000001"


def _random_bytes(path: Path, table: str) -> None:
    """4 KB of random bytes over the last 4 KB of ``table``'s (only) page, where SQLite
    keeps its rows (random bytes in a page's free space change nothing)."""
    c = sqlite3.connect(path)
    try:
        (root,) = c.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()
        (size,) = c.execute("PRAGMA page_size").fetchone()
    finally:
        c.close()
    data = bytearray(path.read_bytes())
    end = root * size
    data[end - 4096 : end] = random.Random(root).randbytes(4096)
    path.write_bytes(bytes(data))


def _export_consistent(path: Path) -> None:
    """An export row pointing at an object that is not there, its check recomputed."""
    c = sqlite3.connect(path)
    try:
        name, etype, ns, crc = c.execute(
            "SELECT name, type, namespace, crc FROM exports WHERE obj = 1"
        ).fetchone()
        c.execute(
            "UPDATE exports SET obj = 9, chk = ? WHERE name = ?",
            (export_check(name, 9, etype, ns, crc), name),
        )
        c.commit()
    finally:
        c.close()


# name -> SQL statements, or a function of the path
DAMAGE = {
    "meta-release-missing": [_meta("release", None)],
    "meta-release-empty": [_meta("release", "x''")],
    "meta-release-changed": [_meta("release", "CAST('6.1.0-other' AS BLOB)")],
    "meta-machine-word": [_meta("machine", "CAST('x86' AS BLOB)")],
    "meta-machine-unicode-digit": [_meta("machine", "CAST('٣' AS BLOB)")],
    "meta-counts-bad-json": [_meta("counts", "CAST('{bad' AS BLOB)")],
    "meta-counts-list": [_meta("counts", "CAST('[]' AS BLOB)")],
    "meta-counts-text-numbers": [_meta("counts", 'CAST(\'{"objects": "2"}\' AS BLOB)')],
    "meta-sources-bad-json": [_meta("sources", "CAST('not json' AS BLOB)")],
    "meta-sources-numbers": [_meta("sources", "CAST('[1, 2]' AS BLOB)")],
    "meta-skipped-object": [_meta("skipped", "CAST('{\"a\": 1}' AS BLOB)")],
    "meta-value-integer": [_meta("build_id", "5")],
    "meta-check-missing": [_meta("check", None)],
    "meta-objects-check-missing": [_meta("objects", None)],
    "meta-schema-old": [_meta("schema", "CAST('3' AS BLOB)")],
    "meta-format-missing": [_meta("format", None)],
    "object-row-deleted": ["DELETE FROM objects WHERE id = 1"],
    "object-renamed": ["UPDATE objects SET name = x'6364726f6d32' WHERE id = 1"],
    "object-name-text": ["UPDATE objects SET name = 'cdrom' WHERE id = 1"],
    "object-kind-unknown": ["UPDATE objects SET kind = 'weird' WHERE id = 1"],
    "object-id-moved": ["UPDATE objects SET id = 7 WHERE id = 1"],
    "object-depends-integer": ["UPDATE objects SET depends = 3 WHERE id = 1"],
    "export-crc-text": ["UPDATE exports SET crc = 'abc' WHERE obj = 1"],
    "export-crc-changed": ["UPDATE exports SET crc = 1 WHERE obj = 1"],
    "export-type-changed": ["UPDATE exports SET type = x'4558504f5254' WHERE obj = 1"],
    "export-namespace-integer": ["UPDATE exports SET namespace = 7 WHERE obj = 1"],
    "export-object-missing": _export_consistent,
    "page-records-garbage": ["UPDATE symbol_pages SET records = x'00ff00ff'"],
    "page-check-changed": ["UPDATE symbol_pages SET chk = chk + 1"],
    "page-check-text": ["UPDATE symbol_pages SET chk = 'abc'"],
    "page-first-changed": ["UPDATE symbol_pages SET first = x'5f5f6b'"],
    "page-records-text": ["UPDATE symbol_pages SET records = 'dup'"],
    "page-payload-not-hex": lambda p: _rewrite_page(
        p, lambda r: r.replace(_CDROM, _CDROM[:-4] + b"zz01")
    ),
    "page-object-missing": lambda p: _rewrite_page(
        p, lambda r: r.replace(_CDROM, _CDROM[:-4] + b"0009")
    ),
    "page-odd-fields": lambda p: _rewrite_page(p, lambda r: r + b"\x00tail"),
    "table-exports-dropped": ["DROP TABLE exports"],
    "table-objects-dropped": ["DROP TABLE objects"],
    "table-pages-dropped": ["DROP TABLE symbol_pages"],
    "table-meta-dropped": ["DROP TABLE meta"],
    "file-random-4k-meta": lambda p: _random_bytes(p, "meta"),
    "file-random-4k-objects": lambda p: _random_bytes(p, "objects"),
    "file-random-4k-pages": lambda p: _random_bytes(p, "symbol_pages"),
    "file-random-4k-exports": lambda p: _random_bytes(p, "exports"),
    "file-truncated": lambda p: p.write_bytes(p.read_bytes()[:20000]),
    "file-foreign-sqlite": ["PRAGMA user_version = 7"],
}


def _damaged(inputs, tmp_path: Path, variant: str) -> Path:
    path = tmp_path / f"{variant}.sqlite"
    shutil.copyfile(inputs["db"], path)
    how = DAMAGE[variant]
    if callable(how):
        how(path)
    else:
        _sql(path, *how)
    return path


def _commands(inputs, db: Path, out: Path) -> dict[str, list[str]]:
    """Every command that opens a symbol database."""
    lp = str(inputs["lp"])
    return {
        "lookup": ["symbols", "lookup", "cdrom_get_media_event", "--db", str(db)],
        "info": ["symbols", "info", "--db", str(db)],
        "verify": ["symbols", "info", "--verify", "--db", str(db)],
        "export-list": ["symbols", "export-list", str(out / "list"), "--db", str(db)],
        "add": ["symbols", "add", str(inputs["oot"]), "-o", str(out / "added"), "--db", str(db)],
        "check": ["check", lp, "--symbols", str(db)],
        "deps": ["deps", lp, "--symbols", str(db)],
        "convert": ["convert", lp, "-o", str(out / "out.ko"), "--symbols", str(db)],
    }


# commands that read every row: any damage is theirs to find (damage to SQLite's own
# structures, an index no query uses, only SQLite's integrity check finds)
READ_ALL = ("verify", "export-list", "add")
READ_FILE = ("verify",)


def _run(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_good_database_passes_every_command(inputs, tmp_path, capsys):
    """The baseline the damaged variants are compared to."""
    codes = {}
    for name, argv in _commands(inputs, inputs["db"], tmp_path).items():
        rc, err = _run(argv, capsys)
        assert "Traceback" not in err and "corrupt" not in err, (name, err)
        codes[name] = rc
    assert codes["lookup"] == codes["info"] == codes["verify"] == 0
    assert codes["export-list"] == codes["add"] == 0
    # the undefined name that is not UTF-8 is looked up, not found, and reported
    rc, err = _run(["check", str(inputs["lp"]), "--symbols", str(inputs["db"])], capsys)
    assert rc == 1


@pytest.mark.parametrize("variant", sorted(DAMAGE))
def test_damaged_database(inputs, tmp_path, capsys, variant):
    """Each command exits 2 with one line naming the database, or (a command that does
    not read the damaged part) works as on the good file; those reading every row
    always find the damage."""
    db = _damaged(inputs, tmp_path, variant)
    for name, argv in _commands(inputs, db, tmp_path).items():
        rc, err = _run(argv, capsys)
        assert "Traceback" not in err, (variant, name, err)
        must = READ_FILE if variant.startswith("file-random") else READ_ALL
        # (a page's first name is its key: a wrong one misleads a scan, not the lookup)
        quiet = ("export", "file-r", "page-first")
        if name in must or name == "lookup" and not variant.startswith(quiet):
            assert rc == 2, (variant, name, rc, err)
        if rc == 2:
            last = err.strip().splitlines()[-1]
            assert str(db) in last, (variant, name, err)
            if name.startswith(("lookup", "info", "verify", "export", "add")):
                assert err.count("\n") == 1, (variant, name, err)
    assert not (tmp_path / "added").exists()


def test_damaged_database_api(inputs, tmp_path):
    """The same through the API: one SymbolDBError, never a KeyError or TypeError."""
    for variant in sorted(DAMAGE):
        path = _damaged(inputs, tmp_path, variant)
        try:
            with SymbolDB.open(path) as db:
                for name in ("dup", "cdrom_get_media_event", "cdrom_check_events", "x"):
                    db.lookup(name)
                    db.export(name)
                db.names_with_prefix("cdrom", "cdrom")
                db.symbols_of("vmlinux")
                db.module_depends("vmlinux")
                db.verify()
        except SymbolDBError as e:
            assert "\n" not in str(e) and str(path) in str(e), variant
        else:
            pytest.fail(f"{variant}: not noticed")


def test_export_row_deleted_found_by_verify(inputs, tmp_path, capsys):
    """A row missing is no damaged row: queries cannot see it, the counts can."""
    for statement in ("DELETE FROM exports WHERE obj = 1", "DELETE FROM symbol_pages"):
        db = tmp_path / "x.sqlite"
        shutil.copyfile(inputs["db"], db)
        _sql(db, statement)
        rc, err = _run(["symbols", "info", "--verify", "--db", str(db)], capsys)
        assert rc == 2 and "meta counts" in err and err.count("\n") == 1


def test_old_schema_is_rebuilt(inputs, tmp_path):
    """A database of the previous schema is refused with what to do, and a build over
    it replaces it (it is a cache)."""
    path = _damaged(inputs, tmp_path, "meta-schema-old")
    with pytest.raises(SymbolDBError, match="schema 3 is not 4.*klpkit symbols build"):
        SymbolDB.open(path)
    build_from_kallsyms(KALLSYMS, release=RELEASE, db=path).close()
    with SymbolDB.open(path) as db:
        assert db.lookup("_text")[0].object == "vmlinux"


# --- names that are not UTF-8 ---------------------------------------------------------
def test_names_not_utf8_are_stored_and_found(tmp_path):
    """A name with a byte that is not UTF-8 (read with surrogateescape) is stored as its
    bytes and found again; object names too; a name no kernel can have finds nothing."""
    text = "ffffffff81000000 T caf\udce9\nffffffffc0000000 T helper\t[c\udcffdrom]\n"
    db = build_from_kallsyms(text, release=RELEASE, db=tmp_path / "u.sqlite")
    with db:
        (e,) = db.lookup("caf\udce9")
        assert e.object == "vmlinux" and e.bind == "global"
        assert db.export("helper")[0] == "c\udcffdrom"
        assert db.lookup("helper")[0].exported
        assert "c\udcffdrom" in db.objects()
        for impossible in ("", "a\0b", "\ud800x", "caf\udce9\0"):
            assert db.lookup(impossible) == []
            assert db.export(impossible) is None
        db.verify()
        export_symbols_list(db, tmp_path / "u.list")
    raw = (tmp_path / "u.list").read_bytes()
    assert b"caf\xe9\n" in raw and b"*c\xffdrom\n" in raw
    with import_symbols_list(tmp_path / "u.list", db=tmp_path / "again.sqlite") as again:
        assert again.lookup("caf\udce9")[0].object == "vmlinux"


def test_symbols_list_object_not_utf8(tmp_path, capsys):
    """A Symbols.list object line ``*c\\xffdrom`` (kernel Makefile format) is imported."""
    path = tmp_path / "Symbols.list"
    path.write_bytes(b"klp-convert-symbol-data.0.1\n*vmlinux\n_text\n*c\xffdrom\nhelper\n")
    rc, err = _run(
        ["symbols", "build", "--symbols-list", str(path), "--release", RELEASE,
         "--db", str(tmp_path / "l.sqlite")],
        capsys,
    )  # fmt: skip
    assert rc == 0, err
    with SymbolDB.open(tmp_path / "l.sqlite") as db:
        assert db.lookup("helper")[0].object == "c\udcffdrom"


def test_lookup_cli_name_not_utf8(inputs, capsys):
    rc, err = _run(["symbols", "lookup", "caf\udce9", "--db", str(inputs["db"])], capsys)
    assert rc == 1 and "not found" in err and "Traceback" not in err


# --- paths ----------------------------------------------------------------------------
def test_export_list_over_its_database_refused(inputs, tmp_path, capsys):
    db = tmp_path / "db.sqlite"
    shutil.copyfile(inputs["db"], db)
    before = db.read_bytes()
    rc, err = _run(["symbols", "export-list", str(db), "--db", str(db)], capsys)
    assert rc == 2 and "same file" in err and err.count("\n") == 1
    assert db.read_bytes() == before


def test_add_output_directory_missing_or_unwritable(inputs, tmp_path, capsys):
    rc, err = _run(
        ["symbols", "add", str(inputs["oot"]), "-o", str(tmp_path / "missing" / "x.sqlite"),
         "--db", str(inputs["db"])],
        capsys,
    )  # fmt: skip
    assert rc == 2 and "does not exist" in err and err.count("\n") == 1
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root writes anyway: nothing to refuse
            return
        rc, err = _run(
            ["symbols", "add", str(inputs["oot"]), "-o", str(ro / "x.sqlite"),
             "--db", str(inputs["db"])],
            capsys,
        )  # fmt: skip
        assert rc == 2 and "cannot create output" in err and err.count("\n") == 1
    finally:
        ro.chmod(0o755)


def test_add_then_lookup(inputs, tmp_path):
    out = tmp_path / "added.sqlite"
    assert (
        main(["symbols", "add", str(inputs["oot"]), "-o", str(out), "--db", str(inputs["db"])]) == 0
    )
    with SymbolDB.open(out) as db:
        assert db.lookup("oot_fn")[0].object == "oot"
        assert db.lookup("cdrom_get_media_event")[0].crc == 0x9ABCDEF0
        assert db.verify()["objects"] == 3


def test_build_db_is_a_directory(inputs, tmp_path, capsys):
    rc, err = _run(
        ["symbols", "build", "--kallsyms", str(inputs["dir"] / "kallsyms"), "--release",
         RELEASE, "--db", str(tmp_path)],
        capsys,
    )  # fmt: skip
    assert rc == 2 and "is a directory" in err and err.count("\n") == 1


@pytest.mark.parametrize("what", ["fifo", "zero", "dir"])
def test_inputs_that_are_not_files(inputs, tmp_path, capsys, what):
    """A FIFO would hang a read, /dev/zero would grow memory without bound: every input
    of `symbols build` and the database itself are refused as not regular files."""
    if what == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
    elif what == "zero":
        path = Path("/dev/zero")
    else:
        path = tmp_path
    kallsyms = str(inputs["dir"] / "kallsyms")
    out = str(tmp_path / "o.sqlite")
    for argv in (
        ["symbols", "build", "--kallsyms", str(path), "--release", RELEASE, "--db", out],
        ["symbols", "build", "--kallsyms", kallsyms, "--modules", str(path), "--release",
         RELEASE, "--db", out],
        ["symbols", "build", "--kallsyms", kallsyms, "--symvers", str(path), "--release",
         RELEASE, "--db", out],
        ["symbols", "build", "--symbols-list", str(path), "--release", RELEASE, "--db", out],
        ["symbols", "lookup", "x", "--db", str(path)],
        ["symbols", "info", "--db", str(path)],
    ):  # fmt: skip
        rc, err = _run(argv, capsys)
        assert rc == 2 and str(path) in err and err.count("\n") == 1, (argv, err)


def test_stale_temp_of_a_killed_build_removed(inputs, tmp_path):
    """A build killed by SIGKILL leaves its temp file; the next write next to it removes
    it (the pid in its name is no longer running)."""
    dead = 2**22 + 12345  # above pid_max's default: no such process
    stale = tmp_path / f".db.sqlite.{dead}.abcd.tmp"
    stale.write_bytes(b"x" * 1000)
    build_from_kallsyms(KALLSYMS, release=RELEASE, db=tmp_path / "db.sqlite").close()
    assert not stale.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["db.sqlite"]


# --- messages that name the file ------------------------------------------------------
def test_kallsyms_malformed_line_names_the_file(tmp_path, capsys):
    for text, why in (
        ("ffffffff81000000 T _text\nbroken\n", "line 2"),
        ("zzzz T _text\n", "address"),
        ("ffffffff81000000 TT _text\n", "line 1"),
        ("1_0 T _text\n", "address"),
    ):
        path = tmp_path / "kallsyms"
        path.write_text(text)
        rc, err = _run(
            ["symbols", "build", "--kallsyms", str(path), "--release", RELEASE, "--db",
             str(tmp_path / "k.sqlite")],
            capsys,
        )  # fmt: skip
        assert rc == 2 and str(path) in err and why in err and "/proc/kallsyms" not in err
        assert err.count("\n") == 1


def test_nul_in_a_symbol_name_names_the_file(tmp_path, capsys):
    for path, argv in (
        (tmp_path / "kallsyms", ["--kallsyms"]),
        (tmp_path / "Symbols.list", ["--symbols-list"]),
    ):
        if argv == ["--kallsyms"]:
            path.write_bytes(b"ffffffff81000000 T a\0b\n")
        else:
            path.write_bytes(b"klp-convert-symbol-data.0.1\n*vmlinux\na\0b\n")
        rc, err = _run(
            ["symbols", "build", *argv, str(path), "--release", RELEASE, "--db",
             str(tmp_path / "n.sqlite")],
            capsys,
        )  # fmt: skip
        assert rc == 2 and str(path) in err and "NUL" in err and err.count("\n") == 1


def test_too_many_objects_names_the_file(tmp_path, capsys):
    lines = ["ffffffff81000000 T _text"]
    lines += [f"ffffffffc0000000 t f\t[m{i}]" for i in range(0x10000)]
    path = tmp_path / "kallsyms"
    path.write_text("\n".join(lines) + "\n")
    rc, err = _run(
        ["symbols", "build", "--kallsyms", str(path), "--release", RELEASE, "--db",
         str(tmp_path / "m.sqlite")],
        capsys,
    )  # fmt: skip
    assert rc == 2 and str(path) in err and "65536" in err and err.count("\n") == 1


def test_symbols_list_bad_numbers_name_the_line(inputs, tmp_path, capsys):
    with SymbolDB.open(inputs["db"]) as db:
        export_symbols_list(db, tmp_path / "good.list")
    text = (tmp_path / "good.list").read_text()
    for old, new, why in (
        ("\t3\t", "\t٣\t", "symbol count"),
        ("\t9abcdef0", "\t9abcdef0123", "CRC"),
    ):
        bad = tmp_path / "bad.list"
        bad.write_text(text.replace(old, new, 1))
        rc, err = _run(
            ["symbols", "build", "--symbols-list", str(bad), "--db", str(tmp_path / "b.sqlite")],
            capsys,
        )
        assert rc == 2 and why in err and f"{bad}:" in err and err.count("\n") == 1, err


def test_api_errors_are_klpkit_errors(tmp_path):
    with pytest.raises(KlpkitError, match="NUL"):
        build_from_kallsyms("ffffffff81000000 T a\0b\n", release=RELEASE, db=tmp_path / "x")


def test_build_never_replaces_a_device_or_fifo(inputs, tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    kallsyms = str(inputs["dir"] / "kallsyms")
    for target in (fifo, Path("/dev/null")):
        rc, err = _run(
            ["symbols", "build", "--kallsyms", kallsyms, "--release", RELEASE, "--db",
             str(target)],
            capsys,
        )  # fmt: skip
        assert rc == 2 and "not a regular file" in err and err.count("\n") == 1
    assert Path("/dev/null").is_char_device() and fifo.is_fifo()


def test_modules_that_are_not_files_are_no_modules(tmp_path):
    from klpkit.symbols.elf_objects import find_modules

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "real.ko").write_bytes(b"")
    os.mkfifo(tmp_path / "a" / "fifo.ko")
    (tmp_path / "a" / "dir.ko").mkdir()
    assert find_modules(tmp_path) == [str(tmp_path / "a" / "real.ko")]


def test_symbols_room_does_not_print():
    """The symbol database reports progress through the command's callback: no module
    of it imports klpkit.output."""
    import ast

    import klpkit.symbols

    room = Path(klpkit.symbols.__file__).parent
    for path in room.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n.startswith("klpkit.output") for n in names), path

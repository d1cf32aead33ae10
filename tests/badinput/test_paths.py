"""Paths that are not what a command expects: an output that is one of the command's
inputs (by name, through a symlink or a hard link), a FIFO or a device as an input, a
file larger than any input can be.  Each is one line and exit 2; no input changes; no
run hangs or reads without bound."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from klpkit.cli import klp_convert_main, main
from klpkit.errors import InputError
from klpkit.fileio import MAX_INPUT, read_input, read_regular


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_read_input_takes_regular_files_only(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"fifo: not a regular file \(an input must be one\)$"):
        read_input(fifo)  # returns at once: no writer is waited for
    with pytest.raises(InputError, match=r"^/dev/zero: not a regular file"):
        read_input("/dev/zero")
    with pytest.raises(InputError, match=r"is a directory"):
        read_input(tmp_path)
    with pytest.raises(InputError, match=r"no such file"):
        read_input(tmp_path / "none")


def test_sizes_are_bounded(tmp_path):
    sparse = tmp_path / "huge.ko"
    with open(sparse, "wb") as f:
        f.truncate(MAX_INPUT + 1)  # no blocks: refused by its size, never read
    with pytest.raises(InputError, match=r"huge.ko: larger than 1 GiB: not an input$"):
        read_input(sparse)
    small = tmp_path / "m.txt"
    small.write_bytes(b"x" * 101)
    with pytest.raises(InputError, match=r"larger than 0 MiB: not a map file"):
        read_regular(small, 100, "map file")
    assert read_regular(small, 101, "map file") == b"x" * 101
    # /proc files say size 0 and are read as far as the bound
    assert read_regular("/proc/self/status", 1 << 20).startswith(b"Name:")


def _cli(*argv):
    code = "import sys; from klpkit.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, timeout=120
    )


def _klp_convert(*argv):
    code = "import sys; from klpkit.cli import klp_convert_main as m; sys.exit(m())"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_special_files_as_the_module(special, small_db, small_list, tmp_path):
    """Through the real CLI with a timeout: a FIFO used to hang, /dev/zero to grow."""
    if special == "fifo":
        special = tmp_path / "fifo"
        os.mkfifo(special)
    db, out = small_db.path, tmp_path / "o.ko"
    runs = [
        _cli("inspect", special),
        _cli("convert", special, "-o", out, "--symbols", db),
        _cli("check", "--symbols", db, special),
        _cli("deps", "--symbols", db, special),
        _klp_convert(small_list, special, out),
    ]
    for r in runs:
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "not a regular file" in r.stderr, r.stderr
    assert not out.exists()


def test_special_files_as_the_map_file(base_object, small_db, tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for special in (fifo, "/dev/zero"):
        rc = main(
            ["convert", str(base_object), "--dry-run", "--symbols", str(small_db.path)]
            + ["--map-file", str(special)]
        )
        err = capsys.readouterr().err
        assert rc == 2
        assert err == f"klpkit: error: {special}: not a regular file (a map file must be one)\n"


def test_output_over_an_input(base_object, small_db, small_list, tmp_path, capsys, monkeypatch):
    """By identity: the same name, a symlink, a hard link of the module, the database,
    the map file or the symbol list is refused before anything is written."""
    db = tmp_path / "db.sqlite"
    db.write_bytes(small_db.path.read_bytes())
    mod = tmp_path / "lp.o"
    mod.write_bytes(base_object.read_bytes())
    map_file = tmp_path / "map.txt"
    map_file.write_text("# nothing\n")
    (tmp_path / "db-link.sqlite").symlink_to(db)
    os.link(mod, tmp_path / "lp-hardlink.o")
    before = {p: _digest(p) for p in (db, mod, map_file)}
    base = ["convert", str(mod), "--symbols", str(db), "--map-file", str(map_file)]
    cases = [
        (db, "--symbols"),
        (tmp_path / "db-link.sqlite", "--symbols"),
        (mod, "module"),
        (tmp_path / "lp-hardlink.o", "module"),
        (map_file, "--map-file"),
    ]
    for out, what in cases:
        rc = main([*base, "-o", str(out)])
        err = capsys.readouterr().err
        assert (rc, err) == (
            2,
            f"klpkit: error: {out}: output is the same file as the {what} input\n",
        )
    assert {p: _digest(p) for p in (db, mod, map_file)} == before
    listing = tmp_path / "Symbols.list"
    listing.write_bytes(small_list.read_bytes())
    digest = _digest(listing)
    for argv in ([str(listing), str(mod), str(listing)], [str(mod), str(mod)]):
        assert klp_convert_main(argv) == 2
        assert "output is the same file as the" in capsys.readouterr().err
    assert _digest(listing) == digest
    # the default database (no --symbols) is an input too
    monkeypatch.setenv("KLPKIT_SYMBOLS_DB", str(db))
    rc = main(["convert", str(mod), "-o", str(db), "--object", "cdrom"])
    assert rc == 2
    assert capsys.readouterr().err == (
        f"klpkit: error: {db}: output is the same file as the symbol database input\n"
    )
    assert _digest(db) == before[db]

"""Names that are not UTF-8 (bytes kept as lone surrogates by ``surrogateescape``) on a
strict UTF-8 stdout: every table, every JSON document and every other line shows such a
byte as ``\\xNN``; no command raises UnicodeEncodeError."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from klpkit.output import escaping, format_table, print_json, printable, table_width


def test_printable():
    assert printable("plain") == "plain"
    assert printable("caf\u00e9 \u2192") == "caf\u00e9 \u2192"  # valid UTF-8 stays
    assert printable("cdrom_check_event\udcff") == "cdrom_check_event\\xff"
    assert printable("\udcc3\udca9") == "\\xc3\\xa9"  # each byte on its own
    assert printable("\ud800") == "\\ud800"  # a surrogate no file byte makes


def test_json_and_tables_escape_the_same_way():
    buf = io.StringIO()
    print_json({"na\udcffme": ["x\udcff", ("y", 1)], "n": None}, buf)
    text = buf.getvalue()
    text.encode("utf-8")  # strict
    assert json.loads(text) == {"na\\xffme": ["x\\xff", ["y", 1]], "n": None}
    table = format_table(["Na\udcffme"], [("x\udcff",), (None,)], title="t\udcff")
    assert table.splitlines() == ["t\\xff", "Na\\xffme", "--------", "x\\xff"]


def test_escaping_restores_the_stream():
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict")
    with escaping(stream):
        stream.write("a\udcffb \u00e9\n")
        stream.flush()
    assert raw.getvalue() == "a\\xffb \u00e9\n".encode()
    assert stream.errors == "strict"
    with pytest.raises(UnicodeEncodeError):
        stream.write("\udcff")
        stream.flush()


@pytest.mark.parametrize("columns", ["\u00b2", "9" * 5000, "0", "-3", "abc"])
def test_columns_that_are_not_a_width(monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", columns)
    with open(os.devnull, "w") as devnull:
        assert table_width(devnull) is None


def _run(*argv, cwd=None):
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8", "CI": ""}
    env.pop("COLUMNS", None)
    return subprocess.run(
        [sys.executable, "-c", "import sys; from klpkit.cli import main; sys.exit(main())", *argv],
        capture_output=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def _run_klp_convert(*argv):
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}
    code = "import sys; from klpkit.cli import klp_convert_main as m; sys.exit(m())"
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, env=env, timeout=300
    )


def _clean(r, argv, codes=(0, 1, 2)):
    """No traceback; stdout and stderr are strict UTF-8; the exit code is one of ours."""
    err = r.stderr.decode("utf-8")  # strict: raises on a lone surrogate's bytes
    out = r.stdout.decode("utf-8")
    assert "Traceback" not in err, (argv, err)
    assert r.returncode in codes, (argv, r.returncode, err)
    return out, err


def test_every_command_on_a_strict_utf8_stdout(ff_module, small_db, small_list, tmp_path):
    """The module's names hold a 0xff byte; each command's output shows it as ``\\xff``."""
    mod, db = str(ff_module), str(small_db.path)
    runs = {
        ("inspect", mod): (0,),
        ("inspect", "--json", mod): (0,),
        ("convert", "--dry-run", "--symbols", db, "--object", "cdrom", mod): (1,),
        ("convert", "--dry-run", "--json", "--symbols", db, "--object", "cdrom", mod): (1,),
        ("convert", "-o", str(tmp_path / "o.ko"), "--symbols", db, mod): (1,),
        ("check", "--symbols", db, mod): (1,),
        ("check", "--json", "--symbols", db, mod): (1,),
        ("deps", "--symbols", db, mod): (1,),
        ("deps", "--json", "--symbols", db, mod): (1,),
        ("symbols", "lookup", "--db", db, "cdrom_check_event\udcff"): (1, 2),
        ("symbols", "info", "--db", db): (0,),
        ("check", "--help"): (0,),
        ("deps", "--help"): (0,),
        ("build", "--help"): (0,),
        ("vm", "--help"): (0,),
        ("setup", "--help"): (0,),
        ("symbols", "--help"): (0,),
        ("--help",): (0,),
    }
    seen = ""
    for argv, codes in runs.items():
        r = _run(*argv)
        out, err = _clean(r, argv, codes)
        seen += err + (json.dumps(json.loads(out)) if "--json" in argv else out)
    # a table shows the byte as \xff, a JSON string holds the text \xff (JSON: "\\xff")
    assert "cdrom_check_event\\xff" in seen and "lp_fun\\\\xff" in seen
    out, err = _clean(_run_klp_convert(str(small_list), mod, str(tmp_path / "k.ko")), "klp")
    assert "cdrom_check_event\\xff" in err
    _clean(_run_klp_convert(mod, str(tmp_path / "k2.ko")), "klp-minimal")


def test_a_path_that_is_not_utf8(ff_module, small_db, tmp_path):
    """A path from the command line is bytes too: printed back escaped."""
    odd = tmp_path / "lp\udcff.o"
    odd.write_bytes(ff_module.read_bytes())
    out_path = tmp_path / "o\udcff.ko"
    r = _run(
        "convert",
        "--symbols",
        str(small_db.path),
        "-o",
        str(out_path),
        "--map",
        "cdrom_check_event\udcff=cdrom,1",
        str(odd),
    )
    out, err = _clean(r, "convert")
    assert "lp\\xff" in out + err


def test_stdout_closed(ff_module, small_db, tmp_path):
    """Started with stdout closed (``>&-``): what a command prints goes nowhere."""
    code = "import sys; from klpkit.cli import main; sys.exit(main())"
    argv = ["convert", "--symbols", str(small_db.path), "-o", str(tmp_path / "o.ko")]
    for args in (["inspect", str(ff_module)], [*argv, str(ff_module)]):
        r = subprocess.run(
            [sys.executable, "-c", code, *args],
            stdout=None,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: os.close(1),
            timeout=120,
        )
        assert b"Traceback" not in r.stderr and r.returncode in (0, 1), r.stderr

"""Tables fit the terminal: cells wrap within ``$COLUMNS`` (or the terminal's width);
a pipe keeps whole lines; ``--json`` keeps every cell whole."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from klpkit.output import format_table, table_width


def test_cells_wrap_to_the_width():
    rows = [("warning", "klp.rela.reload", "x" * 30, "a long message " * 20)]
    text = format_table(["Severity", "Rule", "Place", "Message"], rows, width=80)
    assert max(map(len, text.splitlines())) <= 80
    assert text.count("message") == 20  # nothing lost
    assert format_table(["A"], [("b" * 200,)]).splitlines()[-1] == "b" * 200


def test_width_from_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert table_width() == 100
    monkeypatch.delenv("COLUMNS")
    with open(os.devnull, "w") as devnull:
        assert table_width(devnull) is None


@pytest.mark.slow
def test_check_at_100_columns(good_cdrom, debian_symdb, tmp_path):
    """The README's `klpkit check lp_cdrom.ko` at 100 columns."""
    shutil.copy(good_cdrom, tmp_path / "lp_cdrom.ko")
    env = {**os.environ, "COLUMNS": "100"}
    cmd = [
        sys.executable,
        "-m",
        "klpkit.cli",
        "check",
        "lp_cdrom.ko",
        "--symbols",
        str(debian_symdb.path),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode in (0, 1), r.stderr
    assert r.stdout and max(map(len, r.stdout.splitlines())) <= 100, r.stdout
    whole = subprocess.run(cmd + ["--json"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert json.loads(whole.stdout)

"""Fast tests of ``klpkit deps``: argument parsing, bad input (exit 2), cycle finding and
the DOT writer, without kernel data."""

from __future__ import annotations

import pytest

from klpkit.cli import main
from klpkit.deps import Edge, Report, _cycles, parse_object_map, to_dot, write_graph
from klpkit.errors import InputError


def test_parse_object_map():
    assert parse_object_map(["lp-sr.ko=sr_mod", "lp_vm=vmlinux,cdrom", "lp_vm=cdrom"]) == {
        "lp_sr": ["sr_mod"], "lp_vm": ["vmlinux", "cdrom"]}
    for bad in ("lp_sr", "=sr_mod", "lp_sr=", "lp_sr=,"):
        with pytest.raises(InputError):
            parse_object_map([bad])


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["deps", str(tmp_path / "none.ko"), "--symbols", str(tmp_path / "none.db")]) == 2
    assert main(["deps", str(tmp_path / "none.ko"), "--symbols", "x", "--object", "oops"]) == 2
    err = capsys.readouterr().err
    assert "--object 'oops'" in err


def test_cycles_start_at_the_livepatch():
    edges = [Edge("lp_x", "x", "needs", "B"), Edge("x", "lp_x", "triggers"),
             Edge("lp_x", "vmlinux", "needs", "A"), Edge("lp_y", "lp_x", "needs", "D")]
    cycles = _cycles(edges)
    assert [c["path"] for c in cycles] == [["lp_x", "x", "lp_x"]]
    assert "recursion" in cycles[0]["reason"]
    # a plain dependency cycle between livepatch modules
    cycles = _cycles([Edge("a", "b", "needs", "D"), Edge("b", "a", "needs", "D")])
    assert [c["path"] for c in cycles] == [["a", "b", "a"]]
    assert "dependency cycle" in cycles[0]["reason"]


def _report():
    return Report([], {"lp": "livepatch", "m": "patched", "vmlinux": "vmlinux"},
                  [Edge("lp", "m", "needs", "B", "error", ["f"]),
                   Edge("lp", "vmlinux", "needs", "A", "ok", ["printk"])], [], [])


def test_dot_colours():
    dot = to_dot(_report())
    assert '"lp" -> "m" [kind="needs", category="B", label="B: f"' in dot
    assert 'color="red"' in dot.splitlines()[-3]
    assert '"m" [kind="patched"' in dot


def test_write_graph_extensions(tmp_path):
    dot, pic, warn = write_graph(_report(), tmp_path / "g.gv")
    assert dot.read_text().startswith("digraph") and pic is None and warn is None
    with pytest.raises(InputError):
        write_graph(_report(), tmp_path / "g.jpeg2")

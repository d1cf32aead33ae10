"""Fast tests of ``klpkit deps``: argument parsing, bad input (exit 2), cycle finding and
the DOT writer, without kernel data."""

from __future__ import annotations

import pytest

from klpkit.cli import main
from klpkit.commands.deps import parse_object_map
from klpkit.deps import (
    Edge,
    ModuleInfo,
    Report,
    decide_per_object,
    find_cycles,
    to_dot,
    write_graph,
)
from klpkit.errors import InputError


def test_parse_object_map():
    assert parse_object_map(["lp-sr.ko=sr_mod", "lp_vm=vmlinux,cdrom", "lp_vm=cdrom"]) == {
        "lp_sr": ["sr_mod"],
        "lp_vm": ["vmlinux", "cdrom"],
    }
    for bad in ("lp_sr", "=sr_mod", "lp_sr=", "lp_sr=,"):
        with pytest.raises(InputError):
            parse_object_map([bad])


def test_per_object_flags_parse():
    from klpkit.cli import build_parser

    parser = build_parser()
    base = ["deps", "x.ko", "--symbols", "db"]
    assert parser.parse_args(base).per_object is None
    assert parser.parse_args([*base, "--per-object"]).per_object is True
    assert parser.parse_args([*base, "--no-per-object"]).per_object is False


def _per_object(specs, flag=None):
    """{name: per_object} for modules given as (name, livepatch, objects)."""
    modules = [
        ModuleInfo(n, f"{n}.ko", lp, objs, "klp_object", False, [], []) for n, lp, objs in specs
    ]
    decided = decide_per_object(modules, flag)
    assert all(reason for _flag, reason in decided)
    return {m.name: po for m, (po, _reason) in zip(modules, decided, strict=True)}


def test_per_object_decision():
    lone = [("lp_cdrom", True, ["cdrom"])]
    assert _per_object(lone) == {"lp_cdrom": False}
    assert _per_object(lone, True) == {"lp_cdrom": True}
    # a split livepatch: the main module for vmlinux plus one per patched module
    split = [("lp_vm", True, ["vmlinux"]), ("lp_cd", True, ["cdrom"]), ("lp_sr", True, ["sr_mod"])]
    assert _per_object(split) == {"lp_vm": False, "lp_cd": True, "lp_sr": True}
    assert _per_object(split, False) == {"lp_vm": False, "lp_cd": False, "lp_sr": False}
    # never for vmlinux, several objects, or a plain module, whatever the flag says
    odd = [("lp_multi", True, ["cdrom", "sr_mod"]), ("cdrom", False, [])]
    assert _per_object(odd, True) == {"lp_multi": False, "cdrom": False}
    assert _per_object([("lp_x", True, ["cdrom"]), ("cdrom", False, [])]) == {
        "lp_x": False,
        "cdrom": False,
    }


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["deps", str(tmp_path / "none.ko"), "--symbols", str(tmp_path / "none.db")]) == 2
    assert main(["deps", str(tmp_path / "none.ko"), "--symbols", "x", "--object", "oops"]) == 2
    err = capsys.readouterr().err
    assert "--object 'oops'" in err


def test_cycles_start_at_the_livepatch():
    edges = [
        Edge("lp_x", "x", "needs", "B"),
        Edge("x", "lp_x", "triggers"),
        Edge("lp_x", "vmlinux", "needs", "A"),
        Edge("lp_y", "lp_x", "needs", "D"),
    ]
    cycles = find_cycles(edges)
    assert [c["path"] for c in cycles] == [["lp_x", "x", "lp_x"]]
    assert "recursion" in cycles[0]["reason"]
    # a plain dependency cycle between livepatch modules
    cycles = find_cycles([Edge("a", "b", "needs", "D"), Edge("b", "a", "needs", "D")])
    assert [c["path"] for c in cycles] == [["a", "b", "a"]]
    assert "dependency cycle" in cycles[0]["reason"]


def _report():
    return Report(
        [],
        {"lp": "livepatch", "m": "patched", "vmlinux": "vmlinux"},
        [
            Edge("lp", "m", "needs", "B", "error", ["f"]),
            Edge("lp", "vmlinux", "needs", "A", "ok", ["printk"]),
        ],
        [],
        [],
    )


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


def test_stacked_livepatches_are_no_split_set():
    """Issue 12: two livepatches of one module (a fix and a fix on top) are stacked,
    each its own klp_patch: neither is loaded by the module's load."""
    stacked = [("lp_fix1", True, ["cdrom"]), ("lp_fix2", True, ["cdrom"])]
    assert _per_object(stacked) == {"lp_fix1": False, "lp_fix2": False}
    assert _per_object(stacked, True) == {"lp_fix1": True, "lp_fix2": True}
    # a split set with a stacked fix on top of one of its parts is no split set either
    mixed = [
        ("lp_vm", True, ["vmlinux"]),
        ("lp_cd", True, ["cdrom"]),
        ("lp_sr", True, ["sr_mod"]),
        ("lp_cd_fix", True, ["cdrom"]),
    ]
    assert not any(_per_object(mixed).values())

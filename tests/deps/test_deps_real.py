"""``klpkit deps`` on real modules built against the Debian 6.1.0-47 headers and the
real symbol database: one test per category, the B recursion of a per-object set (a
split set, or --per-object), the pin without recursion of a lone livepatch, and the
picture of the cdrom example."""

from __future__ import annotations

import json
import re

import pytest

from klpkit.cli import main
from klpkit.deps import analyze, to_dot
from tests.conftest import require_tools

pytestmark = pytest.mark.slow


def refs(report, module, category=None):
    m = next(m for m in report.modules if m.name == module)
    return [r for r in m.references if category is None or r.category == category]


def one(report, module, category, symbol):
    found = [r for r in refs(report, module, category) if r.symbol == symbol]
    assert len(found) == 1, (category, symbol, [r.as_dict() for r in refs(report, module)])
    return found[0]


def dot_edges(dot: str) -> dict[tuple[str, str, str], dict[str, str]]:
    """(from, to, kind) -> attributes, parsed from our DOT text."""
    out = {}
    for line in dot.splitlines():
        m = re.match(r'\s*"([^"]+)" -> "([^"]+)" \[(.*)\];$', line)
        if m:
            attrs = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3)))
            out[(m.group(1), m.group(2), attrs["kind"])] = attrs
    return out


def dot_nodes(dot: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r'^\s*"([^"]+)" \[kind="(\w+)"', dot, re.M)}


@pytest.fixture(scope="module")
def the_set(deps_modules, debian_symdb):
    """The per-object set lp_vm + lp_cd + lp_sr, analysed together."""
    return analyze([deps_modules[n] for n in ("lp_vm", "lp_cd", "lp_sr")], debian_symdb)


# --------------------------------------------------------------------------------- A
def test_category_a(deps_modules, debian_symdb):
    report = analyze([deps_modules["lp_vm"]], debian_symdb)
    m = report.modules[0]
    assert m.livepatch and m.objects == ["vmlinux"] and not m.per_object
    assert m.exports == ["lp_vm_helper"]
    r = one(report, "lp_vm", "A", "seq_printf")
    assert r.object == "vmlinux" and r.verdict == "ok" and r.sites
    assert {r.category for r in m.references} == {"A"}
    assert report.verdict == "ok" and not report.cycles and not report.pins
    e = report.edge("lp_vm", "vmlinux")
    assert e.category == "A" and e.verdict == "ok" and "seq_printf" in e.symbols
    assert [x for x in report.edges if x.kind == "needs"] == [e]
    edges = dot_edges(to_dot(report))
    assert edges[("lp_vm", "vmlinux", "needs")]["category"] == "A"
    assert edges[("lp_vm", "vmlinux", "needs")]["color"] != "red"
    assert dot_nodes(to_dot(report)) == {"lp_vm": "livepatch", "vmlinux": "vmlinux"}


# ---------------------------------------------------------------------- B, before/after
def test_category_b_before_conversion(deps_modules, debian_symdb):
    report = analyze([deps_modules["lp_cdrom"]], debian_symdb)
    m = report.modules[0]
    assert m.objects == ["cdrom"] and not m.per_object and "cdrom" in m.depends
    r = one(report, "lp_cdrom", "B", "cdrom_check_events")
    assert r.object == "cdrom" and r.verdict == "error" and r.sites
    assert "pinned" in r.reason and "klpkit convert" in r.fix
    # the statics of cdrom are still plain undefined symbols: the module would not load
    for name in ("debug", "cdrom_read_mech_status"):
        x = one(report, "lp_cdrom", "non-exported-unconverted", name)
        assert x.object == "cdrom" and x.verdict == "error"
    e = report.edge("lp_cdrom", "cdrom")
    assert e.category == "B" and e.verdict == "error"
    assert e.symbols == ["cdrom_check_events"] and set(e.via) == {"symbols", "depends="}
    assert report.pins == [
        {
            "livepatch": "lp_cdrom",
            "module": "cdrom",
            "symbols": ["cdrom_check_events"],
            "via": ["symbols", "depends="],
        }
    ]
    assert report.verdict == "error"
    edges = dot_edges(to_dot(report))
    assert edges[("lp_cdrom", "cdrom", "needs")]["category"] == "B"
    assert edges[("lp_cdrom", "cdrom", "needs")]["color"] == "red"


def test_category_b_after_conversion(deps_modules, debian_symdb, tmp_path):
    from klpkit.convert import convert_file

    out = tmp_path / "lp_cdrom.ko"
    plan, result, _elf = convert_file(deps_modules["lp_cdrom"], out, debian_symdb)
    assert plan.ok and result is not None, plan.errors
    report = analyze([out], debian_symdb)
    m = report.modules[0]
    assert "cdrom" not in m.depends
    assert not refs(report, "lp_cdrom", "B")
    assert not refs(report, "lp_cdrom", "non-exported-unconverted")
    r = one(report, "lp_cdrom", "klp-ok", ".klp.sym.cdrom.cdrom_check_events,0")
    assert r.verdict == "ok" and r.gate == "cdrom" and r.object == "cdrom" and r.policy == "B"
    assert one(report, "lp_cdrom", "klp-ok", ".klp.sym.cdrom.debug,0").policy == "local"
    assert report.edge("lp_cdrom", "cdrom") is None  # no load dependency: no pin
    assert report.edge("lp_cdrom", "cdrom", "klp").verdict == "ok"
    assert report.pins == [] and report.cycles == [] and report.verdict == "ok"
    edges = dot_edges(to_dot(report))
    assert ("lp_cdrom", "cdrom", "needs") not in edges
    assert edges[("lp_cdrom", "cdrom", "klp")]["category"] == "klp-ok"
    # the CLI agrees: exit 0 after, 1 before
    db = str(debian_symdb.path)
    assert main(["deps", str(out), "--symbols", db]) == 0
    assert main(["deps", str(deps_modules["lp_cdrom"]), "--symbols", db]) == 1


# ------------------------------------------------------------------------- B recursion
def test_b_recursion_on_per_object_set(deps_modules, debian_symdb, capsys):
    """A split set (several livepatch modules each patching a different object):
    lp_cdrom is per-object without being told, so cdrom's load loads it: the recursion.
    (Issue 12: the set is lp_vm + lp_sr + lp_cdrom; with lp_cd too, lp_cd and lp_cdrom
    both patch cdrom: stacked livepatches, not a split set -- see test_stacked_*.)"""
    paths = [deps_modules[n] for n in ("lp_vm", "lp_sr", "lp_cdrom")]
    report = analyze(paths, debian_symdb)
    lp_cdrom = next(m for m in report.modules if m.name == "lp_cdrom")
    assert lp_cdrom.per_object and "split livepatch" in lp_cdrom.per_object_reason
    assert not next(m for m in report.modules if m.name == "lp_vm").per_object
    assert "a recursion" in one(report, "lp_cdrom", "B", "cdrom_check_events").reason
    cyc = [c for c in report.cycles if "lp_cdrom" in c["path"]]
    assert len(cyc) == 1, report.cycles
    assert cyc[0]["path"] == ["lp_cdrom", "cdrom", "lp_cdrom"]
    assert cyc[0]["steps"] == ["lp_cdrom -needs-> cdrom", "cdrom -triggers-> lp_cdrom"]
    assert "recursion" in cyc[0]["reason"]
    assert report.edge("cdrom", "lp_cdrom", "triggers").verdict == "error"
    assert report.edge("sr_mod", "lp_sr", "triggers").verdict == "ok"
    assert report.verdict == "error"
    # the same through the CLI, --json
    rc = main(["deps", *map(str, paths), "--symbols", str(debian_symdb.path), "--json"])
    assert rc == 1
    data = json.loads(capsys.readouterr().out)
    assert [c["path"] for c in data["cycles"]] == [["lp_cdrom", "cdrom", "lp_cdrom"]]
    assert {
        "livepatch": "lp_cdrom",
        "module": "cdrom",
        "symbols": ["cdrom_check_events"],
        "via": ["symbols", "depends="],
    } in data["pins"]
    mod = next(m for m in data["modules"] if m["name"] == "lp_cdrom")
    assert mod["per_object"] is True and "split livepatch" in mod["per_object_reason"]


def test_b_recursion_with_per_object_flag(deps_modules, debian_symdb, capsys):
    """--per-object on a lone module: the user says it is one part of a split
    livepatch, so cdrom's load loads it: the recursion."""
    path = str(deps_modules["lp_cdrom"])
    report = analyze([path], debian_symdb, per_object=True)
    assert report.modules[0].per_object
    assert [c["path"] for c in report.cycles] == [["lp_cdrom", "cdrom", "lp_cdrom"]]
    rc = main(["deps", path, "--symbols", str(debian_symdb.path), "--per-object", "--json"])
    assert rc == 1
    data = json.loads(capsys.readouterr().out)
    assert [c["path"] for c in data["cycles"]] == [["lp_cdrom", "cdrom", "lp_cdrom"]]
    assert data["modules"][0]["per_object"] is True
    assert data["modules"][0]["per_object_reason"].startswith("--per-object")


def test_no_per_object_flag_on_split_set(deps_modules, debian_symdb):
    """--no-per-object overrides the split-set detection: pins stay, no recursion."""
    paths = [deps_modules[n] for n in ("lp_vm", "lp_cd", "lp_sr", "lp_cdrom")]
    report = analyze(paths, debian_symdb, per_object=False)
    assert not any(m.per_object for m in report.modules)
    assert not [e for e in report.edges if e.kind == "triggers"]
    assert report.cycles == []
    assert [p["module"] for p in report.pins] == ["cdrom"]
    assert report.verdict == "error"


def test_lone_livepatch_pins_without_recursion(deps_modules, debian_symdb, capsys):
    """A normal (non-split) livepatch for cdrom is not loaded by cdrom's load: its
    unconverted B reference pins cdrom (an error) but makes no load cycle."""
    report = analyze([deps_modules["lp_cdrom"]], debian_symdb)
    m = report.modules[0]
    assert m.livepatch and m.objects == ["cdrom"] and not m.per_object
    assert "normal livepatch" in m.per_object_reason
    r = one(report, "lp_cdrom", "B", "cdrom_check_events")
    assert r.verdict == "error" and "pinned" in r.reason and "recursion" not in r.reason
    assert report.pins == [
        {
            "livepatch": "lp_cdrom",
            "module": "cdrom",
            "symbols": ["cdrom_check_events"],
            "via": ["symbols", "depends="],
        }
    ]
    assert report.cycles == []
    assert report.edge("cdrom", "lp_cdrom", "triggers") is None
    assert report.edge("lp_cdrom", "cdrom").verdict == "error"
    assert report.verdict == "error"
    assert ("cdrom", "lp_cdrom", "triggers") not in dot_edges(to_dot(report))
    rc = main(["deps", str(deps_modules["lp_cdrom"]), "--symbols", str(debian_symdb.path)])
    assert rc == 1
    out = capsys.readouterr().out
    assert "pin: lp_cdrom pins cdrom (cdrom_check_events)" in out
    assert "per-object: no" in out and "cycle:" not in out


# --------------------------------------------------------------------------------- C
def test_category_c(the_set):
    r = one(the_set, "lp_sr", "C", "lp_vm_helper")
    assert r.object == "lp_vm" and r.verdict == "warn" and r.sites
    assert "klp_shadow" in r.fix
    e = the_set.edge("lp_sr", "lp_vm")
    assert e.category == "C" and e.verdict == "warn" and e.symbols == ["lp_vm_helper"]
    assert "depends=" in e.via  # modpost recorded it too
    assert the_set.nodes["lp_vm"] == "livepatch"
    edges = dot_edges(to_dot(the_set))
    assert edges[("lp_sr", "lp_vm", "needs")]["category"] == "C"
    assert edges[("lp_sr", "lp_vm", "needs")]["verdict"] == "warn"


# --------------------------------------------------------------------------------- D
def test_category_d_mirrored(the_set, debian_symdb):
    assert "cdrom" in debian_symdb.module_depends("sr_mod")
    r = one(the_set, "lp_sr", "D", "lp_cd_helper")
    assert r.object == "lp_cd" and r.verdict == "ok" and "sr_mod depends on cdrom" in r.reason
    e = the_set.edge("lp_sr", "lp_cd")
    assert e.category == "D" and e.verdict == "ok"
    assert the_set.edge("sr_mod", "cdrom", "object-dep") is not None  # what it mirrors
    assert the_set.cycles == [] and the_set.verdict == "warn"  # C warns, no error
    edges = dot_edges(to_dot(the_set))
    assert edges[("lp_sr", "lp_cd", "needs")]["category"] == "D"
    assert edges[("lp_sr", "lp_cd", "needs")]["color"] not in ("red", "orange")
    assert dot_nodes(to_dot(the_set)) == {
        "lp_vm": "livepatch",
        "lp_cd": "livepatch",
        "lp_sr": "livepatch",
        "vmlinux": "vmlinux",
        "cdrom": "patched",
        "sr_mod": "patched",
    }


def test_category_d_not_mirrored(deps_modules, debian_symdb):
    assert "sr_mod" not in debian_symdb.module_depends("cdrom")
    paths = [deps_modules[n] for n in ("lp_vm", "lp_cd", "lp_sr", "lp_cd_bad")]
    report = analyze(paths, debian_symdb)
    r = one(report, "lp_cd_bad", "D", "lp_sr_helper")
    assert r.object == "lp_sr" and r.verdict == "warn" and "not mirrored" in r.reason
    assert r.fix
    e = report.edge("lp_cd_bad", "lp_sr")
    assert e.category == "D" and e.verdict == "warn"
    assert one(report, "lp_sr", "D", "lp_cd_helper").verdict == "ok"  # still mirrored
    edges = dot_edges(to_dot(report))
    assert edges[("lp_cd_bad", "lp_sr", "needs")]["verdict"] == "warn"
    assert report.verdict == "warn"


# ------------------------------------------------------------------------------ picture
def test_cdrom_example_png(deps_modules, debian_symdb, tmp_path, capsys):
    """The cdrom example drawn as the per-object part of a split livepatch: the pin and
    the recursion."""
    require_tools("dot")
    png = tmp_path / "cdrom-deps.png"
    rc = main(
        [
            "deps",
            str(deps_modules["lp_cdrom"]),
            "--symbols",
            str(debian_symdb.path),
            "--per-object",
            "--graph",
            str(png),
        ]
    )
    assert rc == 1
    out = capsys.readouterr().out
    assert "cycle: lp_cdrom -> cdrom -> lp_cdrom" in out
    dot = (tmp_path / "cdrom-deps.dot").read_text()
    assert dot_nodes(dot) == {"lp_cdrom": "livepatch", "cdrom": "patched", "vmlinux": "vmlinux"}
    edges = dot_edges(dot)
    assert edges[("lp_cdrom", "cdrom", "needs")]["category"] == "B"
    assert edges[("lp_cdrom", "cdrom", "needs")]["color"] == "red"
    assert edges[("cdrom", "lp_cdrom", "triggers")]["color"] == "red"
    assert edges[("lp_cdrom", "vmlinux", "needs")]["category"] == "A"
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


# ------------------------------------------------------------------- klp-wrong-object
def test_klp_wrong_object_with_object_map(deps_modules, debian_symdb, tmp_path, capsys):
    """--object overrides the klp_object names: relocations gated on cdrom in a module
    said to patch only sr_mod would never be applied."""
    from klpkit.convert import convert_file

    out = tmp_path / "lp_cdrom.ko"
    plan, _result, _elf = convert_file(deps_modules["lp_cdrom"], out, debian_symdb)
    assert plan.ok, plan.errors
    rc = main(
        [
            "deps",
            str(out),
            "--symbols",
            str(debian_symdb.path),
            "--object",
            "lp_cdrom=sr_mod",
            "--json",
        ]
    )
    assert rc == 1
    data = json.loads(capsys.readouterr().out)
    mod = data["modules"][0]
    assert mod["objects"] == ["sr_mod"] and mod["objects_source"] == "--object"
    wrong = [r for r in mod["references"] if r["category"] == "klp-wrong-object"]
    assert {r["symbol"] for r in wrong} == {
        ".klp.sym.cdrom.cdrom_check_events,0",
        ".klp.sym.cdrom.debug,0",
        ".klp.sym.cdrom.cdrom_read_mech_status,0",
    }
    assert all(r["verdict"] == "error" and r["gate"] == "cdrom" and r["sites"] for r in wrong)
    klp = [e for e in data["graph"]["edges"] if e["kind"] == "klp"]
    assert klp == [
        dict(
            klp[0],
            **{
                "from": "lp_cdrom",
                "to": "cdrom",
                "verdict": "error",
                "category": "klp-wrong-object",
            },
        )
    ]

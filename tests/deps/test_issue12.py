"""deps on issue 12's cases: stacked livepatches are not a split set, a contradicting
--object is an error unless --force, the livepatch relocations of module-only and
empty-funcs livepatches are klp-ok (check's verdicts)."""

from __future__ import annotations

import json

import pytest

from klpkit.cli import main
from klpkit.deps import analyze

pytestmark = pytest.mark.slow


def test_stacked_fixes_of_one_module(deps_modules, issue12_converted, debian_symdb, capsys):
    """lp_cdrom and lp_datarel both replace cdrom_ioctl_media_changed: a fix and a fix on
    top, not one split livepatch; no triggers edge, no recursion."""
    from klpkit.convert import convert_file

    lp_cdrom = issue12_converted["lp_datarel"].parent / "lp_cdrom.stacked.ko"
    plan, _r, _e = convert_file(deps_modules["lp_cdrom"], lp_cdrom, debian_symdb)
    assert plan.ok
    paths = [lp_cdrom, issue12_converted["lp_datarel"]]
    report = analyze(paths, debian_symdb)
    for m in report.modules:
        assert not m.per_object and "stacked livepatches" in m.per_object_reason, m.name
    assert not [e for e in report.edges if e.kind == "triggers"] and report.cycles == []
    assert report.verdict == "ok"
    assert main(["deps", *map(str, paths), "--symbols", str(debian_symdb.path)]) == 0
    assert "per-object: no (stacked livepatches, not a split set" in capsys.readouterr().out
    # the deps set with lp_cd and lp_cdrom, both for cdrom: stacked too
    raw = [deps_modules[n] for n in ("lp_vm", "lp_cd", "lp_sr", "lp_cdrom")]
    report = analyze(raw, debian_symdb)
    assert not any(m.per_object for m in report.modules) and report.cycles == []


def test_contradicting_object(issue12_converted, debian_symdb, capsys):
    path = str(issue12_converted["lp_vmkey"])
    db = str(debian_symdb.path)
    assert main(["deps", path, "--symbols", db, "--object", "lp_vmkey=sr_mod", "--json"]) == 1
    mod = json.loads(capsys.readouterr().out)["modules"][0]
    [ref] = [r for r in mod["references"] if r["category"] == "objects-contradicted"]
    assert (
        ref["verdict"] == "error" and "contradicts lp_vmkey, which patches cdrom" in ref["reason"]
    )
    # its vmlinux-gated relocations are applied whatever the objects: still klp-ok
    klp = [r for r in mod["references"] if r["kind"] == "klp"]
    assert klp and all(r["category"] == "klp-ok" for r in klp)
    assert (
        main(["deps", path, "--symbols", db, "--object", "lp_vmkey=sr_mod", "--force", "--json"])
        == 0
    )
    mod = json.loads(capsys.readouterr().out)["modules"][0]
    assert [r["verdict"] for r in mod["references"] if r["category"] == "objects-contradicted"] == [
        "warn"
    ]
    # naming what it patches is no contradiction
    assert main(["deps", path, "--symbols", db, "--object", "lp_vmkey=cdrom"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("name", ["lp_vmkey", "lp_empty", "lp_datarel", "lp_annotonly"])
def test_livepatch_relocations_are_klp_ok(name, issue12_converted, debian_symdb):
    report = analyze([issue12_converted[name]], debian_symdb)
    klp = [r for r in report.references if r.kind == "klp"]
    assert klp and all((r.category, r.verdict) == ("klp-ok", "ok") for r in klp), [
        r.as_dict() for r in klp
    ]
    m = report.modules[0]
    want = {
        "lp_vmkey": ["cdrom"],
        "lp_datarel": ["cdrom"],
        "lp_annotonly": [],
        "lp_empty": ["vmlinux", "cdrom", "sr_mod"],
    }[name]
    assert m.objects == want and m.livepatch

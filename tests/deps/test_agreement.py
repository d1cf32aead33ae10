"""deps and check agree on every module of the test corpus (issue 12): the shared test
livepatches, the deps set, issue 12's modules, each raw and converted, and every
single-rule breakage of the check mutation tests.

Agreement, per module, computed from each command's own output:

* every livepatch relocation reference (gate, symbol) deps reports has the verdict of
  the worst finding ``check_module`` makes on that symbol (for that gate) or on a
  section gated there that holds it -- what happens later (a target's reload) aside;
* the undefined symbols deps says the loader cannot resolve are those check refuses
  with 'Unknown symbol';
* check's pins and dependency cycles (``deps.pin``, ``deps.recursion``, computed in
  check for the lone module) are deps' pins and cycles, in the same order.
"""

from __future__ import annotations

import pytest

from klpkit.check import Severity, Stage, check_bytes, check_module
from klpkit.convert import convert_file
from klpkit.deps import CAT_LOCAL, CAT_UNRESOLVED, analyze
from klpkit.elf import ElfFile
from klpkit.kernel.livepatch import meant_as_klp_rela, parse_klp_rela_object
from tests.check.test_mutations import MUTATIONS
from tests.convert.lp_issue12 import LIVEPATCHES

pytestmark = pytest.mark.slow

VERDICT = {Severity.ERROR: "error", Severity.WARNING: "warn", Severity.NOTE: "ok"}
RANK = {"ok": 0, "warn": 1, "error": 2}
UNKNOWN_SYMBOL = ("undef.missing", "undef.unexported", "klp.sym.shndx")


def _holding(elf) -> dict[tuple[str, str], set[str]]:
    """(gate, symbol) -> the livepatch relocation sections holding it."""
    out: dict[tuple[str, str], set[str]] = {}
    for rs in elf.relocation_sections():
        if meant_as_klp_rela(rs):
            gate = parse_klp_rela_object(rs.name) or ""
            for r in rs.relocations:
                name = r.symbol.name if r.symbol is not None else ""
                out.setdefault((gate, name), set()).add(rs.name)
    return out


def _check_verdict(findings, gate: str, symbol: str, sections: set[str]) -> str:
    worst = "ok"
    for f in findings:
        if f.stage is Stage.LATER or not f.rule.startswith("klp."):
            continue
        mine = (f.place.symbol == symbol and f.details.get("gate", gate) == gate) or (
            f.place.section in sections and not f.place.symbol
        )
        if mine and RANK[VERDICT[f.severity]] > RANK[worst]:
            worst = VERDICT[f.severity]
    return worst


def assert_agree(label: str, path, db, findings=None) -> None:
    findings = check_module(path, db, "6.1") if findings is None else findings
    report = analyze([path], db)
    holding = _holding(ElfFile.read(path))
    for r in report.references:
        if r.kind != "klp":
            continue
        want = _check_verdict(
            findings, r.gate or "", r.symbol, holding.get((r.gate or "", r.symbol), set())
        )
        assert r.verdict == want, (
            label,
            r.as_dict(),
            [f.as_dict() for f in findings if f.rule.startswith("klp.")],
        )
    deps_unknown = {
        r.symbol
        for r in report.references
        if r.kind == "undefined" and r.category in (CAT_LOCAL, CAT_UNRESOLVED)
    }
    check_unknown = {
        f.place.symbol
        for f in findings
        if f.rule in UNKNOWN_SYMBOL and f.severity is Severity.ERROR
    }
    assert deps_unknown == check_unknown, label
    assert_same_pins(label, report, findings)


def assert_same_pins(label: str, report, findings) -> None:
    pins = [f for f in findings if f.rule == "deps.pin"]
    assert len(pins) == len(report.pins), (label, report.pins, [f.message for f in pins])
    for pin, f in zip(report.pins, pins, strict=True):
        assert f"{pin['livepatch']} pins {pin['module']} (via {', '.join(pin['via'])})" in (
            f.message
        ), (label, pin, f.message)
        assert (f.place.symbol or "") == ", ".join(pin["symbols"]), (label, pin, f.place)
    cycles = [f.message for f in findings if f.rule == "deps.recursion"]
    assert cycles == [f"{c['reason']}: " + "; ".join(c["steps"]) for c in report.cycles], label


@pytest.fixture(scope="module")
def corpus(lp_modules, deps_modules, issue12_modules, debian_symdb, tmp_path_factory):
    """(label, path) of every module: as built, and converted where it converts."""
    out = tmp_path_factory.mktemp("agreement")
    mods = {
        **{f"lp/{k}": v for k, v in lp_modules.items()},
        **{f"deps/{k}": v for k, v in deps_modules.items()},
        **{f"issue12/{k}": v for k, v in issue12_modules.items()},
    }
    items = list(mods.items())
    for label, path in mods.items():
        dst = out / (label.replace("/", "_") + ".klp.ko")
        plan, result, _elf = convert_file(path, dst, debian_symdb)
        if plan.ok and result is not None:
            items.append((label + " (converted)", dst))
    return items


def test_deps_and_check_agree_on_the_corpus(corpus, debian_symdb):
    labels = {label for label, _p in corpus}
    assert {f"issue12/{n} (converted)" for n in LIVEPATCHES} <= labels
    assert {"lp/lp_cdrom (converted)", "lp/lp_policy (converted)"} <= labels
    for label, path in corpus:
        assert_agree(label, path, debian_symdb)


@pytest.mark.parametrize("name, mutate, rule, _kernel", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_deps_and_check_agree_on_each_breakage(
    name, mutate, rule, _kernel, lp_modules, debian_symdb, tmp_path
):
    """Every single-rule breakage of the check mutation tests, applied to the converted
    cdrom example: deps sees each livepatch relocation as check does."""
    good = tmp_path / "good.ko"
    plan, _result, _elf = convert_file(lp_modules["lp_cdrom"], good, debian_symdb)
    assert plan.ok
    elf = ElfFile.read(good)
    mutate(elf)
    path = tmp_path / f"{name}.ko"
    elf.write(path)
    assert_agree(
        name,
        path,
        debian_symdb,
        check_bytes(path.read_bytes(), debian_symdb, "6.1", path=str(path)),
    )


def test_a_module_needing_itself_is_a_cycle_for_both(deps_modules, debian_symdb, tmp_path):
    """A depends= naming the module itself: the loader can load it only after itself."""
    from klpkit.kernel.modinfo import Modinfo

    elf = ElfFile.read(deps_modules["lp_cdrom"])
    sec = elf.section(".modinfo")
    modinfo = Modinfo.parse(sec.data)
    modinfo.depends = [*modinfo.depends, "lp_cdrom"]
    sec.data = modinfo.to_bytes()
    path = tmp_path / "lp_cdrom.ko"
    elf.write(path)
    findings = check_module(path, debian_symdb, "6.1")
    report = analyze([path], debian_symdb)
    assert [c["path"] for c in report.cycles] == [["lp_cdrom", "lp_cdrom"]]
    assert [p["module"] for p in report.pins] == ["cdrom"]
    assert_same_pins("lp_cdrom depending on itself", report, findings)

"""The bad-input fuzz harness with a fixed seed and budget: for each class (plain ELF
mutants, numbers in names, non-UTF-8 names, odd sections, damaged databases, damaged
text inputs, paths, messages), a fixed set of mutants of the real inputs (the test
livepatches, Debian's cdrom.ko, a cut of the Debian symbol database) through every
command that reads them, in-process with a strict UTF-8 stdout and a sample through the
real console script.  Any traceback, hang, memory blow-up, corrupt or partial output,
modified input or error line that names no file fails the test, with the list.

The long campaign is ``bench/fuzz_campaign.py`` (same generators, more seeds).
"""

from __future__ import annotations

import random

import pytest

from tests.fuzz import campaign
from tests.fuzz.cases import CLASSES, make_group
from tests.fuzz.runner import Options, Runner

pytestmark = pytest.mark.slow

SEED = 14
#: groups per class: ~3-7 runs each; ~40 s for all classes on one core
BUDGET = {
    "elf": 40,
    "numbers": 30,
    "utf8": 30,
    "sections": 30,
    "database": 16,
    "text": 10,
    "paths": 30,
    "messages": 4,
}


@pytest.mark.parametrize("klass", CLASSES)
def test_fuzz_class(klass, fuzz_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("KLPKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KLPKIT_SYMBOLS_DB", raising=False)
    options = Options(cli_rate=0.02, elf_rate=1.0, timeout=60.0)
    tally = campaign.run_share(
        fuzz_corpus,
        SEED,
        range(BUDGET[klass]),
        10**9,
        tmp_path,
        options,
        only=klass,
        findings=tmp_path / "findings",
    )
    assert tally.groups == BUDGET[klass], tally.harness_errors
    assert tally.runs >= BUDGET[klass]
    failures = campaign.findings_markdown(tally)
    assert not tally.failures, f"{tally.failures} failed runs:\n" + "\n".join(failures)


#: (seed, index, class) of the first example of each failure the campaign found: each
#: group is re-made byte for byte and must stay clean
CAMPAIGN_FINDINGS = [
    (101, 24, "numbers"),  # .klp.sym position of 4,401 digits, leading zeros
    (202, 270, "numbers"),  # the same in --map
    (202, 758, "numbers"),  # the same in a .klp.sym.rela. intermediate name
    (202, 481, "sections"),  # .gnu.linkonce.this_module retyped SHT_RELA: check said 0
    (404, 196, "sections"),  # .exit.data retyped SHT_RELA: check said 0
    (404, 266, "elf"),  # a relocation section's sh_info out of range: check said 0
    (101, 522, "elf"),  # e_machine 0: convert's output against its input
    (99, 2, "paths"),  # deps --graph lp.svg wrote lp.dot -- the module -- beside it
    (14, 100015923, "elf"),  # a klp_func old_name that is not UTF-8: check's encode()
    (14, 200018907, "sections"),  # a SHT_GROUP naming sections past the last: convert appends one
    (14, 100009663, "sections"),  # the same, the appended section a member without SHF_GROUP
    (2026, 40557, "sections"),  # __versions retyped SHT_DYNSYM: convert rewrote its rows
]


@pytest.mark.parametrize(("seed", "index", "klass"), CAMPAIGN_FINDINGS)
def test_campaign_findings_stay_fixed(seed, index, klass, fuzz_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("KLPKIT_CACHE", str(tmp_path / "cache"))
    runner = Runner(Options(cli_rate=0, elf_rate=1.0), random.Random(0))
    group = make_group(fuzz_corpus, seed, index, tmp_path / "g", only=klass)
    failed = [r for r in runner.run_group(group) if r.failed]
    assert not failed, "\n".join(
        f"{r.command}: {r.outcome}: {r.detail} ({r.where})" for r in failed
    )


def test_groups_are_reproducible(fuzz_corpus, tmp_path):
    """A group is re-made byte for byte from (seed, index): a reproducer is its index."""
    for index in range(12):
        a = make_group(fuzz_corpus, SEED, index, tmp_path / "a")
        files_a = {p.name: p.read_bytes() for p in a.workdir.iterdir() if p.is_file()}
        b = make_group(fuzz_corpus, SEED, index, tmp_path / "b")
        files_b = {p.name: p.read_bytes() for p in b.workdir.iterdir() if p.is_file()}
        assert a.klass == b.klass
        assert files_a == files_b
        assert [c.what for c in a.cases] == [c.what for c in b.cases]


def test_judge_catches_what_it_must(fuzz_corpus, tmp_path):
    """The runner's own oracle: a clean run is accepted, and a changed input, a
    traceback and an error line naming nothing are each reported."""
    from tests.fuzz.cases import Case

    runner = Runner(Options(cli_rate=0, elf_rate=1.0), random.Random(0))
    mod = tmp_path / "lp.ko"
    mod.write_bytes(fuzz_corpus.modules["lp_cdrom"].read_bytes())
    out = tmp_path / "out.ko"
    argv = ["convert", str(mod), "-o", str(out), "--symbols", str(fuzz_corpus.db)]
    ok = Case("t", "convert", argv, "clean", inputs=[str(mod)], named=[str(mod)],
              output=str(out), reference=str(mod))  # fmt: skip
    r = runner.run_inprocess(ok, tmp_path)
    assert (r.outcome, r.elf_checked) == ("accepted", True), r
    # a file the command writes, declared as an input: its change is reported
    listed = tmp_path / "Symbols.list"
    listed.write_text("old")
    export = ["symbols", "export-list", str(listed), "--db", str(fuzz_corpus.db)]
    r = runner.run_inprocess(
        Case("t", "symbols export-list", export, "write", inputs=[str(listed)]), tmp_path
    )
    assert r.outcome == "modified-input", r
    missing = tmp_path / "missing.ko"
    r = runner.run_inprocess(
        Case("t", "inspect", ["inspect", str(missing)], "missing", named=["/elsewhere"]), tmp_path
    )
    assert r.outcome == "unnamed-message", r

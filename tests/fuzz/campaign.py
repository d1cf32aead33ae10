"""The campaign loop shared by ``bench/fuzz_campaign.py`` and the fast test: make groups
from ``(seed, index)``, run them, count outcomes per class and per command, and keep one
example (its files and command line) of each distinct failure."""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import resource
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tests.fuzz.cases import CLASSES, make_group
from tests.fuzz.corpus import Corpus
from tests.fuzz.runner import FAILURES, OK_OUTCOMES, Options, Result, Runner

WORKER_AS_LIMIT = 3 << 30  # a runaway allocation in-process becomes a MemoryError


@dataclass
class Tally:
    groups: int = 0
    runs: int = 0
    by_class: dict = field(default_factory=lambda: defaultdict(Counter))
    by_command: dict = field(default_factory=lambda: defaultdict(Counter))
    by_mode: Counter = field(default_factory=Counter)
    # in-process run time per command
    seconds_by_command: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    elf_checked: Counter = field(default_factory=Counter)  # class -> outputs checked
    signatures: dict = field(default_factory=dict)  # signature -> example + count
    harness_errors: list = field(default_factory=list)  # groups the mutators could not make
    segments: list = field(default_factory=list)  # when each code version ran (campaign)
    seconds: float = 0.0

    def add(self, r: Result, example: dict) -> None:
        self.runs += 1
        self.by_class[r.klass][r.outcome] += 1
        self.by_class[r.klass]["runs"] += 1
        self.by_command[r.command][r.outcome] += 1
        self.by_command[r.command]["runs"] += 1
        self.by_mode[r.mode] += 1
        if r.mode == "in-process":
            self.seconds_by_command[r.command] += r.seconds
        if r.elf_checked:
            self.elf_checked[r.klass] += 1
        if r.failed:
            sig = signature(r)
            if sig in self.signatures:
                self.signatures[sig]["count"] += 1
            else:
                self.signatures[sig] = {
                    "count": 1,
                    "class": r.klass,
                    "command": r.command,
                    "outcome": r.outcome,
                    "where": r.where,
                    "detail": r.detail,
                    "mode": r.mode,
                    **example,
                }

    def to_json(self) -> dict:
        return {
            "groups": self.groups,
            "runs": self.runs,
            "seconds": round(self.seconds, 1),
            "by_class": {k: dict(v) for k, v in self.by_class.items()},
            "by_command": {k: dict(v) for k, v in self.by_command.items()},
            "by_mode": dict(self.by_mode),
            "seconds_by_command": {k: round(v, 3) for k, v in self.seconds_by_command.items()},
            "elf_checked": dict(self.elf_checked),
            "signatures": self.signatures,
            "harness_errors": self.harness_errors,
            "segments": self.segments,
        }

    def merge(self, data: dict) -> None:
        self.groups += data["groups"]
        self.runs += data["runs"]
        self.seconds = max(self.seconds, data["seconds"])
        for k, v in data["by_class"].items():
            self.by_class[k].update(v)
        for k, v in data["by_command"].items():
            self.by_command[k].update(v)
        self.by_mode.update(data["by_mode"])
        for k, v in data.get("seconds_by_command", {}).items():
            self.seconds_by_command[k] += v
        self.harness_errors += data.get("harness_errors", [])
        self.elf_checked.update(data["elf_checked"])
        for sig, ex in data["signatures"].items():
            if sig in self.signatures:
                self.signatures[sig]["count"] += ex["count"]
            else:
                self.signatures[sig] = ex

    @property
    def failures(self) -> int:
        return sum(c[f] for c in self.by_class.values() for f in FAILURES)


def signature(r: Result) -> str:
    """What makes two failures the same bug: class, command, outcome, the raising line
    and the message with paths and numbers taken out."""
    detail = re.sub(r"(/[^\s:'\"]+)+", "PATH", r.detail)
    detail = re.sub(r"0x[0-9a-f]+|\d+", "N", detail)
    detail = re.sub(r"'[^']{40,}'", "'...'", detail)[:160]
    where = r.where.split(":")[0] if r.outcome != "traceback" else r.where
    return " | ".join([r.klass, r.command, r.outcome, where, detail])


def run_share(
    corpus: Corpus,
    seed: int,
    indexes,
    runs_wanted: int,
    workdir: Path,
    options: Options,
    *,
    only: str | None = None,
    findings: Path | None = None,
    deadline: float | None = None,
    progress=None,
) -> Tally:
    """Run groups ``indexes`` (an iterable) until ``runs_wanted`` runs are done."""
    tally = Tally()
    indexes = iter(indexes)
    first = next(indexes, None)
    indexes = itertools.chain([] if first is None else [first], indexes)
    runner = Runner(options, random.Random(f"{seed}:runner:{first}"))
    start = time.monotonic()
    scratch = workdir / f"w{os.getpid()}"
    for index in indexes:
        if tally.runs >= runs_wanted or (deadline and time.monotonic() > deadline):
            break
        try:
            group = make_group(corpus, seed, index, scratch / "g", only=only)
        except Exception as e:  # noqa: BLE001 - a mutator bug must not end the campaign
            tally.harness_errors.append(f"{seed}:{index}: {type(e).__name__}: {e}"[:300])
            continue
        tally.groups += 1
        for r in runner.run_group(group):
            example = {"seed": seed, "index": index, "what": r.what[:300], "argv": r.argv}
            known = signature(r) in tally.signatures
            tally.add(r, example)
            if r.failed and not known and findings is not None:
                _keep(group.workdir, findings, tally.signatures[signature(r)], seed, index)
        if progress and tally.groups % 200 == 0:
            progress(tally, time.monotonic() - start)
    tally.seconds = time.monotonic() - start
    shutil.rmtree(scratch, ignore_errors=True)
    return tally


def _keep(workdir: Path, findings: Path, sig: dict, seed: int, index: int) -> None:
    """Copy the group's files to ``findings/<seed>-<index>/`` and point the example's
    command line there (a reproducer that outlives the scratch directory)."""
    dest = findings / f"{seed}-{index}"
    if not dest.exists():
        try:
            shutil.copytree(workdir, dest, symlinks=True, ignore_dangling_symlinks=True)
        except (OSError, shutil.Error):
            return
    sig["argv"] = [a.replace(str(workdir), str(dest)) for a in sig.get("argv", [])]
    sig["files"] = str(dest)


def replay(corpus: Corpus, signatures: dict, workdir: Path, options: Options) -> dict:
    """Run the example group of each failure again (the code on disk now): signature ->
    'still fails' | 'passes now'."""
    runner = Runner(options, random.Random(0))
    out = {}
    for sig, ex in signatures.items():
        group = make_group(corpus, ex["seed"], ex["index"], workdir / "replay", only=ex["class"])
        again = {signature(r) for r in runner.run_group(group) if r.failed}
        same = {g.split(" | ")[:3] == sig.split(" | ")[:3] for g in again}
        out[sig] = "still fails" if True in same else "passes now"
    shutil.rmtree(workdir / "replay", ignore_errors=True)
    return out


def limit_worker_memory() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = WORKER_AS_LIMIT if hard == resource.RLIM_INFINITY else min(hard, WORKER_AS_LIMIT)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


# --- the table ------------------------------------------------------------------------------------

COLUMNS = ("runs", *OK_OUTCOMES, "traceback", "hang", "blowup", "corrupt-output", "modified-input")


def table(tally: Tally, rows: str = "class") -> list[str]:
    data = tally.by_class if rows == "class" else tally.by_command
    order = [k for k in CLASSES if k in data] if rows == "class" else sorted(data)
    head = [rows, *COLUMNS, "other failures"]
    if rows == "class":
        head.append("ELF-checked outputs")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    total: Counter = Counter()
    for k in order:
        c = data[k]
        total.update(c)
        out.append(_row(k, c, tally.elf_checked.get(k) if rows == "class" else None))
    out.append(
        _row("**total**", total, sum(tally.elf_checked.values()) if rows == "class" else None)
    )
    return out


def _row(name: str, c: Counter, checked) -> str:
    other = {f: c[f] for f in FAILURES if f not in COLUMNS and c[f]}
    cells = [name, *(f"{c[k]:,}" for k in COLUMNS)]
    cells.append(", ".join(f"{k} {v}" for k, v in other.items()) or "0")
    if checked is not None:
        cells.append(f"{checked:,}")
    return "| " + " | ".join(cells) + " |"


def findings_markdown(tally: Tally) -> list[str]:
    out = []
    sigs = sorted(tally.signatures.values(), key=lambda s: (s["class"], s["command"], -s["count"]))
    for n, s in enumerate(sigs, 1):
        argv = " ".join(_quote(a) for a in s.get("argv", []))
        lines = [
            f"{n}. **{s['class']} / {s['command']} / {s['outcome']}** x{s['count']} "
            f"({s['mode']}) -- `{s['detail'][:200]}`",
            f"   - raised at: {s['where'] or '-'}",
            f"   - mutation: {s['what'][:200]}",
            f"   - reproduce: `{argv[:600]}`",
        ]
        if "at_end" in s:
            lines.append(f"   - segments {s.get('segments')}; replayed at the end: {s['at_end']}")
        out.append("\n".join(lines))
    return out


def _quote(a: str) -> str:
    a = a.encode("utf-8", "backslashreplace").decode()
    if len(a) > 120:  # a 5,000-digit position: the JSON summary has it whole
        a = f"{a[:60]}...({len(a)} characters)"
    return a if re.fullmatch(r"[\w./,=:+-]+", a) else json.dumps(a)

"""The bad-input campaign: mutants of real livepatch modules and of Debian's cdrom.ko,
damaged symbol databases, Symbols.list / map / kallsyms files and odd paths, run through
every command that reads them (inspect, convert, check, deps, klp-convert, symbols
info/lookup/export-list/build).

    python bench/fuzz_campaign.py --runs 200000 --seed 14 --jobs 2 [--json OUT.json]

Runs are in-process (``klpkit.cli.main`` / ``klp_convert_main`` with a strict UTF-8
stdout); ``--cli-rate`` of them (default 1%) again through the real console script with
a timeout and an address-space limit; ``--elf-rate`` of the accepted outputs (default
all) through ``readelf -a -W`` and ``eu-elflint --gnu-ld``, compared with the input's
own diagnostics.  Prints the inputs tried and the outcomes per class and per command
(markdown tables), every distinct failure with a reproducer (its files are kept under
``--findings``), and writes the JSON summary.  Exit 1 when any run failed.

Needs the Debian 6.1 image (cdrom.ko, the symbol database: built when missing) and its
headers (the test livepatch modules are built with Kbuild once, kept in --workdir).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from tests.fuzz import campaign  # noqa: E402
from tests.fuzz.cases import CLASSES  # noqa: E402
from tests.fuzz.corpus import Corpus, build_corpus, build_livepatches  # noqa: E402
from tests.fuzz.runner import Options, entry_points  # noqa: E402

STARTED = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


def prepare(workdir: Path) -> Corpus:
    """The corpus (kept in ``workdir``; the livepatches rebuilt only when their sources
    change, the rest remade on every campaign so that it matches today's klpkit)."""
    from klpkit import debian
    from klpkit.symbols import SymbolDB, build_from_debian
    from klpkit.symbols.db import SymbolDBError

    modules = build_livepatches(workdir / "livepatches")
    image = debian.ensure_image()
    # a database of its own (never the user's cache), rebuilt when this klpkit cannot
    # open it (another schema)
    full = workdir / f"{debian.DEFAULT_RELEASE}.sqlite"
    try:
        SymbolDB.open(full).close()
    except SymbolDBError:
        full.unlink(missing_ok=True)
        build_from_debian(image, db=full, progress=False).close()
    cdrom = debian.find_module("cdrom")
    try:
        return build_corpus(workdir / "corpus", full, cdrom, modules)
    except RuntimeError:  # the database opens but this klpkit cannot read it all
        full.unlink()
        build_from_debian(image, db=full, progress=False).close()
        return build_corpus(workdir / "corpus", full, cdrom, modules)


def warm_up(corpus: Corpus, workdir: Path) -> None:
    """One clean run of each command as a job starts: every klpkit module it uses is
    imported now, so a segment tests one version of the sources (others may be editing
    them meanwhile)."""
    import contextlib
    import io

    main, klp_main = entry_points()
    mod, klp, db = (
        str(p) for p in (corpus.modules["lp_cdrom"], corpus.converted["lp_cdrom"], corpus.db)
    )
    out = str(workdir / "warm.ko")
    runs = [
        ["inspect", mod, "-a", "--json"],
        ["convert", mod, "-o", out, "--symbols", db],
        ["check", klp, "--symbols", db, "--json"],
        ["deps", klp, "--symbols", db, "--json"],
        ["symbols", "info", "--db", db],
        ["symbols", "lookup", "debug", "--db", db],
        ["symbols", "export-list", str(workdir / "warm.list"), "--db", db],
    ]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for argv in runs:
            main(argv)
        klp_main([str(corpus.symbols_list), mod, out])


def _worker(args, corpus_json, job, first, runs, deadline, out_path):
    campaign.limit_worker_memory()
    os.environ["KLPKIT_CACHE"] = str(Path(args.workdir) / "cache")
    os.environ.pop("KLPKIT_SYMBOLS_DB", None)
    os.environ.pop("COLUMNS", None)
    corpus = Corpus.from_json(corpus_json)
    warm = Path(args.workdir) / f"warm{job}"
    warm.mkdir(exist_ok=True)
    for attempt in range(4):  # the sources may be half-written by someone just now
        try:
            warm_up(corpus, warm)
            break
        except Exception as e:  # noqa: BLE001 - retried, then the campaign runs anyway
            print(f"  job {job}: warm-up failed ({e!r}); again in 20 s", file=sys.stderr)
            time.sleep(20 if attempt < 3 else 0)
    indexes = range(first + job, 1 << 62, args.jobs)
    options = Options(cli_rate=args.cli_rate, elf_rate=args.elf_rate, timeout=args.timeout)

    def progress(tally, seconds):
        # a checkpoint: what the parent merges should this job never come back
        tmp = Path(out_path + ".part")
        tmp.write_text(json.dumps(tally.to_json() | {"partial": True}))
        os.replace(tmp, out_path)
        print(
            f"  job {job}: {tally.runs:,} runs, {tally.groups:,} groups, "
            f"{tally.failures:,} failures, {seconds:.0f} s",
            file=sys.stderr,
            flush=True,
        )

    tally = campaign.run_share(
        corpus,
        args.seed,
        indexes,
        runs,
        Path(args.workdir),
        options,
        only=args.klass,
        findings=Path(args.findings),
        deadline=deadline,
        progress=progress,
    )
    Path(out_path).write_text(json.dumps(tally.to_json()))


def src_fingerprint() -> str:
    """sha256 of every klpkit source file: which version of the code a segment ran."""
    h = hashlib.sha256()
    for p in sorted((REPO / "src" / "klpkit").rglob("*.py")):
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:12]


def corpus_readable(corpus: Corpus) -> bool:
    """Can the klpkit on disk now read the corpus's database? (Asked of a fresh process.)"""
    r = subprocess.run(
        [str(Path(sys.executable).parent / "klpkit"), "symbols", "lookup", "debug",
         "--db", str(corpus.db)],
        capture_output=True,
    )  # fmt: skip
    return r.returncode == 0


def run_segment(args, corpus: Corpus, seg: int, runs: int, deadline):
    """``args.jobs`` fresh interpreters (spawned: they import klpkit from disk now), each
    making its share of ``runs`` from group index ``args.start + seg * 10**8`` on."""
    started = time.strftime("%H:%M:%S", time.gmtime())
    fingerprint = src_fingerprint()
    if seg and not corpus_readable(corpus):
        # the database format changed under us: the corpus again, by today's code
        subprocess.run(
            [sys.executable, __file__, "--prepare-only", "--workdir", args.workdir], check=True
        )
        corpus = Corpus.from_json(
            json.loads((Path(args.workdir) / "corpus" / "corpus.json").read_text())
        )
    share = -(-runs // args.jobs)
    ctx = multiprocessing.get_context("spawn")
    first = args.start + seg * 10**8
    procs = []
    for job in range(args.jobs):
        out = Path(args.workdir) / f"job{job}.json"
        out.unlink(missing_ok=True)
        p = ctx.Process(
            target=_worker,
            args=(args, corpus.to_json(), job, first, share, deadline, str(out)),
        )
        p.start()
        procs.append((p, out))
    tally = campaign.Tally()
    lost = 0
    for p, out in procs:
        # a job stuck where no signal reaches it (C code) is ended after the deadline
        p.join(None if deadline is None else max(1.0, deadline - time.monotonic() + 120))
        if p.is_alive():
            p.kill()
            p.join()
        data = json.loads(out.read_text()) if out.is_file() else None
        if data is None or data.get("partial"):
            lost += 1
        if data is not None:
            tally.merge(data)
    info = {
        "segment": seg,
        "started_utc": started,
        "src_sha256": fingerprint,
        "runs": tally.runs,
        "failures": tally.failures,
        "seconds": round(tally.seconds, 1),
    }
    return tally, lost, info


def _replay_worker(args, corpus_json, signatures, out_path):
    os.environ["KLPKIT_CACHE"] = str(Path(args.workdir) / "cache")
    corpus = Corpus.from_json(corpus_json)
    options = Options(cli_rate=0, elf_rate=1.0, timeout=args.timeout)
    verdicts = campaign.replay(corpus, signatures, Path(args.workdir), options)
    Path(out_path).write_text(json.dumps(verdicts))


def replay_failures(args, corpus: Corpus, tally: campaign.Tally) -> None:
    """Each failure's example again, in a fresh interpreter: does today's code still
    fail it? (The campaign ran over code that others were changing.)"""
    out = Path(args.workdir) / "replay.json"
    out.unlink(missing_ok=True)
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(
        target=_replay_worker, args=(args, corpus.to_json(), tally.signatures, str(out))
    )
    p.start()
    p.join(600)
    if p.is_alive():
        p.kill()
        p.join()
    verdicts = json.loads(out.read_text()) if out.is_file() else {}
    for sig, ex in tally.signatures.items():
        ex["at_end"] = verdicts.get(sig, "not replayed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2000, help="command runs to make (total)")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--start", type=int, default=0, help="first group index")
    ap.add_argument("--class", dest="klass", choices=CLASSES, help="only this class")
    ap.add_argument("--cli-rate", type=float, default=0.01)
    ap.add_argument("--elf-rate", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds: a hang")
    ap.add_argument("--max-seconds", type=float, help="stop (and say so) after this long")
    ap.add_argument(
        "--segment-seconds",
        type=float,
        help="restart the jobs this often (fresh interpreters: the code on disk then)",
    )
    ap.add_argument("--workdir", default="/tmp/klpkit-fuzz")
    ap.add_argument("--findings", default="/tmp/klpkit-fuzz/findings")
    ap.add_argument("--json", default="/tmp/klpkit-fuzz/summary.json")
    ap.add_argument("--markdown", help="also write the tables and failures to this file")
    ap.add_argument("--no-replay", action="store_true", help="do not re-run the failures")
    ap.add_argument("--prepare-only", action="store_true", help="make the corpus and stop")
    args = ap.parse_args()

    t0 = time.monotonic()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    Path(args.findings).mkdir(parents=True, exist_ok=True)
    corpus = prepare(workdir)
    if args.prepare_only:
        return 0
    assert corpus.db is not None
    print(
        f"corpus: {len(corpus.modules)} livepatches as built, {len(corpus.converted)} "
        f"converted, {', '.join(sorted(corpus.targets))}; database {corpus.db} "
        f"({corpus.db.stat().st_size:,} bytes) [{time.monotonic() - t0:.0f} s]",
        file=sys.stderr,
    )
    deadline = time.monotonic() + args.max_seconds if args.max_seconds else None
    tally = campaign.Tally()
    lost = 0
    segments: list[dict] = []
    while tally.runs < args.runs and (deadline is None or time.monotonic() < deadline - 60):
        seg = len(segments)
        ends = [deadline] if deadline else []
        if args.segment_seconds:
            ends.append(time.monotonic() + args.segment_seconds)
        seg_tally, seg_lost, info = run_segment(
            args, corpus, seg, args.runs - tally.runs, min(ends) if ends else None
        )
        lost += seg_lost
        tally.merge(seg_tally.to_json())
        for sig in seg_tally.signatures:
            tally.signatures[sig].setdefault("segments", []).append(seg)
        segments.append(info)
        print(f"segment {seg}: {info}", file=sys.stderr, flush=True)
    tally.segments = segments
    if tally.signatures and not args.no_replay:
        corpus = Corpus.from_json(json.loads((workdir / "corpus" / "corpus.json").read_text()))
        replay_failures(args, corpus, tally)
    tally.seconds = time.monotonic() - t0
    report(args, tally, lost)
    return 1 if tally.failures or lost else 0


def report(args, tally: campaign.Tally, lost: int) -> None:
    lines: list[str] = []
    _report(args, tally, lost, lines.append)
    print("\n".join(lines))
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")


def _report(args, tally: campaign.Tally, lost: int, print) -> None:
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "src"], capture_output=True, text=True
    ).stdout.strip()
    cli = tally.by_mode.get("cli", 0)
    checked = sum(tally.elf_checked.values())
    accepted_outputs = sum(
        c.get("accepted", 0) for k, c in tally.by_command.items() if k in ("convert", "klp-convert")
    )
    print(
        f"\nklpkit fuzz campaign: seed {args.seed}, {tally.groups:,} inputs tried, "
        f"{tally.runs:,} command runs ({tally.runs - cli:,} in-process, {cli:,} through the "
        f"real CLI = {cli / max(1, tally.runs):.2%}), jobs {args.jobs}, "
        f"{tally.seconds:.0f} s; klpkit {rev}{' + uncommitted src changes' if dirty else ''}"
    )
    print(
        f"ELF outputs checked with readelf -a -W and eu-elflint --gnu-ld: {checked:,} "
        f"(--elf-rate {args.elf_rate:g}; convert/klp-convert accepted {accepted_outputs:,})"
    )
    for seg in tally.segments:
        print(
            f"segment {seg['segment']}: started {seg['started_utc']} UTC, src {seg['src_sha256']}, "
            f"{seg['runs']:,} runs, {seg['failures']:,} failures"
        )
    if lost:
        print(
            f"WARNING: {lost} job(s) did not finish: their runs up to the last checkpoint "
            f"are counted, the group they were in is not"
        )
    print("\nPer class:\n")
    print("\n".join(campaign.table(tally, "class")))
    print("\nPer command:\n")
    print("\n".join(campaign.table(tally, "command")))
    inproc = {k: c["runs"] for k, c in tally.by_command.items()}
    means = ", ".join(
        f"{k} {1000 * v / max(1, inproc.get(k, 1)):.0f} ms"
        for k, v in sorted(tally.seconds_by_command.items())
    )
    print(f"\nMean run time (in-process, wall, including the load of the machine): {means}")
    if tally.harness_errors:
        print(f"Groups the mutators could not make: {len(tally.harness_errors)}")
    print(f"\nFailures: {tally.failures:,} runs, {len(tally.signatures)} distinct")
    for line in campaign.findings_markdown(tally):
        print(line)
    summary = tally.to_json() | {
        "seed": args.seed,
        "jobs": args.jobs,
        "cli_rate": args.cli_rate,
        "elf_rate": args.elf_rate,
        "klpkit": rev,
        "src_dirty": bool(dirty),
        "failures": tally.failures,
        "lost_jobs": lost,
        "started_utc": STARTED,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
    print(f"\nJSON summary: {args.json}")


if __name__ == "__main__":
    sys.exit(main())

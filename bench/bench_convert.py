"""Benchmark ``klpkit convert``: the cdrom livepatch and a synthetic module with 10,000
relocations to convert.  Goal: <= 100 ms of work each (read, plan, apply, write),
printed beside the interpreter start time (which is not part of the work).

Then the drop-in ``klp-convert Symbols.list IN OUT`` on the cdrom livepatch, as a whole
process next to ``klpkit convert IN -o OUT --symbols DB`` (what a Kbuild build runs per
module): wall and CPU time (best of --repeat) and peak RSS of each process.  Goal: the
drop-in within 1.5x of ``klpkit convert``, peak <= 64 MiB.  The Symbols.list is the
database exported in klpkit's format (~730,000 lines).

    python bench/bench_convert.py [--symbols DB] [--repeat N]

The cdrom case needs the Debian headers (to build examples/cdrom) and a symbol database
(--symbols, $KLPKIT_SYMBOLS_DB, or the cached one for 6.1.0-47-amd64; built from the
Debian packages when missing).  The synthetic case needs only gcc.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from klpkit.convert import PlanOptions, apply_plan, make_plan  # noqa: E402
from klpkit.elf import ElfFile  # noqa: E402

RELEASE = "6.1.0-47-amd64"
NFUNCS, NCALLS = 1000, 10


def interpreter_start() -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        best = min(best, time.perf_counter() - t)
    return best


def convert_once(src: Path, dst: Path, db, options: PlanOptions) -> tuple[float, int]:
    t = time.perf_counter()
    elf = ElfFile.read(src)
    plan = make_plan(elf, db, options)
    assert plan.ok, plan.errors[:3]
    res = apply_plan(elf, plan)
    elf.write(dst)
    return time.perf_counter() - t, res.moved


def best_of(n, fn):
    times = []
    moved = 0
    for _ in range(n):
        dt, moved = fn()
        times.append(dt)
    return min(times), sorted(times)[len(times) // 2], moved


def synthetic(tmp: Path):
    from klpkit.symbols import import_symbols_list

    lines = [f"extern int synth_static_{i}(int);" for i in range(NFUNCS)]
    body = " + ".join(f"synth_static_{i}(x + {j})" for j in range(NCALLS) for i in range(NFUNCS))
    lines.append(f"int lp_synth(int x) {{ return {body}; }}")
    lines.append(
        'const char mi[] __attribute__((section(".modinfo"), used)) = '
        '"livepatch=Y\\0depends=synth\\0vermagic=6.1.0-bench SMP ";'
    )
    (tmp / "synth.c").write_text("\n".join(lines) + "\n")
    subprocess.run(
        [
            "gcc",
            "-O1",
            "-fno-pic",
            "-fno-asynchronous-unwind-tables",
            "-c",
            "-o",
            str(tmp / "synth.ko"),
            str(tmp / "synth.c"),
        ],
        check=True,
    )
    listing = ["klp-convert-symbol-data.0.1", "*vmlinux", "*synth"]
    listing += [f"synth_static_{i}" for i in range(NFUNCS)]
    (tmp / "Symbols.list").write_text("\n".join(listing) + "\n")
    db = import_symbols_list(tmp / "Symbols.list", release="6.1.0-bench", db=tmp / "synth.sqlite")
    return tmp / "synth.ko", db


def cdrom(tmp: Path, symbols: str | None):
    from klpkit.symbols import SymbolDB, build_from_debian, default_db_path
    from klpkit.symbols.db import SymbolDBError

    headers = Path(f"/usr/src/linux-headers-{RELEASE}")
    if not headers.is_dir():
        return None, f"no {headers}"
    build = tmp / "cdrom"
    build.mkdir()
    for name in ("Kbuild", "lp_cdrom.c"):
        (build / name).write_text((REPO / "examples" / "cdrom" / name).read_text())
    r = subprocess.run(
        ["make", "-s", "-C", str(headers), f"M={build}", "KBUILD_MODPOST_WARN=1", "modules"],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        return None, "module build failed: " + r.stderr.strip()[-200:]
    path = Path(symbols) if symbols else default_db_path(RELEASE)
    try:
        db = SymbolDB.open(path)
    except SymbolDBError:  # missing, or written by an older klpkit: (re)build it
        from klpkit import debian

        print(f"(building the symbol database {path} once...)", file=sys.stderr)
        db = build_from_debian(debian.ensure_image(), debian.ensure_dbg(), db=path, progress=False)
    return (build / "lp_cdrom.ko", db), None


# Runs its arguments as a child and reports the child's own usage: a child forked from
# this (large) interpreter would count the parent's pages in its peak RSS until exec.
LAUNCHER = """
import json, os, subprocess, sys, time
t = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_pid, status, ru = os.wait4(p.pid, 0)
print(json.dumps([time.perf_counter() - t, ru.ru_utime + ru.ru_stime, ru.ru_maxrss,
                  os.waitstatus_to_exitcode(status)]))
"""


def run_process(argv: list[str], pycache: Path) -> tuple[float, float, int, int]:
    """(wall s, user+sys CPU s, peak RSS KiB, exit status) of one whole process, with
    byte-code cached as in an installed klpkit (in ``pycache``, not in the tree)."""
    import json

    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONPYCACHEPREFIX=str(pycache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    out = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *argv], env=env, check=True, capture_output=True, text=True
    ).stdout
    wall, cpu, rss, status = json.loads(out)
    return wall, cpu, rss, status


def processes(src: Path, db, tmp: Path, repeat: int) -> None:
    """The drop-in on the whole kernel's Symbols.list vs klpkit convert on the database,
    each a fresh interpreter as in a Kbuild build."""
    from klpkit.symbols.symbols_list import export_symbols_list

    listing = tmp / "Symbols.list"
    export_symbols_list(db, listing)
    py = sys.executable
    runs = {
        "klpkit convert --symbols DB": [
            py,
            "-c",
            "import sys; from klpkit.cli import main; sys.exit(main())",
            "convert",
            str(src),
            "-o",
            str(tmp / "a.ko"),
            "--symbols",
            str(db.path),
        ],
        "klp-convert Symbols.list IN OUT": [
            py,
            "-c",
            "import sys; from klpkit.cli import klp_convert_main as m; sys.exit(m())",
            str(listing),
            str(src),
            str(tmp / "b.ko"),
        ],
    }
    for argv in runs.values():
        run_process(argv, tmp / "pycache")  # warm-up: byte-code written
    got: dict[str, list] = {label: [] for label in runs}
    for _ in range(repeat):  # interleaved: both see the same load
        for label, argv in runs.items():
            got[label].append(run_process(argv, tmp / "pycache"))
    best = {}
    for label, results in got.items():
        assert all(g[3] == 0 for g in results), (label, results)
        best[label] = (
            min(g[0] for g in results),
            min(g[1] for g in results),
            max(g[2] for g in results),
        )
    assert (tmp / "a.ko").read_bytes() == (tmp / "b.ko").read_bytes(), "outputs differ"
    lines = sum(1 for _ in open(listing, "rb"))
    print(
        f"whole processes on the cdrom livepatch (best of {repeat}; Symbols.list: {lines} "
        f"lines, {listing.stat().st_size / 2**20:.1f} MiB):"
    )
    for label, (wall, cpu, rss) in best.items():
        print(
            f"  {label:34} wall {wall * 1000:7.1f} ms  cpu {cpu * 1000:7.1f} ms  "
            f"peak RSS {rss / 1024:6.1f} MiB"
        )
    (w0, c0, _r0), (w1, c1, r1) = best.values()
    ok = c1 <= 1.5 * c0 and r1 <= 64 * 1024
    print(
        f"  drop-in / convert: cpu {c1 / c0:.2f}x, wall {w1 / w0:.2f}x; peak "
        f"{r1 / 1024:.1f} MiB ({'within' if ok else 'OVER'} the 1.5x / 64 MiB goal); "
        "same output"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", help="symbol database for the cdrom case")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    start = interpreter_start()
    print(
        f"interpreter start (python -c pass, best of 3): {start * 1000:7.1f} ms "
        "(not included below)"
    )
    with tempfile.TemporaryDirectory(prefix="klpkit-bench-") as d:
        tmp = Path(d)
        got, why = cdrom(tmp, args.symbols or os.environ.get("KLPKIT_SYMBOLS_DB"))
        if got is None:
            print(f"cdrom livepatch: skipped ({why})")
        else:
            src, db = got
            best, med, moved = best_of(
                args.repeat, lambda: convert_once(src, tmp / "out.ko", db, PlanOptions())
            )
            n = sum(len(rs.relocations) for rs in ElfFile.read(src).relocation_sections())
            print(
                f"cdrom livepatch ({n} relocations, {moved} converted): "
                f"best {best * 1000:7.1f} ms, median {med * 1000:7.1f} ms"
            )
            processes(src, db, tmp, args.repeat)
        src, db = synthetic(tmp)
        opts = PlanOptions(objects=["synth"])
        best, med, moved = best_of(
            args.repeat, lambda: convert_once(src, tmp / "synth.out.ko", db, opts)
        )
        print(
            f"synthetic module ({moved} relocations converted, {NFUNCS} symbols): "
            f"best {best * 1000:7.1f} ms, median {med * 1000:7.1f} ms "
            f"({'within' if best <= 0.1 else 'OVER'} the 100 ms goal)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark ``klpkit convert``: the cdrom livepatch and a synthetic module with 10,000
relocations to convert.  Goal: <= 100 ms of work each (read, plan, apply, write),
printed beside the interpreter start time (which is not part of the work).

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
    body = " + ".join(f"synth_static_{i}(x + {j})" for j in range(NCALLS)
                      for i in range(NFUNCS))
    lines.append(f"int lp_synth(int x) {{ return {body}; }}")
    lines.append('const char mi[] __attribute__((section(".modinfo"), used)) = '
                 '"livepatch=Y\\0depends=synth\\0vermagic=6.1.0-bench SMP ";')
    (tmp / "synth.c").write_text("\n".join(lines) + "\n")
    subprocess.run(["gcc", "-O1", "-fno-pic", "-fno-asynchronous-unwind-tables", "-c", "-o",
                    str(tmp / "synth.ko"), str(tmp / "synth.c")], check=True)
    listing = ["klp-convert-symbol-data.0.1", "*vmlinux", "*synth"]
    listing += [f"synth_static_{i}" for i in range(NFUNCS)]
    (tmp / "Symbols.list").write_text("\n".join(listing) + "\n")
    db = import_symbols_list(tmp / "Symbols.list", release="6.1.0-bench",
                             db=tmp / "synth.sqlite")
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
    r = subprocess.run(["make", "-s", "-C", str(headers), f"M={build}", "KBUILD_MODPOST_WARN=1",
                        "modules"], capture_output=True, text=True)
    if r.returncode:
        return None, "module build failed: " + r.stderr.strip()[-200:]
    path = Path(symbols) if symbols else default_db_path(RELEASE)
    try:
        db = SymbolDB.open(path)
    except SymbolDBError:   # missing, or written by an older klpkit: (re)build it
        from klpkit import debian

        print(f"(building the symbol database {path} once...)", file=sys.stderr)
        db = build_from_debian(debian.ensure_image(), debian.ensure_dbg(), db=path,
                               progress=False)
    return (build / "lp_cdrom.ko", db), None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", help="symbol database for the cdrom case")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    start = interpreter_start()
    print(f"interpreter start (python -c pass, best of 3): {start * 1000:7.1f} ms "
          "(not included below)")
    with tempfile.TemporaryDirectory(prefix="klpkit-bench-") as d:
        tmp = Path(d)
        got, why = cdrom(tmp, args.symbols or os.environ.get("KLPKIT_SYMBOLS_DB"))
        if got is None:
            print(f"cdrom livepatch: skipped ({why})")
        else:
            src, db = got
            best, med, moved = best_of(args.repeat, lambda: convert_once(
                src, tmp / "out.ko", db, PlanOptions()))
            n = sum(len(rs.relocations) for rs in ElfFile.read(src).relocation_sections())
            print(f"cdrom livepatch ({n} relocations, {moved} converted): "
                  f"best {best * 1000:7.1f} ms, median {med * 1000:7.1f} ms")
        src, db = synthetic(tmp)
        opts = PlanOptions(objects=["synth"])
        best, med, moved = best_of(args.repeat, lambda: convert_once(
            src, tmp / "synth.out.ko", db, opts))
        print(f"synthetic module ({moved} relocations converted, {NFUNCS} symbols): "
              f"best {best * 1000:7.1f} ms, median {med * 1000:7.1f} ms "
              f"({'within' if best <= 0.1 else 'OVER'} the 100 ms goal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

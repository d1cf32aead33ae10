"""Benchmark the kernel symbol database on the real Debian kernel (issue 3).

    python bench/bench_symbols.py [--release 6.1.0-47-amd64] [--db PATH] [--repeat N]

Prints, from one run: build time for vmlinux + all modules (wall and CPU; goal
<= 2 s on one core), open time (goal <= 5 ms), lookup latency (goal ~15 us) and
the file size.  Inputs come from klpkit.debian (fetched and cached on first use).
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--release", default=None)
    ap.add_argument("--db", help="where to write the database (default: a temp dir)")
    ap.add_argument("--repeat", type=int, default=3, help="builds to time (best is reported)")
    args = ap.parse_args(argv)
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})   # the goal is on one core
    except (AttributeError, OSError):
        pass

    from klpkit import debian
    from klpkit.symbols import SymbolDB
    from klpkit.symbols.build import find_debug_vmlinux, find_modules

    release = args.release or debian.DEFAULT_RELEASE
    image, dbg = debian.ensure_image(release), debian.ensure_dbg(release)
    symvers = debian.ensure_headers(release) / "Module.symvers"
    nmods = len(find_modules(image / "lib" / "modules" / release))

    tmp = tempfile.mkdtemp(prefix="klpkit-bench-")
    dbpath = Path(args.db) if args.db else Path(tmp) / f"{release}.sqlite"
    walls, cpus, readelfs = [], [], []
    vmlinux = str(find_debug_vmlinux(Path(dbg), release)[0])
    files = [vmlinux, *find_modules(image / "lib" / "modules" / release)]
    loops = []
    for _ in range(max(1, args.repeat)):
        readelfs.append(_readelf(files))
        loops.append(_python_loop())
        wall, cpu = _timed_build(dbpath, symvers, release)
        walls.append(wall)
        cpus.append(cpu)

    stages = _in_child("stages", str(image), str(dbg), str(symvers), release)
    # without Module.symvers (`klpkit symbols build --debian`): exports read from the
    # objects' __ksymtab sections
    derived = Path(tmp) / "derived.sqlite"
    t_derived = _timed_build(derived, None, release)[0]
    derived.unlink()

    opens = []
    for _ in range(50):
        t = time.perf_counter()
        db = SymbolDB.open(dbpath)
        opens.append(time.perf_counter() - t)
        db.close()
    db = SymbolDB.open(dbpath)
    names = sorted({r[:r.index(0)].decode("utf-8", "surrogateescape") for r in db.records()})
    sample = random.Random(3).sample(names, 20000)
    db.lookup(sample[0])  # warm the object-name map
    t = time.perf_counter()
    found = sum(len(db.lookup(n)) for n in sample)
    per_lookup = (time.perf_counter() - t) / len(sample)
    cdrom = db.lookup("cdrom_check_events")
    t = time.perf_counter()
    for _ in range(10000):
        db.lookup("cdrom_check_events", "cdrom")
    per_obj_lookup = (time.perf_counter() - t) / 10000
    counts = db.counts()
    size = os.path.getsize(dbpath)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    print(f"kernel {release}: vmlinux + {nmods} modules -> {counts['objects']} objects, "
          f"{counts['symbols']} symbols, {counts['exports']} exports")
    print(f"build      : {min(walls):.2f} s wall, {min(cpus):.2f} s CPU (one process, one "
          f"core; goal <= 2 s){'' if len(walls) == 1 else f'  [best of {len(walls)}]'}")
    # This box's speed varies from run to run (shared CPUs); readelf over the same files,
    # timed between the builds, is the yardstick (issue 2 quotes 0.57 s for the modules
    # alone on a quiet box).
    print(f"  yardstick: readelf -sW over the same {len(files)} files {min(readelfs):.2f} s"
          f" -> build / readelf = {min(walls) / min(readelfs):.2f}")
    # and so does CPython's own speed here (a shared host): a fixed pure-Python loop,
    # timed between the builds, tells a slow box from a slow build
    print(f"  yardstick: a 10M-step Python loop {min(loops):.2f} s -> build / loop = "
          f"{min(walls) / min(loops):.1f}")
    print(f"  no symvers: {t_derived:.2f} s wall (exports read from the objects)")
    print("  stages   : " + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items())
          + "  (one more build, timed piece by piece)")
    print("  (each build runs in a fresh interpreter, as the command line does)")
    print(f"open       : {statistics.median(opens) * 1e3:.2f} ms median of 50 (goal <= 5 ms)")
    print(f"lookup     : {per_lookup * 1e6:.1f} us by name ({found} entries for 20000 "
          f"names), {per_obj_lookup * 1e6:.1f} us by name+object (goal ~15 us)")
    print(f"file size  : {size / 2**20:.1f} MiB")
    print(f"load avg   : {load:.2f} (timings are inflated on a busy machine)")
    assert cdrom and cdrom[0].object == "cdrom"
    db.close()
    if not args.db:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _timed_build(dbpath: Path, symvers, release: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one build in a fresh interpreter, as the CLI runs it (a
    build in a process that already made and freed a kernel's worth of objects runs
    on a fragmented heap and is slower)."""
    if dbpath.exists():
        dbpath.unlink()
    return tuple(_in_child("build", release, str(dbpath), str(symvers) if symvers else ""))


def _in_child(*argv: str):
    """Run this script's ``--child`` mode (pinned to this process's core) and return
    the JSON it prints."""
    import json
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--child", *argv], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def _child(argv: list[str]) -> None:
    import json

    from klpkit import debian
    from klpkit.symbols import build_from_debian

    if argv[0] == "build":
        release, dbpath, symvers = argv[1], argv[2], argv[3] or None
        image, dbg = debian.ensure_image(release), debian.ensure_dbg(release)
        w, c = time.perf_counter(), time.process_time()
        build_from_debian(image, dbg, symvers, db=dbpath, progress=False).close()
        print(json.dumps([time.perf_counter() - w, time.process_time() - c]))
    else:
        image, dbg, symvers, release = argv[1:5]
        print(json.dumps(_stages(Path(image), Path(dbg), Path(symvers), release)))


def _python_loop() -> float:
    """Seconds for a fixed CPU-bound pure-Python loop: how fast this box runs CPython now."""
    t = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - t


def _readelf(files: list[str]) -> float:
    """Seconds for ``readelf -sW`` over ``files`` (batched, output discarded)."""
    import shutil
    import subprocess

    if not shutil.which("readelf"):
        return float("nan")
    t = time.perf_counter()
    for i in range(0, len(files), 1000):
        subprocess.run(["readelf", "-sW", *files[i:i + 1000]], stdout=subprocess.DEVNULL,
                       check=True)
    return time.perf_counter() - t


def _stages(image, dbg, symvers, release) -> dict[str, float]:
    """Where a build's time goes: the builder's own steps, timed one by one."""
    import gc
    import sqlite3

    from klpkit.symbols import build as B

    marks = [("start", time.perf_counter())]
    gc.disable()
    try:
        vm, _sm = B.find_debug_vmlinux(Path(dbg), release)
        rec, build_id, _rel, _exports = B.read_vmlinux(vm, derive_exports=False)
        marks.append(("vmlinux", time.perf_counter()))
        symset = B.SymbolSet(release, "debian", build_id, [str(vm)], [rec])
        moddir = image / "lib" / "modules" / release
        B.scan_modules(B.find_modules(moddir), symset, release=release, skip_bad=False,
                       derive_exports=False, progress=False)
        B.apply_modules_dep(symset, moddir)
        symset.symvers = B.read_symvers(symvers)
        marks.append(("modules", time.perf_counter()))
        records = symset.sorted_records()
        marks.append(("sort", time.perf_counter()))
        pages = B.make_pages(records)
        marks.append(("pages", time.perf_counter()))
        conn = sqlite3.connect(":memory:")
        conn.executescript(B.SCHEMA_SQL)
        conn.executemany("INSERT INTO symbol_pages VALUES (?,?)", pages)
        conn.close()
        marks.append(("sqlite", time.perf_counter()))
    finally:
        gc.enable()
    return {name: t - marks[i][1] for i, (name, t) in enumerate(marks[1:])}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2:])
        sys.exit(0)
    sys.exit(main())

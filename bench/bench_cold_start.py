"""The first result on a cold cache: the symbol database of a release from the image
package alone (what `klpkit symbols build --debian` and the demo do) next to the old
route through the 855 MB -dbg package, and what each downloads.

    python bench/bench_cold_start.py [--release 6.1.0-47-amd64] [--skip-dbg]

Each route runs in a fresh interpreter against an empty scratch cache (KLPKIT_CACHE),
so the wall time includes apt-get download and unpacking; the real cache is untouched.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DBG_ROUTE = """
import sys
from klpkit import debian
from klpkit.symbols import build_from_debian
rel, out = sys.argv[1], sys.argv[2]
image, dbg = debian.ensure_image(rel), debian.ensure_dbg(rel)
build_from_debian(image, dbg, debian.headers_symvers(rel), db=out, progress=False,
                  release=rel).close()
"""


def fetched(cache: Path) -> tuple[int, list[str]]:
    debs = sorted((cache / "debs").glob("*.deb"))
    return sum(p.stat().st_size for p in debs), [p.name for p in debs]


def run(label: str, argv: list[str], cache: Path) -> None:
    env = {**os.environ, "KLPKIT_CACHE": str(cache)}
    env.pop("KLPKIT_SYMBOLS_DB", None)
    start = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.monotonic() - start
    if r.returncode:
        sys.exit(f"{label} failed: {r.stderr.strip()[-500:]}")
    size, names = fetched(cache)
    print(f"{label:28} wall {wall:7.1f} s   downloaded {size / 1e6:7.1f} MB: {', '.join(names)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--release", default="6.1.0-47-amd64")
    ap.add_argument("--skip-dbg", action="store_true", help="only the image route")
    args = ap.parse_args()
    print(f"cold symbol database of {args.release} ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        image_cache, dbg_cache = Path(tmp) / "image", Path(tmp) / "dbg"
        run(
            "image alone (klpkit default)",
            [
                sys.executable,
                "-m",
                "klpkit.cli",
                "symbols",
                "build",
                "--debian",
                args.release,
                "--db",
                str(Path(tmp) / "image.sqlite"),
            ],
            image_cache,
        )
        if not args.skip_dbg:
            run(
                "image + -dbg (old route)",
                [sys.executable, "-c", DBG_ROUTE, args.release, str(Path(tmp) / "dbg.sqlite")],
                dbg_cache,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

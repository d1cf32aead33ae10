"""Compare lookup() answers of two symbol databases for a sample of names.

    python bench/compare_lookup.py A.sqlite B.sqlite [--sample 5000] [--seed 3]

Used to check that a faster build writes a database that answers exactly like one
written by the previous code (issue 3). Exit status 1 on any difference.
"""

import argparse
import random
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--sample", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args(argv)

    from klpkit.symbols import SymbolDB

    a, b = SymbolDB.open(args.a), SymbolDB.open(args.b)
    names = sorted({n for rows in a.all_symbols().values() for n, _f in rows})
    sample = random.Random(args.seed).sample(names, min(args.sample, len(names)))
    objs = a.objects()
    diffs = 0
    for i, name in enumerate(sample):
        for kw in ({}, {"include_init": True}):
            if a.lookup(name, **kw) != b.lookup(name, **kw):
                diffs += 1
                print(f"differs: {name} {kw}")
        obj = objs[i % len(objs)]
        if a.lookup(name, obj) != b.lookup(name, obj):
            diffs += 1
            print(f"differs: {name} in {obj}")
    same_meta = a.counts() == b.counts() and a.objects() == b.objects()
    print(
        f"{len(sample)} names compared: {diffs} differences; counts/objects "
        f"{'equal' if same_meta else 'DIFFER'}"
    )
    return 0 if diffs == 0 and same_meta else 1


if __name__ == "__main__":
    sys.exit(main())

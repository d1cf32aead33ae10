"""``klpkit symbols {build,lookup,info,add,export-list}``: the kernel symbol database."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from klpkit.errors import InputError
from klpkit.fileio import refuse_output_over_input
from klpkit.output import print_json, print_table, progress


def register(sub) -> None:
    p = sub.add_parser(
        "symbols",
        help="build and query a kernel's symbol database",
        description="Every symbol of a target kernel (vmlinux and modules) with "
        "binding, type, export and the sympos the livepatch core "
        "counts. One SQLite file per kernel release, cached under "
        "~/.cache/klpkit/symbols/ unless --db or KLPKIT_SYMBOLS_DB "
        "say otherwise.",
    )
    ssub = p.add_subparsers(dest="symbols_command", metavar="SUBCOMMAND")
    ssub.required = True

    def common(q):
        q.add_argument(
            "--db",
            metavar="PATH",
            help="database file (default: $KLPKIT_SYMBOLS_DB, else the cache file of --release)",
        )
        q.add_argument(
            "--release",
            metavar="R",
            help="kernel release (selects the cache file; refuses a database of another release)",
        )

    b = ssub.add_parser("build", help="build the database from a kernel's files")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--tree", metavar="DIR", help="kernel build tree (vmlinux, *.ko, Module.symvers)"
    )
    src.add_argument(
        "--debian-image",
        metavar="DIR",
        help="unpacked linux-image package or "
        "installed root (boot/vmlinuz-<release>, lib/modules/<release>/); "
        "a kernel image file is read as with --vmlinuz",
    )
    src.add_argument(
        "--debian",
        metavar="RELEASE",
        help="a Debian kernel release (e.g. "
        "6.1.0-47-amd64): fetch its image package with apt-get download "
        "(cached) and build from it: vmlinux's symbols from the kallsyms "
        "tables in boot/vmlinuz, exports from the installed headers' "
        "Module.symvers (else from the image and modules)",
    )
    src.add_argument(
        "--vmlinuz",
        metavar="FILE",
        help="a kernel image (bzImage, e.g. "
        "/boot/vmlinuz-$(uname -r)) or stripped vmlinux: vmlinux's symbols "
        "from its kallsyms tables; with --modules-dir, its modules too",
    )
    src.add_argument("--kallsyms", metavar="FILE", help="a saved /proc/kallsyms")
    src.add_argument("--symbols-list", metavar="FILE", help="klp-convert's Symbols.list")
    b.add_argument(
        "--dbg",
        metavar="DIR",
        help="with --debian-image or --debian: read "
        "vmlinux from this unpacked -dbg package (vmlinux, real System.map) "
        "instead of the image (the same database)",
    )
    b.add_argument("--modules", metavar="FILE", help="with --kallsyms: a saved /proc/modules")
    b.add_argument(
        "--modules-dir",
        metavar="DIR",
        help="with --vmlinuz: the kernel's modules (lib/modules/<release>)",
    )
    b.add_argument("--symvers", metavar="FILE", help="Module.symvers for exports and CRCs")
    b.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out unreadable modules (reported) instead of failing",
    )
    b.add_argument("--json", action="store_true", help="machine-readable summary")
    common(b)
    b.set_defaults(func=run_build)

    lk = ssub.add_parser("lookup", help="where a symbol lives, with sympos")
    lk.add_argument("name")
    lk.add_argument("--object", metavar="OBJ", help="only this object (vmlinux or module name)")
    lk.add_argument(
        "--init", action="store_true", help="also show symbols only in a module's init-time table"
    )
    lk.add_argument("--json", action="store_true", help="machine-readable output")
    common(lk)
    lk.set_defaults(func=run_lookup)

    inf = ssub.add_parser("info", help="what the database holds and where it came from")
    inf.add_argument("--json", action="store_true", help="machine-readable output")
    inf.add_argument(
        "--verify",
        action="store_true",
        help="read and check every page, export and count, and SQLite's integrity",
    )
    common(inf)
    inf.set_defaults(func=run_info)

    add = ssub.add_parser(
        "add", help="add out-of-tree modules (targets you patch) to the database of their kernel"
    )
    add.add_argument("modules", nargs="+", metavar="MODULE.ko")
    add.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="write a new database there instead of changing this one",
    )
    add.add_argument("--json", action="store_true", help="machine-readable summary")
    common(add)
    add.set_defaults(func=run_add)

    ex = ssub.add_parser("export-list", help="write a klp-convert Symbols.list")
    ex.add_argument("out", metavar="OUT")
    common(ex)
    ex.set_defaults(func=run_export)


def _open(args):
    from klpkit.symbols import SymbolDB, default_db_path

    release = args.release
    if not (args.db or os.environ.get("KLPKIT_SYMBOLS_DB") or release):
        release = _guess_release()
    return SymbolDB.open(default_db_path(release, args.db), release=args.release)


def _guess_release() -> str:
    """The only cached database, else the running kernel's release."""
    from klpkit.symbols import cache_dir

    cached = sorted(cache_dir().glob("*.sqlite"))
    if len(cached) == 1:
        return cached[0].stem
    if len(cached) > 1:
        names = ", ".join(p.stem for p in cached)
        raise InputError(
            f"several cached symbol databases ({names}); pick one with --release or --db"
        )
    return os.uname().release


def run_build(args) -> int:
    from klpkit import symbols as S

    bar = progress if not args.json else None
    start = time.perf_counter()
    image_file = bool(args.vmlinuz or args.debian_image and os.path.isfile(args.debian_image))
    if args.modules_dir and not image_file:
        raise InputError("--modules-dir goes with --vmlinuz (a kernel image file)")
    if args.db:
        inputs = ("vmlinuz", "debian_image", "kallsyms", "modules", "symbols_list", "symvers")
        refuse_output_over_input(
            args.db, {"--" + k.replace("_", "-"): getattr(args, k) for k in inputs}
        )
    if args.tree:
        db = S.build_from_tree(
            args.tree,
            symvers=args.symvers,
            release=args.release,
            db=args.db,
            skip_bad=args.skip_bad,
            progress=bar,
        )
    elif args.debian:
        from klpkit import debian

        # the image package alone: no -dbg download (klpkit.symbols.vmlinuz)
        image = debian.ensure_image(args.debian)
        symvers = args.symvers or debian.headers_symvers(args.debian)
        start = time.perf_counter()  # the build, not the first download
        db = S.build_from_debian(
            image,
            args.dbg,
            symvers,
            db=args.db,
            skip_bad=args.skip_bad,
            progress=bar,
            release=args.release or args.debian,
        )
    elif args.debian_image and not image_file:
        db = S.build_from_debian(
            args.debian_image,
            args.dbg,
            args.symvers,
            db=args.db,
            skip_bad=args.skip_bad,
            progress=bar,
            release=args.release,
        )
    elif image_file:
        if args.dbg:
            raise InputError(
                "--dbg goes with --debian or an image directory, not with a kernel image file"
            )
        db = S.build_from_vmlinuz(
            args.vmlinuz or args.debian_image,
            modules_dir=args.modules_dir,
            symvers=args.symvers,
            release=args.release,
            db=args.db,
            skip_bad=args.skip_bad,
            progress=bar,
        )
    elif args.kallsyms:
        if not args.release and os.path.realpath(args.kallsyms) != "/proc/kallsyms":
            raise InputError(
                "--kallsyms FILE needs --release R (a saved copy does not say "
                "which kernel it is from)"
            )
        db = S.build_from_kallsyms_file(
            args.kallsyms, args.modules, release=args.release, db=args.db, symvers=args.symvers
        )
    else:
        db = S.import_symbols_list(
            args.symbols_list, release=args.release, db=args.db, symvers=args.symvers
        )
    seconds = time.perf_counter() - start
    for path, reason in db.skipped:
        print(f"klpkit: warning: skipped {path}: {reason}", file=sys.stderr)
    summary = _info(db) | {"build_seconds": round(seconds, 3)}
    if args.json:
        print_json(summary)
    else:
        c = summary["counts"]
        print(
            f"{db.path}: kernel {db.release}, {c['objects']} objects, {c['symbols']} "
            f"symbols, {c['exports']} exports"
            + (f", {c['skipped']} modules skipped" if c.get("skipped") else "")
            + f" (built in {seconds:.1f} s)"
        )
    return 0


def run_lookup(args) -> int:
    db = _open(args)
    entries = db.lookup(args.name, args.object, include_init=args.init)
    if args.json:
        print_json([e.as_dict() | {"klp_sympos": e.klp_sympos} for e in entries])
        return 0 if entries else 1
    if not entries:
        where = f" in {args.object}" if args.object else ""
        print(f"{args.name}: not found{where} (kernel {db.release})", file=sys.stderr)
        return 1
    rows = []
    for e in entries:
        exp = (
            (e.export_type or "yes") + (f" ns={e.namespace}" if e.namespace else "")
            if e.exported
            else "no"
        )
        note = ""
        if not e.core:
            note = "init-only"
        elif (e.load_sympos, e.load_count) != (e.sympos, e.count):
            note = f"while loading: {e.load_sympos}/{e.load_count}"
        rows.append((e.object, e.bind, e.type, exp, f"{e.sympos}/{e.count}", e.klp_sympos, note))
    print_table(
        ["Object", "Bind", "Type", "Exported", "Sympos", "klp", "Note"],
        rows,
        title=f"{args.name} (kernel {db.release})",
    )
    return 0


def _info(db) -> dict:
    from klpkit.elf.reloc_types import machine_name

    return {
        "path": str(db.path),
        "release": db.release,
        "build_id": db.build_id,
        "machine": machine_name(db.machine) if db.machine else None,
        "source": db.meta.get("source"),
        "sources": db.sources,
        "symvers": db.meta.get("symvers") or None,
        "klpkit": db.meta.get("klpkit"),
        "counts": db.counts(),
        "size": Path(db.path).stat().st_size,
        "skipped": [{"path": p, "reason": r} for p, r in db.skipped],
    }


def run_info(args) -> int:
    db = _open(args)
    db.objects()  # (reads and checks the objects table)
    info = _info(db)
    if args.verify:
        info["verified"] = db.verify()
    if args.json:
        print_json(info)
        return 0
    c = info["counts"]
    print_table(
        ["Key", "Value"],
        [
            ("database", info["path"]),
            ("release", info["release"]),
            ("architecture", info["machine"] or "-"),
            ("build id", info["build_id"] or "-"),
            ("built from", info["source"]),
            ("sources", ", ".join(info["sources"])),
            ("symvers", info["symvers"] or "-"),
            ("objects", c.get("objects")),
            ("symbols", c.get("symbols")),
            ("exports", c.get("exports")),
            ("skipped modules", c.get("skipped", 0)),
            ("size", f"{info['size'] / 2**20:.1f} MiB"),
            *(
                [("verified", "{pages} pages, {symbols} symbols, {exports} exports".format(**v))]
                if (v := info.get("verified"))
                else []
            ),
        ],
        title="Symbol database",
    )
    return 0


def run_add(args) -> int:
    from klpkit.symbols import add_modules

    if args.output:
        refuse_output_over_input(args.output, {f"module {m}": m for m in args.modules})
    db = add_modules(_open(args), args.modules, dest=args.output)
    summary = _info(db)
    if args.json:
        print_json(summary)
    else:
        print(
            f"{db.path}: kernel {db.release}, added {', '.join(args.modules)}; "
            f"{summary['counts']['objects']} objects"
        )
    return 0


def run_export(args) -> int:
    from klpkit.symbols import export_symbols_list

    db = _open(args)
    refuse_output_over_input(args.out, {"symbol database": db.path})
    n = export_symbols_list(db, args.out)
    print(f"{args.out}: {n} symbols of kernel {db.release}")
    return 0

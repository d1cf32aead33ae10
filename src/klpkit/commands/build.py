"""``klpkit build PATCH... --release REL -o livepatch-NAME.ko``: a source patch in, a
checked livepatch module out, without building the kernel.

Exit status: 0 written (and, with --verify, proven in qemu); 1 the patch cannot become
a livepatch (every reason printed, nothing written) or the verification failed; 2 bad
input (a patch that does not apply, a missing file...).
"""

from __future__ import annotations

import sys
from pathlib import Path

from klpkit.build.pipeline import Builder, BuildOptions, BuildRefused
from klpkit.debian import DEFAULT_RELEASE
from klpkit.output import print_json, print_table, show_progress


def register(sub) -> None:
    p = sub.add_parser(
        "build",
        help="build a livepatch module from a source patch (compiles only the touched objects)",
        description="Compile the objects a patch touches, original and patched, with the "
        "distro kernel's exact flags; diff them function by function; extract "
        "the changed functions into a livepatch module with generated klp_patch "
        "scaffolding; convert its references into livepatch relocations; check "
        "it against the kernel's rules.",
    )
    p.add_argument(
        "patches",
        nargs="+",
        metavar="PATCH",
        help="unified diff(s) against the release's source (-p1, as git format-patch writes them)",
    )
    p.add_argument(
        "--release",
        default=DEFAULT_RELEASE,
        metavar="REL",
        help=f"the Debian kernel release to patch (default {DEFAULT_RELEASE})",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="livepatch-NAME.ko",
        help="the livepatch module to write (atomically, only when it checks)",
    )
    p.add_argument("--name", help="module name livepatch-NAME (default: from -o)")
    p.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="FILE.c",
        help="also rebuild this tree-relative .c file (for patches to headers)",
    )
    p.add_argument(
        "--symbols",
        metavar="DB",
        help="symbol database (default: the cached database of the release, built on first use)",
    )
    p.add_argument(
        "--allow-compiler-mismatch",
        action="store_true",
        help="build even if the host's compiler is not the one that built the "
        "kernel (the result may not match the running code)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="boot the release under qemu and load the livepatch with its target "
        "modules in both orders",
    )
    p.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the scratch directory (objects, scaffolding) and print it",
    )
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=run)


def _progress(msg: str) -> None:
    sys.stderr.write(f"klpkit build: {msg}\n")
    sys.stderr.flush()


def _print_report(rep, out=sys.stdout) -> None:
    for obj in rep.objects:
        out.write(
            f"{obj.source} -> {obj.kernel_object}: {len(obj.diff.replaced)} replaced, "
            f"{obj.diff.unchanged} unchanged function(s)\n"
        )
        if obj.diff.functions:
            print_table(
                ["Function", "Status", "Size", "Why"],
                [
                    (
                        f.name,
                        f.status,
                        f"{f.orig_size}->{f.size}" if f.orig_size else f.size,
                        "; ".join(f.reasons),
                    )
                    for f in obj.diff.functions
                ],
                stream=out,
            )
        x = obj.extracted
        if x is not None:
            klp = sorted(n for n in x.externals if n.startswith(".klp.sym.rela."))
            if klp:
                out.write(
                    "  left in the kernel (livepatch relocations): "
                    + ", ".join(n.split(".", 5)[-1] for n in klp)
                    + "\n"
                )
            if x.special_entries:
                out.write(
                    "  special section entries: "
                    + ", ".join(f"{k} {v}" for k, v in sorted(x.special_entries.items()))
                    + "\n"
                )
    for path in rep.ignored_files:
        out.write(f"ignored (not kernel code): {path}\n")
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in rep.stages.items())
    out.write(f"stages: {stages}; total {sum(rep.stages.values()):.1f}s\n")


def run(args) -> int:
    options = BuildOptions(
        patches=args.patches,
        release=args.release,
        output=args.output,
        name=args.name,
        sources=args.source,
        allow_compiler_mismatch=args.allow_compiler_mismatch,
        keep_workdir=args.keep_workdir,
        symbols=args.symbols,
    )
    progress = _progress if show_progress() and not args.json else None
    builder = Builder(options, progress)
    try:
        rep = builder.run()
    except BuildRefused as e:
        rep = e.report or builder.report
        if args.json:
            doc = rep.to_json()
            doc["error"] = str(e)
            doc["refusals"] = e.reasons or [str(e)]
            print_json(doc)
        elif rep.objects:
            _print_report(rep)
        for reason in e.reasons or [str(e)]:
            print(f"klpkit: error: {reason}", file=sys.stderr)
        print("klpkit: nothing written", file=sys.stderr)
        return 1
    verification = None
    if args.verify:
        from klpkit.build.verify import verify
        from klpkit.symbols import SymbolDB
        from klpkit.symbols.build import default_db_path

        if progress:
            progress("verifying in qemu")
        targets = sorted(
            {
                o.kernel_object
                for o in rep.objects
                if o.kernel_object != "vmlinux" and o.diff.replaced
            }
        )
        with SymbolDB.open(default_db_path(args.release, args.symbols)) as db:
            verification = verify(Path(str(rep.output)), rep.module, targets, db, args.release)
    if args.json:
        doc = rep.to_json()
        doc["verify"] = verification.to_json() if verification else None
        print_json(doc)
    else:
        _print_report(rep)
        conv = rep.conversion or {}
        print(
            f"wrote {rep.output}: livepatch {rep.module}, "
            f"{len(conv.get('klp_sections', []))} livepatch relocation section(s)"
            + (
                f", depends removed: {', '.join(conv['dropped_depends'])}"
                if conv.get("dropped_depends")
                else ""
            )
            + "; klpkit check: loads and resolves"
        )
        if rep.workdir:
            print(f"workdir kept: {rep.workdir}")
        if verification:
            print(
                f"verify: {'ok' if verification.ok else 'FAILED'} "
                f"({', '.join(f'{k}: {v}' for k, v in verification.orders.items())}; "
                f"boot {verification.boot_seconds} s)"
            )
            if not verification.ok:
                print(f"  {verification.failure}")
                for ln in verification.kernel_lines[-10:]:
                    print(f"  {ln}")
    return 1 if verification is not None and not verification.ok else 0

"""``klpkit deps MODULE.ko... --symbols DB``: classify every dependency of a livepatch
module or of a per-object livepatch set (A-D), find pins and load recursions, draw the
graph.  Exit 0: no error verdict; 1: an error verdict (a build gate); 2: bad input."""

import argparse
import contextlib
import sys
from collections.abc import Iterable
from pathlib import Path

from klpkit.deps import (
    CAT_A,
    CAT_KLP_OK,
    ERROR,
    NEEDS,
    OK,
    ModuleInfo,
    Report,
    analyze,
    write_graph,
)
from klpkit.errors import InputError
from klpkit.fileio import refuse_output_over_input
from klpkit.kernel.modinfo import module_name
from klpkit.output import print_json, print_table


def register(sub) -> None:
    p = sub.add_parser(
        "deps",
        help="classify the dependencies of livepatch modules (A-D), pins and cycles",
        description="Every external reference of each module (undefined symbols and "
        "livepatch relocations) with its category (A, B, C, D, other-module, "
        "non-exported-unconverted, unresolved, klp-ok, klp-wrong-object), "
        "relocation sites and verdict; the module dependency graph the loader "
        "and depmod would build, pins of patched modules, and load recursions "
        "of per-object livepatch sets.  A livepatch module patching one module "
        "is per-object (its module's load loads it, so a B reference is also a "
        "recursion) when the set is a split livepatch (several livepatch "
        "modules each patching a different object) or with --per-object; a "
        "lone livepatch, or livepatches stacked on one object (a fix and a fix "
        "on top), are normal ones (a B reference pins, no recursion).  The "
        "verdicts on livepatch relocations are klpkit check's.  "
        "Exit 1 when any verdict is 'error'.",
    )
    p.add_argument("modules", nargs="+", metavar="MODULE.ko", help="livepatch module(s)")
    p.add_argument(
        "--symbols",
        metavar="DB",
        required=True,
        help="symbol database (klpkit SQLite, or a klp-convert Symbols.list)",
    )
    p.add_argument(
        "--object",
        action="append",
        default=[],
        metavar="MOD=OBJ[,OBJ]",
        help="the objects module MOD patches (default: its own, read from its "
        "klp_patch, or its annotations); naming one the module does not "
        "patch is an error verdict unless --force",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="analyse with --object even where it contradicts a module's own "
        "objects (a warning instead of an error)",
    )
    p.add_argument(
        "--per-object",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the livepatch modules patching one module are per-object (split "
        "livepatch: loading the patched module loads them); default: yes "
        "when several livepatch modules given each patch a different "
        "object, no for a lone livepatch or stacked ones.  The JSON says which (per_object, "
        "per_object_reason)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument(
        "--graph",
        metavar="FILE",
        help="write the graph: FILE.dot/.gv (Graphviz DOT), or FILE.png/.svg/.pdf "
        "(DOT beside it, rendered when Graphviz 'dot' is installed)",
    )
    p.add_argument(
        "--all", action="store_true", help="also list the references whose verdict is ok"
    )
    p.set_defaults(func=run)


def parse_object_map(items: Iterable[str]) -> dict[str, list[str]]:
    """``--object MOD=OBJ[,OBJ]`` strings -> {MOD: [OBJ...]} (MOD: module name or file
    name, as the kernel names the module)."""
    out: dict[str, list[str]] = {}
    for item in items:
        mod, sep, objs = item.partition("=")
        names = [o.strip() for o in objs.split(",") if o.strip()]
        if not sep or not mod.strip() or not names:
            raise InputError(f"--object {item!r}: expected MOD=OBJ[,OBJ]")
        key = module_name(mod.strip())
        out.setdefault(key, [])
        out[key].extend(n for n in names if n not in out[key])
    return out


def _refuse_graph_over_inputs(args: argparse.Namespace) -> None:
    """``--graph`` writes the graph and, for a picture, the DOT file beside it: neither
    may be one of the modules or the database (compared by identity, before any work)."""
    inputs: dict[str, str | None] = {f"module {m}": m for m in args.modules}
    inputs["--symbols"] = args.symbols
    graph = Path(args.graph)
    for out in {graph, graph.with_suffix(".dot")}:
        refuse_output_over_input(out, inputs)


def run(args: argparse.Namespace) -> int:
    from klpkit.symbols.source import open_symbols

    objects = parse_object_map(args.object)
    if args.graph:
        _refuse_graph_over_inputs(args)
    with contextlib.ExitStack() as stack:
        db = open_symbols(args.symbols, args.modules[0], stack)
        report = analyze(args.modules, db, objects, per_object=args.per_object, force=args.force)
    if args.graph:
        dot_path, picture, warning = write_graph(report, args.graph)
        if warning:
            print(f"klpkit: warning: {warning}", file=sys.stderr)
    if args.json:
        print_json(report.to_json())
    else:
        _print(report, args.all)
        if args.graph:
            print(f"graph: {dot_path}" + (f", {picture}" if picture else ""))
    return 1 if report.verdict == ERROR else 0


def _print(report: Report, show_all: bool) -> None:
    for m in report.modules:
        _print_module(m, show_all)
    needs = [e for e in report.edges if e.kind == NEEDS]
    if needs:
        print_table(
            ["From", "To", "Category", "Via", "Verdict", "Symbols"],
            [
                (e.src, e.dst, e.category or "", "+".join(e.via), e.verdict, ", ".join(e.symbols))
                for e in needs
            ],
            title="Module dependencies",
        )
        print()
    for p in report.pins:
        print(f"pin: {p['livepatch']} pins {p['module']} ({', '.join(p['symbols']) or 'depends='})")
    for c in report.cycles:
        print(f"cycle: {' -> '.join(c['path'])}: {c['reason']}")
    counts = report.counts()
    print(f"verdict: {report.verdict} ({counts['error']} error(s), {counts['warn']} warning(s))")


def _print_module(m: ModuleInfo, show_all: bool) -> None:
    objs = ", ".join(m.objects) or "none"
    kind = "livepatch" if m.livepatch else "module"
    print(
        f"{m.name} ({kind}, patches {objs} [{m.objects_source}]"
        + (", per-object" if m.per_object else "")
        + (f", exports {', '.join(m.exports)}" if m.exports else "")
        + (f", depends={','.join(m.depends)}" if m.depends else "")
        + f"): {m.verdict}"
    )
    if m.livepatch:
        print(f"  per-object: {'yes' if m.per_object else 'no'} ({m.per_object_reason})")
    for note in m.notes:
        print(f"  note: {note}")
    refs = [
        r
        for r in m.references
        if show_all or r.verdict != OK or r.category not in (CAT_A, CAT_KLP_OK)
    ]
    if refs:
        print_table(
            ["Category", "Object", "Symbol", "Sites", "Verdict", "Reason"],
            [
                (r.category, r.object or "", r.symbol, _sites(r.sites), r.verdict, r.reason)
                for r in refs
            ],
        )
    hidden = len(m.references) - len(refs)
    if hidden:
        print(f"  ({hidden} ok reference(s) of category A / klp-ok not shown; --all)")
    fixes: dict[str, list[str]] = {}
    for r in refs:
        if r.fix and r.verdict != OK and r.category not in fixes.setdefault(r.fix, []):
            fixes[r.fix].append(r.category)
    for fix, cats in fixes.items():
        print(f"  fix ({', '.join(cats)}): {fix}")
    print()


def _sites(sites: list[str]) -> str:
    if len(sites) <= 2:
        return ", ".join(sites)
    return f"{sites[0]}, ... ({len(sites)})"

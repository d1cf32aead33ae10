"""``klpkit convert IN.ko -o OUT.ko --symbols DB``: klp-convert with klpkit's policy.

Prints the plan (every relocation that changes, every kept dependency on a module,
every error), then writes OUT.ko atomically.  Exit status: 0 converted (or planned,
with --dry-run), 1 the plan has errors (nothing written), 2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import IO

from klpkit.convert import (
    ApplyResult,
    Choice,
    Plan,
    PlanOptions,
    convert_file,
    parse_map_entry,
    parse_map_text,
)
from klpkit.convert.symbol_stream import open_for_module
from klpkit.elf import ElfFile
from klpkit.errors import InputError
from klpkit.fileio import read_regular, refuse_output_over_input
from klpkit.output import print_json, print_table

#: A map file holds a few lines per symbol the livepatch names: far below this.
MAP_FILE_MAX = 16 << 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="turn a livepatch module's foreign references into livepatch "
        "relocations (klp-convert)",
        description="Rewrite the references of a livepatch module that the module loader "
        "must not resolve into .klp.rela.<obj>.<sec> relocations with "
        ".klp.sym.<obj>.<sym>,<pos> symbols, following the A/B/local/C-D policy; "
        "drop __versions entries and depends= of the patched modules.",
    )
    p.add_argument("input", metavar="IN.ko", help="the livepatch module, as built")
    p.add_argument("-o", "--output", metavar="OUT.ko", help="converted module (atomic write)")
    p.add_argument(
        "--symbols",
        metavar="DB",
        help="symbol database (klpkit SQLite, or a klp-convert Symbols.list); "
        "default: $KLPKIT_SYMBOLS_DB or the cached database of the "
        "module's kernel release",
    )
    p.add_argument(
        "--object",
        action="append",
        default=[],
        metavar="OBJ",
        help="an object the livepatch patches (default: its own, read from its "
        "klp_patch, or its annotations); naming one the module does not "
        "patch is an error (nothing written) unless --force",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="convert with --object even where it contradicts the module's "
        "own objects (the kernel never applies sections gated on an "
        "object the livepatch does not patch)",
    )
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="NAME=OBJ[,POS]",
        help="resolve NAME to the POS-th symbol of that name in OBJ",
    )
    p.add_argument("--map-file", metavar="FILE", help="NAME=OBJ[,POS] lines (# comments)")
    p.add_argument(
        "--keep-exports",
        action="store_true",
        help="keep exports of patched modules as normal references (case B)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    p.add_argument("--json", action="store_true", help="machine-readable plan")
    p.add_argument(
        "--all", action="store_true", help="list every relocation, including unchanged ones"
    )
    p.set_defaults(func=run)


def choices_from_args(maps: list[str], map_file: str | None) -> list[Choice]:
    """The ``--map`` entries and the ``--map-file`` lines (a regular file of at most
    :data:`MAP_FILE_MAX` bytes) as choices; every malformed one in one error."""
    choices: list[Choice] = []
    errors: list[str] = []
    for text in maps:
        got = parse_map_entry(text, "--map")
        if isinstance(got, str):
            errors.append(got)
        else:
            choices.append(got)
    if map_file:
        data = read_regular(map_file, MAP_FILE_MAX, "map file")
        c, e = parse_map_text(data.decode("utf-8", "surrogateescape"), map_file)
        choices.extend(c)
        errors.extend(e)
    if errors:
        raise InputError(errors[0] if len(errors) == 1 else "; ".join(errors))
    return choices


def _print_plan(plan: Plan, show_all: bool, out: IO[str] | None = None) -> None:
    out = out or sys.stdout
    objs = ", ".join(plan.objects) or "nothing found"
    out.write(
        f"{plan.module}: livepatch for {objs} (from {plan.objects_source}), "
        f"kernel {plan.kernel_version[0]}.{plan.kernel_version[1]}\n"
    )
    rows = plan.relocations if show_all else plan.reported()
    if rows:
        print_table(
            ["Site", "Old symbol", "New symbol", "Section", "Cat", "Why"],
            [
                (r.site, r.symbol, r.new_symbol or "", r.new_section or "", r.category, r.reason)
                for r in rows
            ],
            stream=out,
        )
    counts = plan.counts()
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    out.write(f"{len(plan.relocations)} relocations: {summary}\n")


def run(args: argparse.Namespace) -> int:
    if not args.dry_run and not args.output:
        raise InputError("-o OUT.ko is required (or --dry-run)")
    inputs = {"module": args.input, "--symbols": args.symbols, "--map-file": args.map_file}
    if not args.dry_run:
        refuse_output_over_input(args.output, inputs)
    choices = choices_from_args(args.map, args.map_file)
    options = PlanOptions(
        objects=args.object, choices=choices, keep_exports=args.keep_exports, force=args.force
    )
    with contextlib.ExitStack() as stack:
        elf = ElfFile.read(args.input)  # before the database: its errors name the module
        db = open_for_module(args.symbols, elf, stack)
        plan, result, elf = convert_file(
            args.input, args.output, db, options, dry_run=args.dry_run, elf=elf, inputs=inputs
        )
    if args.json:
        print_json(_json(plan, result, elf, args.output))
    else:
        _print_plan(plan, args.all)
    for w in plan.warnings:
        print(f"klpkit: warning: {w}", file=sys.stderr)
    for e in plan.errors:
        print(f"klpkit: error: {e}", file=sys.stderr)
    if not plan.ok:
        print(f"klpkit: {len(plan.errors)} error(s): nothing written", file=sys.stderr)
        return 1
    if result is not None and not args.json:
        print(_written(result, elf, args.output))
    return 0


def _json(plan: Plan, result: ApplyResult | None, elf: ElfFile, output: str | None) -> dict:
    doc = plan.to_json()
    doc.update(
        {
            "output": output if result is not None else None,
            "written": result is not None,
            "signature_dropped": bool(result is not None and elf.trailer_dropped),
        }
    )
    if result is not None:
        doc["klp_sections"] = result.klp_sections
        doc["removed_sections"] = result.removed_sections
    return doc


def _written(result: ApplyResult, elf: ElfFile, output: str) -> str:
    notes = []
    if result.dropped_versions:
        notes.append(f"__versions: dropped {', '.join(result.dropped_versions)}")
    if result.dropped_depends:
        notes.append(f"depends: removed {', '.join(result.dropped_depends)}")
    if elf.trailer_dropped:
        notes.append("module signature dropped (it signed the old contents; re-sign)")
    return (
        f"wrote {output}: {len(result.klp_sections)} livepatch relocation "
        f"section(s), {result.moved} relocation(s) converted"
        + ("; " + "; ".join(notes) if notes else "")
    )

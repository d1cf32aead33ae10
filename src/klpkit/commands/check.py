"""``klpkit check MODULE.ko --symbols DB [--kernel-version 6.1] [--json]``.

Applies, offline, the rules of the module loader and the livepatch core to a livepatch
module against the symbol database of the target kernel, and prints what would fail
and what the kernel would print.  Exit status: 0 no error (warnings and notes allowed),
1 at least one error (the kernel refuses the module, or it can never work), 2 bad input.
"""

from __future__ import annotations

import contextlib
import os

from klpkit.check import RULES, check_module, first_error
from klpkit.check.engine import exit_code
from klpkit.check.findings import Severity
from klpkit.errors import InputError
from klpkit.fileio import read_input
from klpkit.output import print_json, print_table


def register(sub) -> None:
    p = sub.add_parser(
        "check",
        help="predict whether a (livepatch) module loads and resolves on a kernel",
        description="Apply the module loader's and the livepatch core's rules to MODULE.ko "
        "against the target kernel's symbol database: ELF sanity, relocation "
        "types and targets, .klp.rela sections, .klp.sym symbols (format, "
        "sympos), remaining undefined symbols (exports, GPL, namespaces, CRCs), "
        "vermagic and the livepatch tag.  The livepatch core's rules apply only "
        "to a module that calls klp_enable_patch(); the module loader's to "
        "every module.  Exit 0: no error; 1: errors; 2: bad input.",
    )
    p.add_argument("module", metavar="MODULE.ko", help="the (converted) livepatch module")
    p.add_argument(
        "--symbols",
        metavar="DB",
        help="symbol database of the target kernel (klpkit SQLite or a "
        "Symbols.list); default: the cached database of the module's release",
    )
    p.add_argument(
        "--kernel-version",
        metavar="X.Y",
        help="kernel version whose rules apply (default: the database's release)",
    )
    loaded = p.add_mutually_exclusive_group()
    loaded.add_argument(
        "--loaded",
        nargs="+",
        default=[],
        metavar="LP.ko",
        help="the livepatches already loaded, in their load order: judge the "
        "module against the set it joins (klp_state compatibility, atomic "
        "replace, stacking)",
    )
    loaded.add_argument(
        "--loaded-from-sysfs",
        nargs="?",
        const="/",
        metavar="ROOT",
        help="judge the module against the livepatches of a running system, read from "
        "ROOT/sys/kernel/livepatch (default ROOT: /): which are enabled, in transition "
        "(a new one is refused with -EBUSY), the functions they patch; load order from "
        "ROOT/proc/modules when present.  Their states and replace flags come from "
        "their module files, found by name under --modules-dir.  Without ROOT, "
        "give MODULE.ko before the option",
    )
    p.add_argument(
        "--modules-dir",
        metavar="DIR",
        help="where --loaded-from-sysfs finds the loaded livepatches' module files "
        "(NAME.ko, .ko.xz, .ko.zst, .ko.gz; - and _ alike), searched recursively "
        "(default: /lib/modules/$(uname -r))",
    )
    p.add_argument("--json", action="store_true", help="machine-readable findings")
    p.add_argument(
        "--notes", action="store_true", help="also list notes (resolutions, dependencies)"
    )
    p.add_argument("--rules", action="store_true", help="list the rules and exit")
    p.set_defaults(func=run)


def _rules(args) -> int:
    if args.json:
        print_json([r.as_dict() for r in RULES.values()])
    else:
        print_table(
            ["Rule", "Severity", "Since", "Until", "Summary"],
            [
                (
                    r.id,
                    r.severity,
                    ".".join(map(str, r.since)) + ("?" if r.uncertain else ""),
                    ".".join(map(str, r.until)) if r.until else "",
                    r.summary,
                )
                for r in RULES.values()
            ],
        )
    return 0


def _running(args):
    """The running system's livepatches for --loaded-from-sysfs (None without it)."""
    if args.loaded_from_sysfs is None:
        if args.modules_dir is not None:
            raise InputError("--modules-dir is only used with --loaded-from-sysfs")
        return None
    from klpkit.check.loaded_rules import read_sysfs

    modules = args.modules_dir or os.path.join("/lib/modules", os.uname().release)
    return read_sysfs(args.loaded_from_sysfs, modules)


def run(args) -> int:
    if args.rules:
        return _rules(args)
    from klpkit.symbols.source import open_symbols

    for path in (args.module, *args.loaded):
        read_input(path)
    running = _running(args)
    with contextlib.ExitStack() as stack:
        db = open_symbols(args.symbols, args.module, stack)
        findings = check_module(
            args.module, db, args.kernel_version, loaded=args.loaded, running=running
        )
        release = db.release
    code = exit_code(findings)
    first = first_error(findings)
    if args.json:
        print_json(
            {
                "module": args.module,
                "release": release,
                "verdict": "refused" if code else "loads",
                "first_error": first.as_dict() if first else None,
                "findings": [f.as_dict() for f in findings],
            }
        )
        return code
    shown = [f for f in findings if args.notes or f.severity is not Severity.NOTE]
    if shown:
        print_table(
            ["Severity", "Rule", "Place", "Message", "Kernel says"],
            [
                (
                    f.severity,
                    f.rule,
                    f.place,
                    f.message,
                    (f.kernel_message or "").replace("\n", " | "),
                )
                for f in shown
            ],
        )
    counts = {s: sum(1 for f in findings if f.severity is s) for s in Severity}
    verdict = (
        f"refused: {first.rule} ({first.kernel_message.splitlines()[0]})"
        if first and first.kernel_message
        else f"refused: {first.rule}"
        if first
        else "loads and resolves"
    )
    print(
        f"{args.module} on {release}: {verdict}; {counts[Severity.ERROR]} error(s), "
        f"{counts[Severity.WARNING]} warning(s), {counts[Severity.NOTE]} note(s)"
    )
    return code

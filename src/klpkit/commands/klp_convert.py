"""``klp-convert``: drop-in for the kernel proposals' command lines.

* ``klp-convert SYMBOLS.LIST IN.ko OUT.ko`` (full klp-convert, v3-v7): classify with the
  symbol list (our format or the kernel Makefile's ``nm`` one, streamed for the names
  the module uses: it runs once per module in a Kbuild build) and klpkit's policy; the
  patched objects are the module's own (its klp_patch, empty-funcs objects included,
  or its annotations): the command line has no way to name them;
* ``klp-convert IN.ko OUT.ko`` (minimal klp-convert): convert only the
  ``.klp.sym.rela.*`` intermediate symbols and ``.klp.module_relocs`` annotations.

Diagnostics go to stderr prefixed ``klp-convert: ``; a successful run prints nothing.
Exit status: 0 done, 1 conversion errors (nothing written), 2 usage or bad input.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable

from klpkit.convert import PlanOptions, convert_file
from klpkit.elf import ElfFile
from klpkit.errors import KlpkitError

USAGE = "Usage: klp-convert <symbols.klp> <input.ko> <output.ko>"


def main(argv: Iterable[str]) -> int:
    argv = list(argv)
    if len(argv) not in (2, 3) or any(a in ("-h", "--help") for a in argv):
        print(f"klp-convert: {USAGE}", file=sys.stderr)
        return 2
    try:
        with contextlib.ExitStack() as stack:
            symbols = argv[0] if len(argv) == 3 else None
            src, dst = argv[-2:]
            elf = ElfFile.read(src)
            db = None
            if symbols is not None:
                from klpkit.convert.symbol_stream import open_for_module

                db = open_for_module(symbols, elf, stack)
            plan, _result, _elf = convert_file(
                src, dst, db, PlanOptions(), elf=elf, inputs={"symbol list": symbols}
            )
    except KlpkitError as e:
        print(f"klp-convert: {e}", file=sys.stderr)
        return 2
    for warning in plan.warnings:
        print(f"klp-convert: warning: {warning}", file=sys.stderr)
    for error in plan.errors:
        print(f"klp-convert: {error}", file=sys.stderr)
    return 0 if plan.ok else 1

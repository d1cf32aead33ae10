"""klp-convert for klpkit: turn a livepatch module's foreign references into
livepatch relocations (``.klp.rela.<obj>.<sec>`` / ``.klp.sym.<obj>.<sym>,<pos>``).

* :mod:`klpkit.convert.plan` decides (pure): :func:`make_plan`, :class:`Classifier`;
* :mod:`klpkit.convert.apply` edits the ELF model: :func:`apply_plan`;
* :mod:`klpkit.convert.annotations` / :mod:`klpkit.convert.objects` read the source
  annotations and the module's ``klp_object`` names.

:func:`convert_file` strings them together for the commands.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from klpkit.convert.annotations import Choice, parse_map_entry, parse_map_text
from klpkit.convert.apply import ApplyResult, ConvertError, apply_plan
from klpkit.convert.plan import (
    Action,
    Candidate,
    Category,
    Classifier,
    Plan,
    PlannedReloc,
    PlanOptions,
    SymbolDecision,
    make_plan,
)
from klpkit.elf import ElfFile
from klpkit.fileio import refuse_output_over_input
from klpkit.symbols.protocol import SymbolLookup

__all__ = [
    "Action",
    "ApplyResult",
    "Candidate",
    "Category",
    "Choice",
    "Classifier",
    "ConvertError",
    "Plan",
    "PlanOptions",
    "PlannedReloc",
    "SymbolDecision",
    "apply_plan",
    "convert_file",
    "make_plan",
    "parse_map_entry",
    "parse_map_text",
]


def convert_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str] | None,
    db: SymbolLookup | None,
    options: PlanOptions | None = None,
    *,
    dry_run: bool = False,
    elf: ElfFile | None = None,
    inputs: Mapping[str, str | os.PathLike[str] | None] | None = None,
) -> tuple[Plan, ApplyResult | None, ElfFile]:
    """Plan, and unless ``dry_run`` or the plan has errors, apply and write ``dst``
    atomically.  ``elf``: ``src`` already read.

    No input is ever written: ``dst`` is refused when it is the same file (by identity)
    as ``src``, the symbol database ``db`` reads, or any of ``inputs`` (what each is ->
    its path: a map file, the ``--symbols`` the user named)."""
    if dst is not None and not dry_run:
        refuse_output_over_input(
            dst,
            {"module": src, **(inputs or {}), "symbol database": getattr(db, "path", None)},
        )
    if elf is None:
        elf = ElfFile.read(src)
    plan = make_plan(elf, db, options)
    if dry_run or not plan.ok:
        return plan, None, elf
    if dst is None:
        raise ValueError("convert_file: an output path is needed unless dry_run")
    result = apply_plan(elf, plan)
    elf.write(dst)
    return plan, result, elf

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
from klpkit.errors import InputError

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


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def convert_file(
    src,
    dst,
    db,
    options: PlanOptions | None = None,
    *,
    dry_run: bool = False,
    elf: ElfFile | None = None,
) -> tuple[Plan, ApplyResult | None, ElfFile]:
    """Plan, and unless ``dry_run`` or the plan has errors, apply and write ``dst``
    atomically.  The input file is never written.  ``elf``: ``src`` already read."""
    if dst is not None and not dry_run and _same_file(src, dst):
        raise InputError("the output would overwrite the input; choose another -o path", path=dst)
    if elf is None:
        elf = ElfFile.read(src)
    plan = make_plan(elf, db, options)
    if dry_run or not plan.ok:
        return plan, None, elf
    result = apply_plan(elf, plan)
    elf.write(dst)
    return plan, result, elf

"""The categories the conversion policy (:class:`klpkit.convert.plan.Classifier`) gives
an undefined symbol of a livepatch module: what convert does with it, what ``klpkit
check`` counts as a pin and what ``klpkit deps`` builds its own verdicts on."""

from __future__ import annotations

import enum


class Category(enum.StrEnum):
    A = "A"  # exported by vmlinux: a normal reference
    B = "B"  # exported by a patched module: converted (no pin), or kept: a pin
    LOCAL = "local"  # not exported: only a livepatch relocation reaches it
    CD = "C-D"  # exported by a module the livepatch does not patch
    ERROR = "error"  # cannot be decided (missing, ambiguous, no gate)
    INTERNAL = "internal"  # the livepatch core's own, or weak and found nowhere
    KLP = "klp"  # a relocation already livepatch (not an undefined symbol)
    ANNOTATION = "annotation"  # an annotation record, removed with its section
    UNCHECKED = "unchecked"  # no symbol database

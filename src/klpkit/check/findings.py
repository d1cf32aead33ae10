"""What ``klpkit check`` reports: :class:`Finding`.

A finding names the rule (an id of :data:`klpkit.check.rules.RULES`), where it is
(section, offset, symbol), what is wrong in klpkit's words (``message``) and, when the
kernel itself would say something, the line it would print (``kernel_message``), as it
appears in dmesg after the timestamp: ``livepatch: symbol 'x' not found in symbol table``.

Parts of a kernel message that only exist at run time (addresses, the value a
relocation would write) are written as printf conversions (``%p``, ``%Lx``);
:meth:`Finding.matches` turns them into wildcards, so a test can compare a prediction
with the lines of a booted kernel's log::

    assert any(f.matches(line) for line in dmesg_lines)
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field


class Severity(enum.StrEnum):
    ERROR = "error"  # the kernel refuses the module (or it can never work)
    WARNING = "warning"  # loads, but something will go wrong or silently not apply
    NOTE = "note"  # information: what a symbol resolves to, what was not checked

    def __str__(self) -> str:
        return self.value


class Stage(enum.IntEnum):
    """When the kernel applies a rule: findings sort in this order, so the first error
    is the one the kernel hits first."""

    ELF = 1  # elf_validity_check(), setup_load_info()
    MODSTRUCT = 2  # check_modstruct_version()
    MODINFO = 3  # check_modinfo(): vermagic, livepatch tag
    SYMBOLS = 4  # simplify_symbols(): normal undefined symbols
    RELOCATIONS = 5  # apply_relocations(): normal and (>= 5.8) vmlinux klp sections
    ENABLE = 6  # klp_enable_patch() from the module's init
    OBJECT = 7  # module-gated klp sections: enable time or klp_module_coming()
    LATER = 8  # unload/reload of a patched module


@dataclass
class Place:
    section: str | None = None
    offset: int | None = None
    symbol: str | None = None

    def __str__(self) -> str:
        out = self.section or ""
        if self.offset is not None:
            out += f"+{self.offset:#x}"
        if self.symbol:
            out += f" {self.symbol}" if out else self.symbol
        return out or "-"

    def as_dict(self) -> dict:
        return {"section": self.section, "offset": self.offset, "symbol": self.symbol}


_CONVERSION = re.compile(r"%(?:l{0,2}|L)[dupxXs]")


@dataclass
class Finding:
    severity: Severity
    rule: str
    place: Place
    message: str
    kernel_message: str | None = None
    stage: Stage = Stage.ELF
    details: dict = field(default_factory=dict)

    @property
    def kernel_lines(self) -> list[str]:
        return self.kernel_message.split("\n") if self.kernel_message else []

    def kernel_patterns(self) -> list[re.Pattern]:
        out = []
        for line in self.kernel_lines:
            parts = _CONVERSION.split(line)
            out.append(re.compile(".*?".join(re.escape(p) for p in parts)))
        return out

    def matches(self, line: str) -> bool:
        """True when ``line`` (a dmesg line, timestamp or not) is one of the lines the
        kernel would print for this finding."""
        return any(p.search(line) for p in self.kernel_patterns())

    def as_dict(self) -> dict:
        return {
            "severity": str(self.severity),
            "rule": self.rule,
            "place": self.place.as_dict(),
            "message": self.message,
            "kernel_message": self.kernel_message,
            "stage": self.stage.name.lower(),
            "details": self.details,
        }

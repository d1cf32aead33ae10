"""The state one check run shares between the rule families."""

from __future__ import annotations

from dataclasses import dataclass, field

from klpkit.check.findings import Finding, Place, Severity
from klpkit.check.rules import RULES


@dataclass
class Context:
    path: str
    data: bytes
    db: object                    # klpkit.symbols.SymbolDB (or anything with its API)
    kver: tuple[int, int]
    elf: object = None            # klpkit.elf.ElfFile once it parses
    modinfo: object = None        # klpkit.kernel.modinfo.Modinfo
    name: str = "livepatch"       # in-kernel module name (mod->name)
    versions: dict[str, int] | None = None   # __versions (None: no section)
    findings: list[Finding] = field(default_factory=list)
    klp_symbols_used: set[int] = field(default_factory=set)  # id() of symbols in klp sections
    _order: int = 0

    def add(self, rule: str, place: Place | None, message: str,
            kernel_message: str | None = None, *, severity: Severity | None = None,
            **details) -> Finding | None:
        """Record a finding of ``rule`` unless the rule does not hold for this kernel."""
        r = RULES[rule]
        if not r.applies(self.kver):
            return None
        self._order += 1
        f = Finding(severity or r.severity, rule, place or Place(), message, kernel_message,
                    r.stage, details)
        f.details.setdefault("_order", self._order)
        self.findings.append(f)
        return f

    # --- shared lookups --------------------------------------------------------------
    def object_exists(self, obj: str) -> bool:
        if obj == "vmlinux":
            return True
        try:
            return self.db.object_info(obj) is not None
        except Exception:  # noqa: BLE001 - a DB without object_info: assume it exists
            return True

"""The state one check run shares between the rule families."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from klpkit.check.findings import Finding, Place, Severity
from klpkit.check.rules import RULES
from klpkit.elf import ElfFile


@dataclass
class Context:
    path: str
    data: bytes
    db: Any  # klpkit.symbols.SymbolDB (or anything with its API)
    kver: tuple[int, int]
    elf: Any = None  # klpkit.elf.ElfFile once it parses
    modinfo: Any = None  # klpkit.kernel.modinfo.Modinfo
    name: str = "livepatch"  # in-kernel module name (mod->name)
    versions: dict[str, int] | None = None  # __versions (None: no section)
    findings: list[Finding] = field(default_factory=list)
    klp_symbols_used: set[int] = field(default_factory=set)  # id() of symbols in klp sections
    patched: object = None  # klpkit.convert.objects.PatchedObjects, read once
    given: tuple | None = None  # (objects, registers) a caller states instead (deps)
    loaded: list = field(default_factory=list)  # livepatches already loaded, in order
    running: object = None  # loaded_rules.RunningSystem: a running system's livepatches
    _order: int = 0

    def add(
        self,
        rule: str,
        place: Place | None,
        message: str,
        kernel_message: str | None = None,
        *,
        severity: Severity | None = None,
        **details,
    ) -> Finding | None:
        """Record a finding of ``rule`` unless the rule does not hold for this kernel."""
        r = RULES[rule]
        if not r.applies(self.kver):
            return None
        self._order += 1
        f = Finding(
            severity or r.severity,
            rule,
            place or Place(),
            message,
            kernel_message,
            r.stage,
            details,
        )
        f.details.setdefault("_order", self._order)
        self.findings.append(f)
        return f

    # --- the module as the ELF model reads it -------------------------------------------
    def open_elf(self) -> ElfFile:
        """Read the module with the ELF model, every table decoded
        (:meth:`klpkit.elf.ElfFile.validate`), into :attr:`elf`. A file the reader
        refuses is refused by check too: the ElfError propagates (exit 2), since no
        finding about a file that ``inspect`` and ``convert`` cannot read could be
        trusted."""
        self.elf = ElfFile.from_bytes(self.data, path=self.path).validate()
        return self.elf

    # --- the module as a livepatch -----------------------------------------------------
    def livepatch(self):
        """What the module patches and whether it registers a livepatch, read once
        (:func:`klpkit.convert.objects.read_patched_objects`)."""
        if self.patched is None:
            from klpkit.convert.objects import read_patched_objects

            self.patched = read_patched_objects(self.elf)
        return self.patched

    @property
    def registers(self) -> bool:
        """Does the module call klp_enable_patch(): is it a livepatch to the kernel?"""
        if self.given is not None:
            return self.given[1]
        return self.livepatch().registers

    @property
    def objects(self) -> list[str] | None:
        """The objects its klp_patch lists (else what its annotations name); None when
        they are set at run time."""
        if self.given is not None:
            return self.given[0]
        names, _source = self.livepatch().effective()
        return names or None

    # --- shared lookups --------------------------------------------------------------
    def object_exists(self, obj: str) -> bool:
        if obj == "vmlinux" or self.db is None:
            return True
        return self.db.object_info(obj) is not None

"""What a builder fills and the database writer stores: objects with their symbols in
kernel order, exports, provenance.  Every source (:mod:`klpkit.symbols.tree`,
:mod:`~klpkit.symbols.debian_image`, :mod:`~klpkit.symbols.kallsyms`,
:mod:`~klpkit.symbols.system_map`, :mod:`~klpkit.symbols.symbols_list`,
:mod:`~klpkit.symbols.vmlinuz`) makes :class:`ObjectRecord` values and adds them to
a :class:`SymbolSet`; :func:`klpkit.symbols.db.write_db` stores it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from klpkit.symbols.pages import (
    PAYLOAD,
    decode_name,
    make_records,
    oid_prefix,
    parse_record,
    record_oid,
)
from klpkit.symbols.symvers import Export


@dataclass
class ObjectRecord:
    """One object (vmlinux or a module) and its symbols.

    ``records`` are the database's own records (:mod:`klpkit.symbols.pages`: name,
    object id, kernel position, flags), in kernel order: the one form a symbol has
    from the moment it is read (the module reader makes them in its hot loop; see
    :mod:`klpkit.symbols.speed`).  :meth:`from_pairs` makes them from (name, flags).
    """

    name: str
    kind: str  # 'vmlinux' | 'module'
    path: str | None
    records: list[bytes]
    depends: list[str] = field(default_factory=list)
    exports: list[Export] = field(default_factory=list)  # found in the object itself
    machine: int = 0  # e_machine of the ELF object (0: not read from an ELF)

    @classmethod
    def from_pairs(
        cls,
        name: str,
        kind: str,
        path: str | None,
        oid: int,
        pairs: Iterable[tuple[str | bytes, int]],
        *,
        where: str | None = None,
    ) -> ObjectRecord:
        """An object whose (name, flags) pairs in kernel order are at hand; ``oid`` is
        the id it will have (``where`` names the input in errors)."""
        return cls(name, kind, path, make_records(oid, pairs, where))

    def pairs(self) -> list[tuple[str, int]]:
        """(name, flags) in kernel order."""
        return [(decode_name(n), f) for n, _o, _p, f in map(parse_record, self.records)]


@dataclass
class SymbolSet:
    """Everything one build found, in the order the database will hold it: object
    ``i`` gets id ``i`` (vmlinux is 0)."""

    release: str
    source: str
    build_id: str = ""
    sources: list[str] = field(default_factory=list)
    objects: list[ObjectRecord] = field(default_factory=list)
    symvers: dict[str, Export] | None = None
    symvers_path: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # every object's records, gathered as each object is added (while they are still
    # in the CPU cache: gathering 600k of them afterwards is a pass over cold memory)
    records: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        given, self.objects = self.objects, []
        for rec in given:
            self.add_object(rec)

    @property
    def next_oid(self) -> int:
        """The id the next object added gets."""
        return len(self.objects)

    def add_object(self, rec: ObjectRecord) -> None:
        """Append ``rec``; its records join :attr:`records` (renumbered first if they
        were made for another object id)."""
        oid = len(self.objects)
        if rec.records and record_oid(rec.records[0]) != oid:
            prefix = oid_prefix(oid, rec.path)
            cut = -PAYLOAD - 1
            rec.records = [r[:cut] + prefix + r[cut + 5 :] for r in rec.records]
        self.objects.append(rec)
        self.records += rec.records

    def sorted_records(self) -> list[bytes]:
        """Every object's records, sorted: bytes order is (name, object, kernel
        position) order.  (Sorts :attr:`records` in place: their order carries nothing.)"""
        self.records.sort()
        return self.records

    @property
    def machine(self) -> int:
        """The architecture: e_machine of the first object read from an ELF file (0 for
        kallsyms, System.map and Symbols.list sources)."""
        return next((o.machine for o in self.objects if o.machine), 0)

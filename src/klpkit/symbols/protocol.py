"""What the policy code (convert, check, deps, build) asks of a symbol database, as a
type: :class:`klpkit.symbols.db.SymbolDB` has it, and so has the streamed Symbols.list
reader of :mod:`klpkit.convert.symbol_stream`; annotate a ``db`` parameter with
:class:`SymbolLookup` to accept either."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from klpkit.symbols.db import SymbolEntry


@runtime_checkable
class SymbolLookup(Protocol):
    """The questions a livepatch's policy asks about its target kernel's symbols."""

    @property
    def release(self) -> str:
        """The kernel release (``uname -r``) the symbols are of."""
        ...

    @property
    def build_id(self) -> str | None: ...

    def lookup(
        self, name: str, object: str | None = None, *, include_init: bool = False
    ) -> list[SymbolEntry]:
        """Every occurrence of ``name`` (in ``object`` only, when given), kernel order,
        with sympos and export details; [] when there is none."""
        ...

    def module_depends(self, obj: str) -> list[str]:
        """The modules ``obj`` depends on (raises KlpkitError for an unknown object)."""
        ...

    def object_info(self, obj: str) -> dict | None:
        """``{"name", "kind", "path", "depends"}`` of an object, or None."""
        ...

    def objects(self) -> list[str]:
        """Object names, ``vmlinux`` first."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class SymbolDatabase(SymbolLookup, Protocol):
    """A full database (:class:`klpkit.symbols.db.SymbolDB`): exports and whole-object
    scans too."""

    @property
    def machine(self) -> int | None:
        """The kernel's ELF e_machine, when known."""
        ...

    def export(self, name: str) -> tuple[str, str, str | None, int | None] | None:
        """(object, export type, namespace, crc) of an exported name, or None."""
        ...

    def exporter(self, name: str) -> str | None: ...

    def symbols_of(self, object: str) -> list[tuple[str, int]]:
        """(name, flags) of every symbol of ``object``, kernel order."""
        ...

    def names_with_prefix(self, prefix: str, object: str) -> list[str]: ...


def known_depends(db: SymbolLookup | None, obj: str) -> list[str]:
    """``obj``'s own dependencies (depmod's modules.dep line); none known for an object
    the source does not hold (a module of the set, an out-of-tree target) or without a
    source.  A damaged database raises: it is not "no dependencies"."""
    info = db.object_info(obj) if db is not None else None
    return list(info["depends"]) if info is not None else []


if TYPE_CHECKING:  # (mypy proves the database has what the protocols promise)
    from klpkit.symbols.db import SymbolDB

    def _conforms(db: SymbolDB) -> SymbolDatabase:
        return db

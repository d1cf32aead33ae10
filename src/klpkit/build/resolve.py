"""Where the compiled object's code lives in the running kernel, and how the livepatch
names what it leaves there.

Two questions, both answered from the kernel's symbol database:

* **Which kernel object** a source file ends up in (vmlinux, or which module): the
  object whose symbols the compiled file's functions are.  The kernel's own answer
  (Makefiles, ``modules.order``) needs a built tree; the database has every symbol
  of the shipped kernel, and the file's functions are found in exactly one object.
* **Which occurrence** of a name a reference means (``sympos``).  A ``static`` name
  defined in several files of vmlinux (``show``, ``debug``...) is counted by the
  livepatch core in kallsyms order (address order for vmlinux, ``.symtab`` order for
  a module); the linker keeps each input file's symbols together there, so the
  occurrence surrounded by this file's other symbols is this file's.
"""

from __future__ import annotations

from collections import Counter

from klpkit.build.objview import ObjectView, base_name, cold_parent
from klpkit.convert.annotations import INTERMEDIATE_PREFIX, format_intermediate
from klpkit.elf import Symbol
from klpkit.elf import constants as C
from klpkit.errors import SymbolError

#: How many kallsyms neighbours on each side vote for an occurrence.
NEIGHBOURHOOD = 24


class BuildResolveError(SymbolError):
    """A symbol the livepatch needs cannot be found in the target kernel."""


def kernel_object_of(db, view: ObjectView, source: str) -> str:
    """The kernel object (``vmlinux`` or a module name) ``source`` is built into: the
    one holding most of the file's named functions and variables (init ones included:
    a file whose only runtime function shares its name with another object's is told
    apart by its initcall)."""
    names = sorted(
        {
            s.name
            for s in view.defined()
            if base_name(s.name) == s.name
            and cold_parent(s.name) is None
            and not s.name.startswith("__")
        }
    )[:400]
    votes: Counter[str] = Counter()
    for name in names:
        for obj in {e.object for e in db.lookup(name, include_init=True)}:
            votes[obj] += 1
    if not votes:
        raise BuildResolveError(
            f"{source}: none of its {len(names)} functions is in the "
            f"{db.release} kernel's symbols: is it built in this "
            "configuration?"
        )
    top = votes.most_common(2)
    best, n = top[0]
    runner_up = top[1][1] if len(top) > 1 else 0
    if n < max(1, len(names) // 2) or n == runner_up:
        raise BuildResolveError(
            f"{source}: cannot tell which kernel object it is built into "
            f"({', '.join(f'{o}: {k}' for o, k in votes.most_common(4))} of {len(names)} "
            "functions)"
        )
    return best


class KernelNames:
    """Names and positions of one kernel object's symbols, for one compiled file."""

    def __init__(self, db, kobj: str, orig: ObjectView, source: str):
        self.db = db
        self.kobj = kobj
        self.orig = orig
        self.source = source
        self._order: list[str] | None = None
        self._own: set[str] | None = None

    # -- sympos ---------------------------------------------------------------
    def sympos(self, name: str) -> int:
        """The livepatch core's position of this file's ``name`` in the kernel object
        (0 when the name is unique there)."""
        entries = self.db.lookup(name, object=self.kobj)
        if not entries:
            raise BuildResolveError(
                f"{self.source}: {name} is not among {self.kobj}'s symbols in the "
                f"{self.db.release} kernel (inlined or dropped in the shipped build?)"
            )
        count = entries[0].count
        if count <= 1:
            return 0
        return self._occurrence(name, count)

    def _occurrence(self, name: str, count: int) -> int:
        order = self._kernel_order()
        own = self._own_names()
        spots = [i for i, n in enumerate(order) if n == name]
        scores = [
            sum(n in own for n in order[max(0, i - NEIGHBOURHOOD) : i + NEIGHBOURHOOD + 1])
            for i in spots
        ]
        best = max(scores, default=0)
        if best == 0 or scores.count(best) != 1 or len(spots) != count:
            raise BuildResolveError(
                f"{self.source}: {name} occurs {count} times in {self.kobj} and its "
                f"neighbours do not say which is this file's (scores {scores})"
            )
        return scores.index(best) + 1

    def _kernel_order(self) -> list[str]:
        if self._order is None:
            from klpkit.symbols.db import NONCORE

            self._order = [n for n, flags in self.db.symbols_of(self.kobj) if not flags & NONCORE]
        return self._order

    def _own_names(self) -> set[str]:
        """This file's names that are unique in the kernel object: the neighbours that
        identify it."""
        if self._own is None:
            names = {s.name for s in self.orig.defined()}
            counts = Counter(self._kernel_order())
            self._own = {n for n in names if counts.get(n) == 1}
        return self._own

    # -- names for the livepatch object ---------------------------------------------
    def outside(self, sym: Symbol, orig: Symbol | None) -> str:
        """The undefined name under which the livepatch object refers to ``sym``."""
        if sym.is_undefined:
            if sym.name == "__this_module" and self.kobj != "vmlinux":
                # THIS_MODULE in a module's code means that module, never the livepatch
                return self.intermediate(sym.name)
            return sym.name
        if orig is None:
            raise BuildResolveError(
                f"{self.source}: {sym.name} is new in the patched object "
                "but the livepatch does not carry it"
            )
        name = orig.name
        if orig.bind != C.STB_LOCAL:
            exported = [e for e in self.db.lookup(name) if e.exported]
            if any(e.object == "vmlinux" for e in exported) and self.kobj == "vmlinux":
                return name  # category A: a normal reference
            if orig.bind == C.STB_WEAK:
                strong = [e for e in self.db.lookup(name, object=self.kobj) if e.bind != "weak"]
                if strong:
                    return name  # an override elsewhere: let convert resolve it
        return self.intermediate(name)

    def weak_overridden(self, sym: Symbol) -> bool:
        """Whether ``sym``, a weak default of this file, lost to a strong definition
        elsewhere in the kernel object (the linker keeps the strong one: an arch override
        of a generic ``__weak`` function), so the kernel never runs this file's code."""
        if sym.bind != C.STB_WEAK:
            return False
        entries = self.db.lookup(sym.name, object=self.kobj)
        return bool(entries) and all(e.bind != "weak" for e in entries)

    def intermediate(self, name: str) -> str:
        return format_intermediate(self.kobj, self.kobj, name, self.sympos(name))

    def is_module_symbol(self, undefined_name: str) -> bool:
        """Whether the livepatch's undefined ``undefined_name`` is a module's symbol."""
        if undefined_name.startswith(INTERMEDIATE_PREFIX):
            return self.kobj != "vmlinux"
        owners = {e.object for e in self.db.lookup(undefined_name)}
        return bool(owners) and "vmlinux" not in owners

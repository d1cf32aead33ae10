"""Pins and dependency cycles of the module check judges, as ``klpkit deps`` reports
them for a lone livepatch.

A normal reference to a module's export makes the loader take a reference on that
module (resolve_symbol() -> ref_module(): it cannot be unloaded while the livepatch is
loaded), and modpost records the module in ``depends=`` (modprobe loads it first, so
the livepatch cannot load before it).  For a module the livepatch patches, that is a
pin.  Which undefined symbol is an export of a patched module is the conversion
policy's call (``Category.B`` of :class:`klpkit.convert.plan.Classifier`), the one
``klpkit deps`` builds its B references on.

Judged on its own a module is a lone livepatch: no patched module's load loads it (only
a split livepatch set, which ``klpkit deps`` sees whole, has such ``triggers``), so the
only cycle it can close is one through itself: it needs itself, or needs a patched
module whose own dependencies (the symbol database) name it."""

from __future__ import annotations

from dataclasses import dataclass, field

from klpkit.check.context import Context
from klpkit.check.findings import Place
from klpkit.convert.categories import Category
from klpkit.convert.plan import Classifier
from klpkit.elf import constants as C
from klpkit.kernel.modinfo import Modinfo
from klpkit.symbols.protocol import known_depends


@dataclass
class Pin:
    """The patched module ``module`` pinned by the livepatch: through which of its
    exports (``symbols``) and how (``via``: 'symbols', 'depends=')."""

    module: str
    symbols: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def undefined_symbols(elf) -> list[tuple[str, bool]]:
    """(name, weak) of each undefined symbol, once, in symbol table order (the first
    symbol of a name decides whether it is weak)."""
    out: dict[str, bool] = {}
    for sym in elf.symtab.symbols[1:] if elf.symtab else []:
        if sym.is_undefined and sym.name and sym.name not in out:
            out[sym.name] = sym.bind == C.STB_WEAK
    return list(out.items())


def needs(ctx: Context) -> tuple[list[Pin], list[str]]:
    """(the pins, every module the loader loads for the module: the exporters of its
    undefined symbols, then its ``depends=``), in the order the module names them."""
    objects = ctx.objects or []
    clf = Classifier(ctx.db, objects, kernel_version=ctx.kver)
    pins: dict[str, Pin] = {}
    loads: list[str] = []
    for name, weak in undefined_symbols(ctx.elf):
        d = clf.classify(name, weak=weak)
        dst = {
            Category.A: "vmlinux",
            Category.B: d.object,
            Category.CD: d.exported_by or d.object,
        }.get(d.category)
        if dst is not None and dst not in loads:
            loads.append(dst)
        if d.category == Category.B and d.object is not None:
            pin = pins.setdefault(d.object, Pin(d.object, via=["symbols"]))
            if name not in pin.symbols:
                pin.symbols.append(name)
    for dep in ctx.modinfo.depends if isinstance(ctx.modinfo, Modinfo) else []:
        if dep not in loads:
            loads.append(dep)
        if dep in objects:
            pin = pins.setdefault(dep, Pin(dep))
            if "depends=" not in pin.via:
                pin.via.append("depends=")
    return list(pins.values()), loads


def cycles(ctx: Context, loads: list[str]) -> list[list[str]]:
    """The dependency cycles through the module: it needs itself, or needs a patched
    module whose own dependencies name it."""
    patched = set(ctx.objects or [])
    out: list[list[str]] = []
    for dst in loads:
        if dst == ctx.name:
            out.append([ctx.name, ctx.name])
        elif dst in patched and ctx.name in known_depends(ctx.db, dst):
            out.append([ctx.name, dst, ctx.name])
    return out


def run(ctx: Context):
    pins, loads = needs(ctx)
    for pin in pins:
        ctx.add(
            "deps.pin",
            Place(symbol=", ".join(pin.symbols)),
            f"{ctx.name} pins {pin.module} (via {', '.join(pin.via)}): "
            f"{pin.module} cannot be unloaded while the livepatch is loaded, and the "
            f"livepatch cannot load before it",
        )
    for path in cycles(ctx, loads):
        kinds = ["needs"] + ["object-dep"] * (len(path) - 2)
        steps = [f"{a} -{k}-> {b}" for a, b, k in zip(path, path[1:], kinds, strict=False)]
        ctx.add(
            "deps.recursion",
            Place(),
            "dependency cycle: the module loader can load none of these first: " + "; ".join(steps),
        )
    return None

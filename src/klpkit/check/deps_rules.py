"""The dependency verdicts of ``klpkit deps`` (pins, load recursions), imported from
:mod:`klpkit.deps` when it is there: never re-derived here."""

from __future__ import annotations

from klpkit.check.context import Context
from klpkit.check.findings import Place


def run(ctx: Context):
    try:
        from klpkit.deps import analyze
    except ImportError:
        return None
    try:
        with open(ctx.path, "rb") as f:
            if f.read() != ctx.data:
                return None  # checking bytes that are not the file: deps reads files
        report = analyze([ctx.path], ctx.db)
    except Exception as e:
        ctx.add("deps.pin", Place(), f"klpkit deps could not analyse the module: {e}")
        return None
    for pin in report.pins:
        ctx.add(
            "deps.pin",
            Place(symbol=", ".join(pin.get("symbols", []))),
            f"{pin['livepatch']} pins {pin['module']} (via {', '.join(pin.get('via', []))}): "
            f"{pin['module']} cannot be unloaded while the livepatch is loaded, and the "
            f"livepatch cannot load before it",
        )
    for cyc in report.cycles:
        ctx.add("deps.recursion", Place(), f"{cyc['reason']}: " + "; ".join(cyc["steps"]))
    return None

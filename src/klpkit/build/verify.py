"""``klpkit build --verify``: load the built livepatch into the release's kernel under
qemu, in both orders with each module it patches, and report what the kernel did.

One boot covers both orders: the livepatch first and then its target modules (late
patching: ``klp_module_coming()`` applies it as each target loads), the targets
unloaded (the livepatch must not pin them), the livepatch disabled and removed; then
the targets first and the livepatch after them.  A vmlinux-only livepatch is loaded,
its transition awaited, disabled and removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Verification:
    ok: bool
    boot_seconds: float | None
    orders: dict[str, str] = field(default_factory=dict)  # order -> "ok" | failure
    failure: str | None = None
    kernel_lines: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "boot_seconds": self.boot_seconds,
            "orders": self.orders,
            "failure": self.failure,
            "kernel_lines": self.kernel_lines,
        }


def load_order(db, module: str) -> list[str]:
    """``module`` after every module it depends on (depth first, each once)."""
    out: list[str] = []

    def visit(m: str, path: tuple[str, ...]) -> None:
        if m in out or m in path:
            return
        for dep in db.module_depends(m):
            visit(dep, (*path, m))
        out.append(m)

    visit(module, ())
    return out


def verify(livepatch: Path, modname: str, targets: list[str], db, release: str) -> Verification:
    from klpkit.vm import Step, VmSpec, run_vm

    steps: list[Step] = []
    labels: list[str] = []

    def add(label: str, step: Step) -> None:
        labels.append(label)
        steps.append(step)

    chains = {t: load_order(db, t) for t in targets}
    add("A: livepatch", Step("insmod", str(livepatch)))
    add("A: transition", Step("wait-transition", modname))
    for t, chain in chains.items():
        for m in chain:
            add(f"A: load {m}", Step("insmod", m))
        add(f"A: unload {t}", Step("rmmod", t))
    add("A: disable", Step("disable", modname))
    add("A: remove", Step("rmmod", modname))
    if targets:
        for t in targets:
            add(f"B: load {t}", Step("insmod", t))
        add("B: livepatch", Step("insmod", str(livepatch)))
        add("B: transition", Step("wait-transition", modname))
        add("B: disable", Step("disable", modname))
        add("B: remove", Step("rmmod", modname))
    result = run_vm(VmSpec(steps=steps, release=release))
    orders: dict[str, str] = {}
    for label, sr in zip(labels, result.steps, strict=False):
        order = label.split(":", 1)[0]
        if orders.get(order, "ok") == "ok":
            orders[order] = "ok" if sr.passed else f"{label}: {sr.status}"
    failure = None
    if result.failure is not None:
        failure = f"{result.failure.kind}: {result.failure.message}"
    lines = [ln for ln in result.dmesg if "livepatch" in ln or modname in ln][-40:]
    return Verification(result.ok, result.boot_seconds, orders, failure, lines)

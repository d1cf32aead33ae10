"""A livepatch judged against the livepatches already loaded (``check --loaded A.ko
B.ko ...``, in their load order): the kernel's rules for the set it joins are
:mod:`klpkit.kernel.klp`'s (klp_is_patch_compatible(), atomic replace, the func_stack).

The set is rebuilt the way the kernel builds klp_patches: each given livepatch joins
the stack, a cumulative one (``replace``) replaces the stack, one the states make
incompatible does not load.  Modules that call no klp_enable_patch() do not join.
"""

from __future__ import annotations

from klpkit.check.context import Context
from klpkit.check.findings import Place, Stage
from klpkit.convert.objects import find_patched_functions, read_patched_objects
from klpkit.elf import ElfFile
from klpkit.kernel import klp
from klpkit.kernel.modinfo import Modinfo, module_name


def as_installed(elf: ElfFile, name: str) -> klp.Installed | None:
    """How the livepatch core would keep ``elf`` in klp_patches (None: no livepatch)."""
    po = read_patched_objects(elf)
    if not po.registers:
        return None
    states = tuple((s.id, s.version) for p in po.patches for s in p.states)
    funcs = frozenset(
        (f.object, f.old_name, f.old_sympos or 1) for f in find_patched_functions(elf)
    )
    return klp.Installed(name, states, any(p.replace for p in po.patches), funcs)


def _read(path: str) -> tuple[str, ElfFile]:
    elf = ElfFile.read(path)
    sec = elf.section(".modinfo")
    return module_name(path, Modinfo.parse(sec.data) if sec is not None else None), elf


def _stack(ctx: Context) -> tuple[list[klp.Installed], set[str]]:
    """klp_patches after loading ``ctx.loaded`` in order, and the modules' names."""
    installed: list[klp.Installed] = []
    names: set[str] = set()
    for path in ctx.loaded:
        name, elf = _read(path)
        names.add(name)
        me = as_installed(elf, name)
        if me is None:
            continue
        problem = klp.state_problem(me, installed) if ctx.kver >= klp.SYSTEM_STATES else None
        if problem is not None:
            ctx.add(
                "loaded.order",
                Place(symbol=name),
                f"as given, {name} would not have "
                f"loaded after {', '.join(i.name for i in installed)}: {problem}",
            )
            continue
        installed = (
            klp.install(me, installed) if ctx.kver >= klp.ATOMIC_REPLACE else [*installed, me]
        )
    return installed, names


def _functions(items: list) -> str:
    return ", ".join(f"{obj}:{name},{pos}" for obj, name, pos in items)


def run(ctx: Context):
    if not ctx.loaded:
        return None
    installed, names = _stack(ctx)
    place = Place(symbol=ctx.name)
    if ctx.name in names:
        ctx.add(
            "loaded.duplicate",
            place,
            f"a module named {ctx.name} is already loaded: "
            "the module loader refuses a second one (-EEXIST)",
        )
        return None
    me = as_installed(ctx.elf, ctx.name)
    if me is None:
        return None
    problem = klp.state_problem(me, installed)
    if problem is not None:
        ctx.add(
            "klp.state.incompatible",
            place,
            f"klp_is_patch_compatible() refuses it: {problem}",
            f"livepatch: Livepatch patch ({ctx.name}) is not compatible "
            "with the already installed livepatches.",
        )
        return None
    for old, funcs in klp.reverted(me, installed).items():
        ctx.add(
            "klp.replace.reverts",
            place,
            f"{ctx.name} is cumulative (replace): {old} "
            f"is disabled and what it replaces that {ctx.name} does not runs its "
            f"original code again: {_functions(funcs)}",
        )
    for old, funcs in klp.stacked_under(me, installed).items():
        f = ctx.add(
            "klp.stack.top",
            place,
            f"replaces functions {old} replaces too: "
            f"{ctx.name}'s run (top of the stack), {old}'s again once {ctx.name} "
            f"is disabled: {_functions(funcs)}",
        )
        if f is not None:
            f.stage = Stage.ENABLE
    after = klp.install(me, installed) if ctx.kver >= klp.ATOMIC_REPLACE else [*installed, me]
    ctx.add(
        "loaded.set",
        place,
        "livepatches enabled afterwards, bottom to top: " + ", ".join(i.name for i in after),
        patches=[i.name for i in after],
    )
    return None

"""A livepatch judged against the livepatches already loaded (``check --loaded A.ko
B.ko ...``, in their load order, or ``check --loaded-from-sysfs ROOT``: a running
system's): the kernel's rules for the set it joins are :mod:`klpkit.kernel.klp`'s
(klp_is_patch_compatible(), atomic replace, the func_stack).

Given as files, the set is rebuilt the way the kernel builds klp_patches: each given
livepatch joins the stack, a cumulative one (``replace``) replaces the stack, one the
states make incompatible does not load.  Modules that call no klp_enable_patch() do not
join.  Read from a running system (:func:`read_sysfs`), the set is the kernel's own:
every directory of /sys/kernel/livepatch is a klp_patch in klp_patches (a replaced or
disabled one leaves it when its transition completes), with its transition state and
the functions it patches; its module file, found by name, tells its states and
whether it is cumulative, which sysfs does not show on 6.1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from klpkit import debian
from klpkit.check.context import Context
from klpkit.check.findings import Place, Stage
from klpkit.convert.objects import find_patched_functions, read_patched_objects
from klpkit.elf import ElfFile
from klpkit.errors import InputError, KlpkitError
from klpkit.fileio import read_regular
from klpkit.kernel import klp
from klpkit.kernel.modinfo import Modinfo, module_name
from klpkit.numbers import parse_decimal

SYSFS_LIVEPATCH = "sys/kernel/livepatch"
#: the attributes of a klp_patch's kobject (kernel/livepatch/core.c, 6.1: enabled,
#: transition, force; "replace" and "stack_order" came later); every other entry is
#: a klp_object directory
PATCH_ATTRIBUTES = frozenset({"enabled", "transition", "force", "replace", "stack_order"})
_ATTRIBUTE_LIMIT = 4096  # one sysfs page
_PROC_MODULES_LIMIT = 1 << 22


@dataclass(frozen=True)
class RunningPatch:
    """One klp_patch of a running system, as /sys/kernel/livepatch/NAME shows it."""

    name: str
    enabled: bool
    transition: bool
    functions: frozenset  # (object, old_name, sympos) from the <function,sympos> dirs
    module: str  # its module file, found by name
    states: tuple = ()  # (id, version) of its klp_states, from the module file
    replace: bool = False  # cumulative, from the module file (6.1's sysfs does not say)

    def installed(self) -> klp.Installed:
        return klp.Installed(self.name, self.states, self.replace, self.functions)


@dataclass
class RunningSystem:
    """klp_patches of a running system, bottom to top, and every loaded module's name."""

    root: str
    patches: list[RunningPatch] = field(default_factory=list)
    modules: set[str] = field(default_factory=set)

    @property
    def in_transition(self) -> RunningPatch | None:
        return next((p for p in self.patches if p.transition), None)


def _attribute(path: Path, what: str) -> bool:
    """A 0/1 sysfs attribute (enabled_show(), transition_show(): "%d\n")."""
    text = read_regular(path, _ATTRIBUTE_LIMIT, what).decode("ascii", "replace").strip()
    return parse_decimal(text, what, where=str(path), limit=1) == 1


def _sysfs_functions(patch_dir: Path) -> frozenset:
    """(object, name, sympos) from the <object>/<function,sympos> directories
    klp_init_object() and klp_init_func() create (sympos 0 is shown as 1)."""
    out = set()
    for obj in sorted(os.scandir(patch_dir), key=lambda e: e.name):
        if obj.name in PATCH_ATTRIBUTES or not obj.is_dir(follow_symlinks=False):
            continue
        for func in os.scandir(obj.path):
            name, sep, pos = func.name.rpartition(",")
            if not sep or not func.is_dir(follow_symlinks=False):
                continue
            where = os.path.join(obj.path, func.name)
            out.add((obj.name, name, parse_decimal(pos, "sympos", where=where)))
    return frozenset(out)


def _module_order(root: Path) -> list[str]:
    """Loaded modules' names, oldest first: /proc/modules lists the newest first
    (add_unformed_module() puts a module at the head of the modules list); [] when
    ROOT has no proc/modules."""
    path = root / "proc" / "modules"
    if not path.exists():
        return []
    text = read_regular(path, _PROC_MODULES_LIMIT, "/proc/modules").decode(
        "utf-8", "surrogateescape"
    )
    return [line.split()[0] for line in reversed(text.splitlines()) if line.strip()]


def _find_module_file(name: str, modules_dir: Path) -> str:
    try:
        return os.fspath(debian.find_module(name, mods=modules_dir))
    except KlpkitError:
        raise InputError(
            f"livepatch {name} is loaded but its module file is not under {modules_dir}"
        ) from None


def _running_patch(d: Path, modules_dir: Path) -> RunningPatch:
    """The klp_patch of sysfs directory ``d``, with what its module file tells."""
    name = d.name
    path = _find_module_file(name, modules_dir)
    found, elf = _read(path)
    me = as_installed(elf, name)
    if me is None or found != name:
        what = "not a livepatch" if me is None else f"module {found}"
        raise InputError(
            f"the module file found for the loaded livepatch {name} is {what}", path=path
        )
    return RunningPatch(
        name,
        _attribute(d / "enabled", "enabled"),
        _attribute(d / "transition", "transition"),
        _sysfs_functions(d),
        path,
        me.states,
        me.replace,
    )


def read_sysfs(root: str | os.PathLike[str], modules_dir: str | os.PathLike[str]) -> RunningSystem:
    """The livepatches of the system whose file systems are mounted at ``root`` ("/"
    for this one, or a copy of its /sys/kernel/livepatch and /proc/modules): each
    klp_patch in klp_patches, in load order when ROOT/proc/modules tells it (klp_patches
    is appended to in klp_init_patch(), at each livepatch's module_init), else by name."""
    top = Path(root)
    base = top / SYSFS_LIVEPATCH
    if not base.is_dir():
        raise InputError(
            f"no {SYSFS_LIVEPATCH} directory (a kernel without CONFIG_LIVEPATCH, or "
            "sysfs not mounted)",
            path=top,
        )
    order = _module_order(top)
    rank = {name: i for i, name in enumerate(order)}
    names = sorted(
        (e.name for e in os.scandir(base) if e.is_dir(follow_symlinks=False)),
        key=lambda n: (rank.get(n, len(rank)), n),
    )
    running = RunningSystem(os.fspath(top), modules=set(order) | set(names))
    running.patches = [_running_patch(base / name, Path(modules_dir)) for name in names]
    return running


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


def _running(ctx: Context) -> RunningSystem | None:
    running = ctx.running
    return running if isinstance(running, RunningSystem) else None


def _stack(ctx: Context) -> tuple[list[klp.Installed], set[str]]:
    """klp_patches after loading ``ctx.loaded`` in order, and the modules' names."""
    running = _running(ctx)
    if running is not None:
        # the kernel's klp_patches as it is: the functions its sysfs shows (the nops of
        # an atomic replace in progress among them), states and replace from the files
        return [p.installed() for p in running.patches], set(running.modules)
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


def _busy(ctx: Context, place: Place) -> None:
    """__klp_enable_patch() returns -EBUSY while klp_transition_patch is set: no
    livepatch can be enabled until the running transition completes (or is reversed
    and completes).  The kernel prints nothing; insmod reports the error."""
    running = _running(ctx)
    busy = running.in_transition if running is not None else None
    if busy is not None:
        direction = "patching" if busy.enabled else "unpatching"
        ctx.add(
            "loaded.transition",
            place,
            f"{busy.name} is in transition ({direction}): klp_enable_patch() refuses "
            f"{ctx.name} with -EBUSY until it completes",
        )


def run(ctx: Context):
    if not ctx.loaded and _running(ctx) is None:
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
    me = as_installed(ctx.elf, ctx.name) if isinstance(ctx.elf, ElfFile) else None
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
    _busy(ctx, place)
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

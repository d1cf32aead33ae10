"""The replaced functions: every ``struct klp_func`` of the livepatch, as the livepatch
core initialises and resolves it.

klp_init_func() checks each entry when the patch is enabled (old_name length, the
``<function,sympos>`` sysfs directory); klp_init_object_loaded() then resolves
``old_name`` with klp_find_object_symbol(object, old_name, old_sympos) -- the same
count as for ``.klp.sym`` symbols, with the same messages -- and klp_patch_func()
finds the function's ftrace site.  When that happens depends on the object:

* vmlinux: in klp_enable_patch(), from the livepatch's init: its insmod fails
  (Stage.ENABLE; before 5.8 after the vmlinux relocations, Stage.OBJECT);
* a module: when the patch is enabled with the module loaded (the livepatch's insmod
  fails), else in klp_module_coming() when the module loads (the *module's* insmod
  fails, with two more lines) -- Stage.OBJECT, after the object's relocations.

The discovery of the entries is :func:`klpkit.convert.objects.find_patched_functions`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from klpkit.check.context import Context
from klpkit.check.findings import Place, Severity, Stage
from klpkit.kernel import klp
from klpkit.kernel.livepatch import ksym_name_max

if TYPE_CHECKING:
    from klpkit.convert.objects import PatchedFunction

#: The second word of a GCC clone's name (``foo.isra.0``, ``foo.constprop.0.isra.0``,
#: ``foo.part.0``, ``foo.lto_priv.0``, ``foo.llvm.123``): the function was specialised,
#: split or renamed, and callers may call the clone instead of ``foo``.
CLONE_MARKERS = frozenset({"isra", "constprop", "part", "lto_priv", "clone", "llvm"})

#: Symbol types that are certainly not code (SymbolEntry.type).
_DATA_TYPES = frozenset({"object", "tls", "common", "section", "file"})

FTRACE_LOCATION = klp.FTRACE_LOCATION  # klp_patch_func()'s ftrace lookup (kernel.klp)


def _names_with_prefix(db, prefix: str, obj: str) -> list[str]:
    """Distinct names of ``obj``'s symbols that start with ``prefix`` (a SymbolDB answers
    from its name index; another symbol source is scanned)."""
    if hasattr(db, "names_with_prefix"):
        return db.names_with_prefix(prefix, obj)
    symbols_of = getattr(db, "symbols_of", None)  # a Symbols.list stream has neither
    if symbols_of is None:
        return []
    return sorted({n for n, _f in symbols_of(obj) if n.startswith(prefix)})


def compiler_clones(db, name: str, obj: str) -> list[str]:
    """``obj``'s symbols that are GCC clones of ``name`` (``name.isra.0``, ...)."""
    out = []
    for n in _names_with_prefix(db, name + ".", obj):
        words = n[len(name) + 1 :].split(".")
        if words and words[0] in CLONE_MARKERS:
            out.append(n)
    return out


def _stage(ctx: Context, obj: str) -> Stage:
    """vmlinux functions resolve in klp_enable_patch() (after the vmlinux relocations,
    which the loader applies first since 5.8); a module's with that module."""
    if obj == klp.VMLINUX and ctx.kver >= klp.VMLINUX_RELOCS_AT_LOAD:
        return Stage.ENABLE
    return Stage.OBJECT


def _when(ctx: Context, obj: str) -> str:
    if obj == klp.VMLINUX:
        return "klp_enable_patch() fails: the livepatch's insmod fails"
    return (
        f"enabling the patch with {obj} loaded fails (the livepatch's insmod fails); "
        f"with {obj} loaded later, {obj}'s own insmod fails (klp_module_coming)"
    )


def _late_lines(ctx: Context, obj: str, err: int = -22) -> str | None:
    if obj == klp.VMLINUX:
        return None
    return (
        f"livepatch: failed to initialize patch '{ctx.name}' for module '{obj}' ({err})\n"
        f"livepatch: patch '{ctx.name}' failed for module '{obj}', refusing to load "
        f"module '{obj}'"
    )


def _not_function_message(ctx: Context, obj: str, name: str) -> tuple[str, str | None]:
    first = (
        f"livepatch: failed to find location for function '{name}'"
        if ctx.kver >= FTRACE_LOCATION
        else f"livepatch: failed to set ftrace filter for function '{name}' (-22)"
    )
    enable = (
        f"{first}\nlivepatch: failed to patch object '{obj}'\n"
        f"livepatch: failed to enable patch '{ctx.name}'"
    )
    late = None
    if obj != "vmlinux":
        late = (
            f"{first}\nlivepatch: failed to apply patch '{ctx.name}' to module '{obj}' "
            f"(-22)\nlivepatch: patch '{ctx.name}' failed for module '{obj}', refusing "
            f"to load module '{obj}'"
        )
    return enable, late


def _late_detail(late: str | None) -> dict[str, Any]:
    return {"late_load_kernel_message": late} if late else {}


def _add(
    ctx: Context,
    rule: str,
    place: Place,
    message: str,
    kernel: str | None,
    stage: Stage,
    *,
    severity: Severity | None = None,
    **details,
):
    f = ctx.add(rule, place, message, kernel, severity=severity, **details)
    if f is not None:
        f.stage = stage
    return f


def _resolve(ctx: Context, func, place: Place, stage: Stage) -> None:
    """klp_find_object_symbol(func.object, old_name, old_sympos), then the type."""
    obj, name, pos = func.object, func.old_name, func.old_sympos
    vm = obj == klp.VMLINUX
    when = _when(ctx, obj)
    late = _late_lines(ctx, obj)
    extra = _late_detail(late)
    entries = ctx.db.lookup(name, object=obj)
    res = klp.find_object_symbol(entries, pos)
    kernel = klp.resolution_message(res, obj, name, pos)
    if res.found is klp.Found.NOT_FOUND:
        clones = compiler_clones(ctx.db, name, obj)
        if clones:
            _add(
                ctx,
                "klp.func.inlined",
                place,
                f"'{name}' is not in {obj}'s kallsyms on {ctx.db.release}, only its compiler "
                f"clones {', '.join(clones)}: GCC inlined or specialised it (IPA-SRA, "
                f"constant propagation, partial inlining) in the target build; patch the "
                f"clone by its name or the callers it was inlined into; {when}",
                kernel,
                stage,
                clones=clones,
                **extra,
            )
        else:
            _add(
                ctx,
                "klp.func.not-found",
                place,
                f"no function '{name}' in {obj} on {ctx.db.release} (a typo, or a function "
                f"this build does not have, e.g. inlined into all its callers); {when}",
                kernel,
                stage,
                **extra,
            )
        return
    if res.found is klp.Found.AMBIGUOUS:
        _add(
            ctx,
            "klp.func.ambiguous",
            place,
            f"old_sympos 0 but {obj} has {res.count} symbols named '{name}': "
            + ", ".join(f"{e.bind} {e.type} (sympos {e.sympos})" for e in entries)
            + f"; set old_sympos; {when}",
            kernel,
            stage,
            count=res.count,
            **extra,
        )
        return
    if res.found is klp.Found.POSITION:
        _add(
            ctx,
            "klp.func.position",
            place,
            f"old_sympos {pos} but {obj} has only {res.count} symbol(s) named '{name}'; {when}",
            kernel,
            stage,
            count=res.count,
            **extra,
        )
        return
    e = res.entry
    assert e is not None  # Found.RESOLVED carries the entry
    if name.startswith(klp.PREFIX) and ctx.kver >= klp.PREFIX_SYMBOLS:
        kernel, late_nf = _not_function_message(ctx, obj, name)
        target = name[len(klp.PREFIX) :]
        _add(
            ctx,
            "klp.func.prefix",
            place,
            f"'{name}' (position {e.sympos} of {e.count}) in {obj} is the padding before "
            f"'{target}' (CONFIG_CALL_PADDING): the livepatch core resolves it, ftrace finds "
            f"no call site in it; name the function itself ('{target}'); {when}",
            kernel,
            stage,
            **_late_detail(late_nf),
        )
        return
    if e.type in _DATA_TYPES or e.type == "notype":
        kernel, late_nf = _not_function_message(ctx, obj, name)
        certain = e.type in _DATA_TYPES
        _add(
            ctx,
            "klp.func.not-function",
            place,
            f"'{name}' (position {e.sympos} of {e.count}) in {obj} is a {e.bind} {e.type}, "
            + (
                "not a function: the livepatch core resolves it all the same and ftrace "
                "finds no call site to redirect; "
                if certain
                else "maybe not a function (assembler label?): ftrace may find no call site; "
            )
            + when,
            kernel,
            stage,
            severity=None if certain else Severity.WARNING,
            type=e.type,
            **_late_detail(late_nf),
        )
        return
    _add(
        ctx,
        "klp.func.resolved",
        place,
        f"replaces {e.object} {e.bind} {e.type} {e.name}, position {e.sympos} of {e.count}"
        + (f" (with {func.new_func})" if func.new_func else ""),
        None,
        stage,
        object=e.object,
        name=e.name,
        sympos=e.sympos,
        count=e.count,
        bind=e.bind,
        type=e.type,
        new_func=func.new_func,
    )
    clones = compiler_clones(ctx.db, name, obj)
    if clones:
        _add(
            ctx,
            "klp.func.clones",
            place,
            f"{obj} also has {', '.join(clones)}: GCC made clones of '{name}', and callers "
            f"that call a clone keep running the old code; patch the clones too (by their "
            f"names) or check that no caller uses them",
            None,
            stage,
            clones=clones,
        )
    if not vm:
        from klpkit.check.klp_rules import _late_load

        _late_load(ctx, obj, name, pos, e, place, rule="klp.func.late-load")


def run(ctx: Context):
    from klpkit.convert.objects import find_patched_functions

    funcs = find_patched_functions(ctx.elf)
    limit = ksym_name_max(ctx.kver) + 1  # KSYM_NAME_LEN
    by_object: dict[str, list] = {}
    for f in funcs:
        by_object.setdefault(f.object, []).append(f)
    for obj, group in by_object.items():
        if not ctx.object_exists(obj):
            continue  # livepatch.object says so; the kernel never resolves these
        # klp_init_func(), for every function of the object, before any resolution
        sysfs: dict[tuple[str, int], PatchedFunction] = {}
        bad: set[int] = set()
        for f in group:
            place = Place(f.section, f.offset, f.old_name)
            if len(f.old_name.encode("utf-8", "surrogateescape")) >= limit:
                _add(
                    ctx,
                    "klp.func.format",
                    place,
                    f"old_name is {len(f.old_name.encode('utf-8', 'surrogateescape'))} bytes, the kernel allows at "
                    f"most {limit - 1}: klp_init_func() returns -EINVAL, the livepatch's "
                    "insmod fails without a message",
                    None,
                    Stage.ENABLE,
                )
                bad.add(id(f))
                continue
            key = (f.old_name, f.old_sympos or 1)
            first = sysfs.get(key)
            if first is not None:
                dirname = f"{f.old_name},{key[1]}"
                _add(
                    ctx,
                    "klp.func.duplicate",
                    place,
                    f"klp_object '{obj}' replaces '{f.old_name}' twice (entries "
                    f"{first.index} and {f.index}, sympos {first.old_sympos} and "
                    f"{f.old_sympos}): the sysfs directory {dirname} exists, kobject_add() "
                    "fails with -EEXIST and so does the livepatch's insmod",
                    f"sysfs: cannot create duplicate filename '/kernel/livepatch/{ctx.name}/"
                    f"{obj}/{dirname}'\nkobject_add_internal failed for {dirname} with "
                    "-EEXIST, don't try to register things with the same name in the same "
                    "directory.",
                    Stage.ENABLE,
                )
                bad.add(id(f))
                continue
            sysfs[key] = f
        for f in group:
            if id(f) not in bad:
                _resolve(ctx, f, Place(f.section, f.offset, f.old_name), _stage(ctx, obj))

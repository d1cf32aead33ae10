"""The module's .modinfo and __versions against the target kernel: vermagic,
module_layout, the livepatch tag and the objects the livepatch names."""

from __future__ import annotations

from klpkit.check.context import Context
from klpkit.check.findings import Place
from klpkit.errors import KlpkitError
from klpkit.kernel.versions import parse_versions

_FALLBACK_OBJECTS = ("cdrom", "ext4", "xfs", "scsi_mod", "libata", "loop")


def target_vermagic(db, prefer=()) -> str | None:
    """The target kernel's VERMAGIC_STRING: the vermagic of one of its own modules
    (in-tree modules carry exactly the kernel's), found through the database."""
    from klpkit.elf import ElfFile
    from klpkit.kernel.modinfo import Modinfo

    cached = getattr(db, "_klpkit_check_vermagic", None)
    if cached is not None:
        return cached or None
    names = [n for n in prefer if n != "vmlinux"] + list(_FALLBACK_OBJECTS)
    names += [n for n in db.objects()[:50] if n != "vmlinux"]
    found = ""
    for name in names:
        info = db.object_info(name)
        path = info and info.get("path")
        if not path:
            continue
        try:
            sec = ElfFile.read(path).section(".modinfo")
        except KlpkitError:  # the module file the database names is gone or damaged
            continue
        vm = Modinfo.parse(sec.data).vermagic if sec is not None else None
        if vm:
            found = vm
            break
    try:
        db._klpkit_check_vermagic = found
    except AttributeError:
        pass
    return found or None


def _versions(ctx: Context) -> None:
    sec = ctx.elf.section("__versions")
    if sec is None:
        ctx.versions = None
        return
    ctx.versions = {
        v.name: v.crc for v in parse_versions(sec.data, ctx.elf.elfclass, ctx.elf.little_endian)
    }


def _module_layout(ctx: Context) -> None:
    if ctx.versions is None or "module_layout" not in ctx.versions:
        return
    exp = ctx.db.export("module_layout")
    crc = exp[3] if exp else None
    if crc is not None and crc != ctx.versions["module_layout"]:
        ctx.add(
            "modversions.module_layout",
            Place("__versions", symbol="module_layout"),
            f"module_layout CRC {ctx.versions['module_layout']:#010x} is not the "
            f"kernel's {crc:#010x}: built against another kernel's headers",
            f"{ctx.name}: disagrees about version of symbol module_layout",
        )


def _vermagic(ctx: Context, objects) -> None:
    mine = ctx.modinfo.vermagic
    place = Place(".modinfo", symbol="vermagic")
    if not mine:
        ctx.add(
            "vermagic",
            place,
            "no vermagic in .modinfo: the loader refuses it unless "
            "forced (CONFIG_MODULE_FORCE_LOAD, insmod -f)",
        )
        return
    target = target_vermagic(ctx.db, objects)
    release = ctx.db.release
    has_crcs = ctx.versions is not None
    my_release = mine.split(" ", 1)[0]
    if target is not None:

        def tail(s):
            return s[len(s.split(" ", 1)[0]) :]

        same = tail(mine) == tail(target) if has_crcs else mine == target
        if not same:
            ctx.add(
                "vermagic",
                place,
                f"vermagic '{mine}' is not the target kernel's "
                f"'{target}'"
                + (
                    " (the release word is not compared: the module has __versions)"
                    if has_crcs
                    else ""
                ),
                f"{ctx.name}: version magic '{mine}' should be '{target}'",
            )
            return
    if my_release != release:
        if has_crcs:
            ctx.add(
                "vermagic.release",
                place,
                f"built for {my_release}, the symbol database "
                f"is {release}; the kernel ignores the release word when the module has "
                "__versions and compares the module_layout CRC instead",
            )
        else:
            ctx.add(
                "vermagic",
                place,
                f"built for {my_release}, the target is {release}",
                f"{ctx.name}: version magic '{mine}' should be '{release}%s'",
            )


def _livepatch(ctx: Context) -> None:
    """The module loader reads the ``livepatch`` tag of every module
    (check_modinfo_livepatch(): refused without CONFIG_LIVEPATCH, else the kernel is
    tainted); the livepatch core's rules hold only for a module that registers a patch
    (klp.registers_patch: it calls klp_enable_patch())."""
    export = getattr(ctx.db, "export", None)  # a Symbols.list stream knows no exports
    has_klp = export("klp_enable_patch") is not None if export is not None else True
    place = Place(".modinfo", symbol="livepatch")
    if ctx.modinfo.is_livepatch:
        if not has_klp:
            ctx.add(
                "livepatch.support",
                place,
                f"{ctx.db.release} exports no klp_enable_patch: CONFIG_LIVEPATCH is off",
                f"{ctx.name}: module is marked as livepatch module, but livepatch "
                "support is disabled",
            )
        else:
            ctx.add(
                "livepatch.taint",
                place,
                "livepatch=Y: the module loader taints the "
                "kernel (TAINT_LIVEPATCH, 'K')"
                + (
                    ""
                    if ctx.registers
                    else "; the module registers no livepatch (no "
                    "klp_enable_patch() call): the livepatch core never sees it"
                ),
                f"{ctx.name}: tainting kernel with TAINT_LIVEPATCH",
            )
    if not ctx.registers:
        return
    if not ctx.modinfo.is_livepatch:
        value = ctx.modinfo.get("livepatch")
        why = (
            "no livepatch tag in .modinfo"
            if value is None
            else f"livepatch={value!r} instead of 'Y'"
        )
        ctx.add(
            "livepatch.modinfo",
            place,
            f'{why}: klp_enable_patch() refuses the module (MODULE_INFO(livepatch, "Y"))',
            f"livepatch: module {ctx.name} is not marked as a livepatch module",
        )
    _objects(ctx)
    for obj in ctx.livepatch().objects:
        if not ctx.object_exists(obj.name):
            ctx.add(
                "livepatch.object",
                Place(obj.section, obj.offset, obj.name),
                f"klp_object '{obj.name}' is not vmlinux nor a module of "
                f"{ctx.db.release}: the patch loads but never applies to it",
            )


def _objects(ctx: Context) -> None:
    """What klp_enable_patch() will walk: every klp_object of the klp_patch, whatever its
    funcs hold (an empty array: callbacks or states only)."""
    lp = ctx.livepatch()
    if not lp.objects:
        names, source = lp.effective()
        ctx.add(
            "livepatch.objects",
            Place(),
            "the klp_objects are not readable from the "
            "module's data (set at run time?)"
            + (f"; its {source} name {', '.join(names)}" if names else ""),
        )
        return
    parts = []
    for o in lp.objects:
        what = [f"{o.funcs} function(s)" if o.funcs else "no function"]
        if o.callbacks:
            what.append("callbacks " + ", ".join(o.callbacks))
        parts.append(f"{o.name} ({'; '.join(what)})")
    states = any(p.states for p in lp.patches)
    ctx.add(
        "livepatch.objects",
        Place(lp.objects[0].section),
        "patches " + ", ".join(parts) + ("; with klp_states" if states else ""),
        objects=[o.name for o in lp.objects],
        states=states,
    )


def patched_objects(ctx: Context) -> list[str]:
    return ctx.livepatch().names


def run(ctx: Context):
    _versions(ctx)
    _module_layout(ctx)
    _vermagic(ctx, patched_objects(ctx))
    _livepatch(ctx)

"""Source: an unpacked Debian ``linux-image-<rel>[-unsigned]`` package or an installed
root (``boot/vmlinuz-<rel>``, ``lib/modules/<rel>/``), optionally with the unpacked
``-dbg`` package (its vmlinux or real System.map): where those files are, and the
build from them."""

from __future__ import annotations

import os
from pathlib import Path

from klpkit.errors import InputError, KlpkitError
from klpkit.symbols.db import SymbolDB
from klpkit.symbols.elf_objects import apply_modules_dep, find_modules, read_vmlinux, scan_modules
from klpkit.symbols.finish import ProgressArg, finish
from klpkit.symbols.model import SymbolSet
from klpkit.symbols.speed import gc_paused
from klpkit.symbols.system_map import is_placeholder_system_map, system_map_record
from klpkit.symbols.vmlinuz import read_vmlinuz


def _find_release_dir(image_dir: Path, release: str | None = None) -> tuple[str, Path]:
    mods = image_dir / "lib" / "modules"
    if not mods.is_dir():
        mods = image_dir / "usr" / "lib" / "modules"
    if release:
        if not (mods / release).is_dir():
            raise InputError(f"no lib/modules/{release}/ here", path=image_dir)
        return release, mods / release
    rels = sorted(p for p in mods.iterdir() if p.is_dir()) if mods.is_dir() else []
    if len(rels) != 1:
        names = ", ".join(p.name for p in rels)
        raise InputError(
            f"expected one lib/modules/<release>/ directory, found {len(rels)}"
            + (f" ({names}): pass --release" if rels else ""),
            path=image_dir,
        )
    return rels[0].name, rels[0]


def find_debug_vmlinux(dbg_dir: Path, release: str) -> tuple[Path | None, Path | None]:
    """(vmlinux, System.map) in an unpacked -dbg package, a debug root, or a flat dir."""
    vm_candidates = [
        dbg_dir / "usr/lib/debug/boot" / f"vmlinux-{release}",
        dbg_dir / "usr/lib/debug/lib/modules" / release / "vmlinux",
        dbg_dir / "boot" / f"vmlinux-{release}",
        dbg_dir / f"vmlinux-{release}",
        dbg_dir / "vmlinux",
    ]
    map_candidates = [
        dbg_dir / "usr/lib/debug/boot" / f"System.map-{release}",
        dbg_dir / "boot" / f"System.map-{release}",
        dbg_dir / f"System.map-{release}",
        dbg_dir / "System.map",
    ]
    vm = next((p for p in vm_candidates if p.is_file()), None)
    sm = next((p for p in map_candidates if p.is_file() and not is_placeholder_system_map(p)), None)
    return vm, sm


def _image_version(image_dir: Path, release: str) -> str:
    """The version string in a bzImage (offset 0x20e points to it), for provenance."""
    vmlinuz = image_dir / "boot" / f"vmlinuz-{release}"
    if not vmlinuz.is_file():  # (a FIFO would block the read)
        return ""
    try:
        with open(vmlinuz, "rb") as f:
            head = f.read(0x4000)
        if head[0x202:0x206] == b"HdrS":
            off = int.from_bytes(head[0x20E:0x210], "little") + 0x200
            return head[off : off + 200].split(b"\0", 1)[0].decode("ascii", "replace")
    except OSError:
        pass
    return ""


@gc_paused
def build_from_debian(
    image_dir: str | os.PathLike,
    dbg_dir: str | os.PathLike | None = None,
    symvers: str | os.PathLike | None = None,
    *,
    db: str | os.PathLike | None = None,
    skip_bad: bool = False,
    progress: ProgressArg = None,
    release: str | None = None,
) -> SymbolDB:
    """An unpacked Debian ``linux-image-<rel>[-unsigned]`` package (or an installed root).

    vmlinux's symbols come from the kallsyms tables of the image's own
    ``boot/vmlinuz-<rel>`` (:func:`read_vmlinuz`), or, with ``dbg_dir``, from the unpacked
    ``-dbg`` package's vmlinux / real System.map; both give the same database (rules:
    ``LETTER_FLAGS``).  A root without ``boot/vmlinuz-<rel>`` falls back to a debug
    vmlinux or System.map found in it."""
    image_dir = Path(image_dir)
    rel, moddir = _find_release_dir(image_dir, release)
    vm = sm = image = None
    if dbg_dir is not None:
        vm, sm = find_debug_vmlinux(Path(dbg_dir), rel)
        if vm is None and sm is None:
            raise InputError(f"no vmlinux-{rel} or System.map-{rel} in the -dbg tree", path=dbg_dir)
    elif (image_dir / "boot" / f"vmlinuz-{rel}").is_file():
        image = image_dir / "boot" / f"vmlinuz-{rel}"
    else:
        vm, sm = find_debug_vmlinux(image_dir, rel)
    if image is None and vm is None and sm is None:
        placeholder = image_dir / "boot" / f"System.map-{rel}"
        hint = (
            f"{placeholder} is Debian's one-line placeholder; "
            if is_placeholder_system_map(placeholder)
            else ""
        )
        raise InputError(
            f"{hint}no boot/vmlinuz-{rel} here to read vmlinux's symbols from, "
            f"nor a vmlinux or real System.map (those are in the "
            f"linux-image-{rel}-dbg package: pass --dbg DIR)",
            path=image_dir,
        )
    sources = []
    if image is not None:
        rec, build_id, image_rel, vexports, _img = read_vmlinuz(
            image, derive_exports=symvers is None
        )
        if image_rel and image_rel != rel:
            raise KlpkitError(f"{image} is kernel {image_rel}, not {rel}")
        rec.exports = vexports
        sources.append(str(image))
    elif vm is not None:
        rec, build_id, _br, vexports = read_vmlinux(vm, derive_exports=symvers is None)
        rec.exports = vexports
        sources.append(str(vm))
    elif sm is not None:
        rec = system_map_record(sm)
        build_id = ""
        sources.append(str(sm))
    build_id = build_id or _image_version(image_dir, rel)
    symset = SymbolSet(rel, "debian", build_id, sources, [rec])
    scan_modules(
        find_modules(moddir),
        symset,
        release=rel,
        skip_bad=skip_bad,
        derive_exports=symvers is None,
        progress=progress or None,
    )
    apply_modules_dep(symset, moddir)
    symset.sources.append(str(moddir))
    return finish(symset, symvers, db)

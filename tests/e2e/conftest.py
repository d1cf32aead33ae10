"""Fixtures of the real-kernel scenario tests (issue 5) and their check cross-check (issue 7).

* ``e2e_build``: every scenario module (targets and livepatches) built in one Kbuild run
  against the Debian headers, so modpost sees e2e_target's exports the way a real
  out-of-tree build does (``depends=e2e_target`` and a CRC in lp_target's __versions);
* ``e2e_db``: the session's Debian symbol database plus the two test targets;
* ``e2e_mods``: the converted livepatches and the deliberately broken variants;
* ``vm_ready``: qemu, a static busybox, the Debian kernel image;
* ``boot``: run a :class:`VmSpec`, print its boot-to-poweroff time, and collect it for
  the session summary.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import VM_BOOT_PROPERTY, require, require_tools
from tests.klp_edit import set_old_name

HERE = Path(__file__).parent
MODULES = HERE / "modules"
REPO = HERE.parents[1]
EXAMPLE_CDROM = REPO / "examples" / "cdrom"
TARGET_DIRS = ("e2e_target", "e2e_dup")
LIVEPATCH_DIRS = ("lp_vmlinux", "lp_target", "lp_dup")

#: A vmlinux function of Debian 6.1.0-47 that exists only as a GCC clone
#: (___gnet_stats_copy_basic.isra.0): a klp_func naming it is refused at enable time.
INLINED = "___gnet_stats_copy_basic"

BOOTS: list[tuple[str, float | None, bool]] = []  # (name, boot-to-poweroff seconds, ok)
_reported = 0


@pytest.fixture(autouse=True)
def _report_boots(request):
    """Attach the boots a test's fixtures made to its teardown report (``user_properties``
    travel from xdist workers to the controller), for the session summary of
    tests/conftest.py."""
    global _reported
    yield
    for entry in BOOTS[_reported:]:
        request.node.user_properties.append((VM_BOOT_PROPERTY, entry))
    _reported = len(BOOTS)


@pytest.fixture(scope="session")
def vm_ready(debian_image):
    from klpkit.vm.initramfs import is_static_elf

    require(
        shutil.which("qemu-system-x86_64"),
        "qemu-system-x86_64 not installed (klpkit setup --install)",
    )
    bb = Path("/bin/busybox")
    require(bb.is_file() and is_static_elf(bb.read_bytes()), "static /bin/busybox (busybox-static)")
    return debian_image


@pytest.fixture(scope="session")
def boot(vm_ready, pytestconfig):
    """``boot(name, spec) -> VmResult``: one boot, its time printed (past output capture)
    and kept for the session summary."""
    from klpkit.vm import run_vm

    capman = pytestconfig.pluginmanager.getplugin("capturemanager")

    def run(name, spec):
        result = run_vm(spec)
        BOOTS.append((name, result.boot_seconds, result.ok))
        line = (
            f"\n[vm] {name}: boot-to-poweroff {result.boot_seconds} s, ok={result.ok}, "
            f"failure={result.failure.kind if result.failure else None}"
        )
        if capman is not None:
            with capman.global_and_fixture_disabled():
                print(line, flush=True)
        else:
            print(line)
        return result

    return run


@pytest.fixture(scope="session")
def e2e_build(debian_headers, tmp_path_factory) -> dict[str, Path]:
    """name -> .ko of every scenario module, as built (unconverted)."""
    require_tools("make", "gcc")
    from tests.kbuild import build_modules

    tmp = tmp_path_factory.mktemp("e2e-build")
    sources, objs, extra = {}, [], []
    for d in (*TARGET_DIRS, *LIVEPATCH_DIRS):
        for src in sorted((MODULES / d).glob("*.c")):
            sources[src.name] = src.read_text()
        kbuild = MODULES / d / "Kbuild"
        if kbuild.is_file():  # a multi-file module: take its composite rule
            extra += [ln for ln in kbuild.read_text().splitlines() if ln.startswith(f"{d}-")]
        objs.append(f"{d}.o")
    kos = build_modules(tmp, sources, "obj-m := " + " ".join(objs) + "\n" + "\n".join(extra) + "\n")
    return {k.stem: k for k in kos}


@pytest.fixture(scope="session")
def e2e_db(debian_symdb, e2e_build, tmp_path_factory):
    """The Debian database plus the scenario's own (out-of-tree) target modules."""
    from klpkit.symbols import add_modules

    db = add_modules(
        debian_symdb,
        [e2e_build[t] for t in TARGET_DIRS],
        dest=tmp_path_factory.mktemp("e2e-db") / "symbols.sqlite",
    )
    yield db
    db.close()


def convert(src: Path, dst: Path, db, maps: tuple[str, ...] = ()) -> Path:
    from klpkit.convert import PlanOptions, convert_file, parse_map_entry

    choices = [parse_map_entry(m, "--map") for m in maps]
    assert all(not isinstance(c, str) for c in choices), choices
    options = PlanOptions(choices=choices) if maps else None
    plan, result, _elf = convert_file(src, dst, db, options)
    assert plan.ok, plan.errors
    assert result is not None and dst.is_file()
    return dst


def mutate(src: Path, dst: Path, edit) -> Path:
    """A broken variant of a good module, made with klpkit's ELF model: ``edit(elf)``."""
    from klpkit.elf import ElfFile

    elf = ElfFile.read(src)
    edit(elf)
    elf.write(dst)
    return dst


def rename_symbol(old: str, new: str):
    def edit(elf):
        syms = [s for s in elf.symtab.symbols if s.name == old]
        assert len(syms) == 1, f"{old}: {len(syms)} symbols"
        syms[0].name = new

    return edit


def bad_crc(name: str):
    from klpkit.kernel.versions import ModVersion, parse_versions, serialize_versions

    def edit(elf):
        sec = elf.section("__versions")
        entries = parse_versions(sec.data)
        assert any(e.name == name for e in entries), f"{name} not in __versions"
        sec.data = serialize_versions(
            [ModVersion(e.name, e.crc ^ 0x5A5A5A5A) if e.name == name else e for e in entries]
        )

    return edit


@pytest.fixture(scope="session")
def e2e_mods(e2e_build, e2e_db, tmp_path_factory) -> dict[str, Path]:
    """Every module a scenario loads, by role: built, converted and broken variants."""
    out = tmp_path_factory.mktemp("e2e-mods")
    b = e2e_build
    m = {
        "e2e_target": b["e2e_target"],
        "e2e_dup": b["e2e_dup"],
        "lp_vmlinux.raw": b["lp_vmlinux"],
        "lp_target.raw": b["lp_target"],
    }
    m["lp_vmlinux"] = convert(b["lp_vmlinux"], out / "lp_vmlinux.klp.ko", e2e_db)
    m["lp_target"] = convert(b["lp_target"], out / "lp_target.klp.ko", e2e_db)
    m["lp_dup.1"] = convert(
        b["lp_dup"], out / "lp_dup.pos1.klp.ko", e2e_db, ("dup_name=e2e_dup,1",)
    )
    m["lp_dup.2"] = convert(
        b["lp_dup"], out / "lp_dup.pos2.klp.ko", e2e_db, ("dup_name=e2e_dup,2",)
    )
    # broken on purpose (issue 7): one rule each
    m["lp_dup.pos3"] = mutate(
        m["lp_dup.2"],
        out / "lp_dup.pos3.klp.ko",
        rename_symbol(".klp.sym.e2e_dup.dup_name,2", ".klp.sym.e2e_dup.dup_name,3"),
    )
    m["lp_dup.pos0"] = mutate(
        m["lp_dup.2"],
        out / "lp_dup.pos0.klp.ko",
        rename_symbol(".klp.sym.e2e_dup.dup_name,2", ".klp.sym.e2e_dup.dup_name,0"),
    )
    m["lp_target.vmlinux-in-module"] = mutate(
        m["lp_target"],
        out / "lp_target.vmmod.klp.ko",
        rename_symbol(".klp.sym.e2e_target.e2e_target_export,0", ".klp.sym.vmlinux.nr_processes,0"),
    )
    m["lp_vmlinux.missing-export"] = mutate(
        m["lp_vmlinux"],
        out / "lp_vmlinux.missing.klp.ko",
        rename_symbol("seq_printf", "klpkit_e2e_missing"),
    )
    m["lp_vmlinux.crc"] = mutate(
        m["lp_vmlinux"], out / "lp_vmlinux.crc.klp.ko", bad_crc("seq_printf")
    )
    m["lp_vmlinux.inlined"] = mutate(
        m["lp_vmlinux"],
        out / "lp_vmlinux.inlined.klp.ko",
        lambda elf: set_old_name(elf, "cmdline_proc_show", INLINED),
    )
    return m


@pytest.fixture(scope="session")
def lp_cdrom_converted(debian_headers, debian_symdb, tmp_path_factory) -> Path:
    """examples/cdrom built against the headers and converted (scenario 4)."""
    require_tools("make", "gcc")
    from tests.kbuild import build_module_dir

    tmp = tmp_path_factory.mktemp("e2e-cdrom")
    ko = build_module_dir(EXAMPLE_CDROM, tmp / "build")
    return convert(ko, tmp / "lp_cdrom.klp.ko", debian_symdb)


@pytest.fixture(scope="session")
def cdrom_ioctl(tmp_path_factory) -> Path:
    """The static guest program that calls ioctl(CDROM_MEDIA_CHANGED)."""
    require_tools("gcc")
    out = tmp_path_factory.mktemp("e2e-prog") / "cdrom_ioctl"
    r = subprocess.run(
        ["gcc", "-static", "-O2", "-o", str(out), str(MODULES / "cdrom_ioctl" / "cdrom_ioctl.c")],
        capture_output=True,
        text=True,
    )
    require(r.returncode == 0, f"gcc -static failed (static glibc missing?): {r.stderr[-500:]}")
    return out

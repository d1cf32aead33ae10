"""Fixtures of the real-kernel scenario tests and their check cross-check, on both kernel
lines of Debian bookworm: 6.1.0-47 and 6.12.117+deb12.

* ``release``: the kernel a test runs on, a session-scoped parameter
  (:func:`per_kernel`: one ``xdist_group`` per scenario and kernel, so each boot runs
  once, on one worker);
* ``kernel_symdb``: that kernel's Debian symbol database (from the image alone);
* ``e2e_build``: every scenario module (targets and livepatches) built in one Kbuild run
  against that kernel's headers, so modpost sees e2e_target's exports the way a real
  out-of-tree build does (``depends=e2e_target`` and a CRC in lp_target's __versions);
* ``e2e_db``: the kernel's database plus the two test targets;
* ``e2e_mods``: the converted livepatches and the deliberately broken variants;
* ``vm_ready`` (6.1), ``kernel_vm_ready`` (the kernel of ``release``): qemu, a static
  busybox, the Debian kernel image;
* ``boot``: run a :class:`VmSpec`, print its boot-to-poweroff time, and collect it for
  the session summary.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from klpkit import debian
from tests.conftest import VM_BOOT_PROPERTY, _ensure, require, require_tools
from tests.klp_edit import set_old_name

HERE = Path(__file__).parent
MODULES = HERE / "modules"
REPO = HERE.parents[1]
EXAMPLE_CDROM = REPO / "examples" / "cdrom"
TARGET_DIRS = ("e2e_target", "e2e_dup")
LIVEPATCH_DIRS = ("lp_vmlinux", "lp_target", "lp_dup")

#: A vmlinux function of Debian 6.1.0-47 and 6.12.117 that exists only as a GCC clone
#: (___gnet_stats_copy_basic.isra.0): a klp_func naming it is refused at enable time.
INLINED = "___gnet_stats_copy_basic"

#: The function lp_vmlinux replaces, and its prefix symbol (CONFIG_CALL_PADDING, 6.2+):
#: a klp_func naming the prefix is refused on both kernels, for different reasons.
REPLACED = "cmdline_proc_show"
PREFIXED = "__pfx_" + REPLACED

#: The kernels every qemu scenario runs on: (test id, Debian release).
KERNELS = (("6.1", debian.DEFAULT_RELEASE), ("6.12", debian.RELEASE_612))


def per_kernel(group: str):
    """Run the test on each of :data:`KERNELS`: ``release`` is a session-scoped
    parameter, and each (scenario, kernel) gets its own ``xdist_group`` so that under
    ``pytest -n N --dist loadgroup`` each boot runs once, on one worker."""
    return pytest.mark.parametrize(
        "release",
        [
            pytest.param(rel, id=short, marks=pytest.mark.xdist_group(f"{group}-{short}"))
            for short, rel in KERNELS
        ],
        indirect=True,
        scope="session",
    )


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


def _require_qemu() -> None:
    from klpkit.vm.initramfs import is_static_elf

    require(
        shutil.which("qemu-system-x86_64"),
        "qemu-system-x86_64 not installed (klpkit setup --install)",
    )
    bb = Path("/bin/busybox")
    require(bb.is_file() and is_static_elf(bb.read_bytes()), "static /bin/busybox (busybox-static)")


@pytest.fixture(scope="session")
def vm_ready(debian_image):
    _require_qemu()
    return debian_image


@pytest.fixture(scope="session")
def release(request) -> str:
    """The Debian release a test runs on (set by :func:`per_kernel`)."""
    return request.param


@pytest.fixture(scope="session")
def kernel_vm_ready(release):
    """qemu, busybox and the unpacked image of ``release``."""
    _require_qemu()
    return _ensure(lambda: debian.ensure_image(release), f"Debian kernel image {release}")


def _runner(pytestconfig):
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
def boot(vm_ready, pytestconfig):
    """``boot(name, spec) -> VmResult``: one boot, its time printed (past output capture)
    and kept for the session summary."""
    return _runner(pytestconfig)


@pytest.fixture(scope="session")
def kernel_boot(kernel_vm_ready, pytestconfig):
    """:func:`boot` for the kernel of ``release``."""
    return _runner(pytestconfig)


@pytest.fixture(scope="session")
def kernel_symdb(release, request, tmp_path_factory):
    """The symbol database of ``release`` from its image package alone (built once per
    test run, shared by the xdist workers)."""
    if release == debian.DEFAULT_RELEASE:
        yield request.getfixturevalue("debian_symdb")
        return
    from tests.symbols.db612 import RELEASE, open_db_612

    assert release == RELEASE, release
    db = open_db_612(tmp_path_factory)
    yield db
    db.close()


@pytest.fixture(scope="session")
def kernel_headers(release) -> Path:
    """/usr/src/linux-headers-<release> (scripts/setup.sh; 6.12's with KLPKIT_SETUP_TESTS=1)."""
    return _ensure(lambda: debian.ensure_headers(release), f"Debian kernel headers {release}")


@pytest.fixture(scope="session")
def e2e_build(release, kernel_headers, tmp_path_factory) -> dict[str, Path]:
    """name -> .ko of every scenario module, as built against ``release``'s headers
    (unconverted)."""
    require_tools("make", "gcc")
    from tests.kbuild import build_modules

    tmp = tmp_path_factory.mktemp(f"e2e-build-{release}")
    sources, objs, extra = {}, [], []
    for d in (*TARGET_DIRS, *LIVEPATCH_DIRS):
        for src in sorted((MODULES / d).glob("*.c")):
            sources[src.name] = src.read_text()
        kbuild = MODULES / d / "Kbuild"
        if kbuild.is_file():  # a multi-file module: take its composite rule
            extra += [ln for ln in kbuild.read_text().splitlines() if ln.startswith(f"{d}-")]
        objs.append(f"{d}.o")
    kbuild_text = "obj-m := " + " ".join(objs) + "\n" + "\n".join(extra) + "\n"
    kos = build_modules(tmp, sources, kbuild_text, release)
    return {k.stem: k for k in kos}


@pytest.fixture(scope="session")
def e2e_db(kernel_symdb, e2e_build, tmp_path_factory):
    """The kernel's Debian database plus the scenario's own (out-of-tree) target modules."""
    from klpkit.symbols import add_modules

    db = add_modules(
        kernel_symdb,
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
def e2e_mods(release, e2e_build, e2e_db, tmp_path_factory) -> dict[str, Path]:
    """Every module a scenario loads, by role: built, converted and broken variants."""
    out = tmp_path_factory.mktemp(f"e2e-mods-{release}")
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
    # broken on purpose: one rule each
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
        lambda elf: set_old_name(elf, REPLACED, INLINED),
    )
    m["lp_vmlinux.prefix"] = mutate(
        m["lp_vmlinux"],
        out / "lp_vmlinux.prefix.klp.ko",
        lambda elf: set_old_name(elf, REPLACED, PREFIXED),
    )
    return m


@pytest.fixture(scope="session")
def lp_cdrom_converted(release, kernel_headers, kernel_symdb, tmp_path_factory) -> Path:
    """examples/cdrom built against ``release``'s headers and converted (scenario 4)."""
    require_tools("make", "gcc")
    from tests.kbuild import build_module_dir

    tmp = tmp_path_factory.mktemp(f"e2e-cdrom-{release}")
    ko = build_module_dir(EXAMPLE_CDROM, tmp / "build", release)
    return convert(ko, tmp / "lp_cdrom.klp.ko", kernel_symdb)


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

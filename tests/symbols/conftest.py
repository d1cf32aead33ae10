"""Helpers for the symbol-database tests: tiny objects built with gcc/ld."""

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require

MOD_A = r"""
static int __attribute__((noinline, used)) helper(int x) { return x + 1; }
int __attribute__((used)) shared_global = 3;
int exported_fn(int x) { return helper(x) * 2; }
static int __attribute__((used, section(".init.text"))) dup_init(void) { return 1; }
static int __attribute__((used)) dup_init_core(void) { return 2; }
/* 6.1-style export records: __ksymtab_<name> in __ksymtab_gpl, __kstrtabns_ -> namespace */
static const char __kstrtabns_exported_fn[] __attribute__((used, section("__ksymtab_strings")))
    = "MY_NS";
static const int __ksymtab_exported_fn[3] __attribute__((used, section("__ksymtab_gpl")))
    = {0, 0, 0};
static const unsigned int __crc_exported_fn __attribute__((used, section("__kcrctab_gpl")))
    = 0x12345678;
static const char modinfo[] __attribute__((used, section(".modinfo"), aligned(1)))
    = "license=GPL\0depends=other_mod\0name=mod_a\0vermagic=6.1.0-test SMP mod_unload ";
"""
MOD_B = r"""
static int __attribute__((noinline, used)) helper(int x) { return x - 1; }
static int __attribute__((used, section(".init.text"))) dup_init_core(void) { return 3; }
int second_fn(int x) { return helper(x); }
"""
VMLINUX = r"""
static int __attribute__((noinline, used)) dup(int x) { return x + 1; }
int __attribute__((weak)) weak_fn(void) { return 0; }
int caller(int x) { return dup(x); }
int _start(void) { return caller(1) + weak_fn(); }
const char linux_banner[] = "Linux version 6.1.0-test (t@t) #1 SMP\n";
int __crc_hidden = 1;
"""
VMLINUX_2 = r"""
static int __attribute__((noinline, used)) dup(int x) { return x * 3; }
int other(int x) { return dup(x); }
"""


def _run(cmd, cwd):
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)}: {res.stderr}"


def compile_module(
    tmp: Path, name: str, sources: list[str], cc="gcc", ld="ld", cflags=(), ldflags=()
) -> Path:
    """Compile C snippets into one relocatable .ko with ld -r (symtab order = link order)."""
    objs = []
    for i, src in enumerate(sources):
        c = tmp / f"{name}_{i}.c"
        c.write_text(src)
        o = tmp / f"{name}_{i}.o"
        _run(
            [cc, "-c", "-O2", "-fno-asynchronous-unwind-tables", *cflags, "-o", str(o), str(c)], tmp
        )
        objs.append(str(o))
    ko = tmp / f"{name}.ko"
    _run([ld, *ldflags, "-r", "-o", str(ko), *objs], tmp)
    return ko


def link_vmlinux(tmp: Path, sources: list[str]) -> Path:
    objs = []
    for i, src in enumerate(sources):
        c = tmp / f"vm_{i}.c"
        c.write_text(src)
        o = tmp / f"vm_{i}.o"
        _run(["gcc", "-c", "-O2", "-fno-pie", "-o", str(o), str(c)], tmp)
        objs.append(str(o))
    out = tmp / "vmlinux"
    _run(
        [
            "gcc",
            "-nostdlib",
            "-static",
            "-no-pie",
            "-Wl,--defsym=abs_sym=0x1234",
            "-o",
            str(out),
            *objs,
        ],
        tmp,
    )
    return out


def readelf_counts(ko: Path) -> tuple[int, int]:
    """(core, all defined) symbol counts of a module by ``readelf -SW``/``-sW`` alone,
    filtered by the kernel's rules (is_core_symbol), independently of klpkit's reader."""
    secs = subprocess.run(
        ["readelf", "-SW", str(ko)], capture_output=True, text=True, check=True
    ).stdout
    info = {}
    for line in secs.splitlines():
        if "]" not in line or not line.strip().startswith("["):
            continue
        idx = line.split("[", 1)[1].split("]", 1)[0].strip()
        if not idx.isdigit():
            continue
        rest = line.split("]", 1)[1].split()
        # Name Type Address Off Size ES [Flg] Lk Inf Al: Flg is absent when empty
        flags = rest[6] if len(rest) == 10 else ""
        info[idx] = (rest[0], flags)
    syms = subprocess.run(
        ["readelf", "-sW", str(ko)], capture_output=True, text=True, check=True
    ).stdout
    core = total = 0
    for line in syms.splitlines():
        f = line.split()
        if len(f) < 8 or not f[0].rstrip(":").isdigit():
            continue
        typ, ndx = f[3], f[6]
        if ndx == "UND" or typ in ("SECTION", "FILE"):
            continue
        total += 1
        if not ndx.isdigit():
            continue  # ABS/COMMON: st_shndx >= e_shnum, not core
        name, flags = info[ndx]
        if name == ".data..percpu" or (
            "A" in flags and not name.startswith(".init") and name not in (".modinfo", "__versions")
        ):
            core += 1
    return core, total


@pytest.fixture
def tools():
    for tool in ("gcc", "ld", "readelf"):
        require(shutil.which(tool), f"{tool} not installed")


@pytest.fixture
def small_tree(tmp_path, tools):
    """A miniature kernel build tree: vmlinux, two modules, kernel.release."""
    tree = tmp_path / "tree"
    (tree / "include" / "config").mkdir(parents=True)
    (tree / "include" / "config" / "kernel.release").write_text("6.1.0-test\n")
    link_vmlinux(tree, [VMLINUX, VMLINUX_2])
    (tree / "drivers").mkdir()
    compile_module(tree / "drivers", "mod-a", [MOD_A, MOD_B])
    compile_module(
        tree / "drivers",
        "other_mod",
        [
            "int other_fn(void) { return 1; }\n"
            "static const char mi[] __attribute__("
            '(used, section(".modinfo"))) = '
            '"name=other_mod";\n'
        ],
    )
    return tree

"""klpkit.build.source: the prepared Debian kernel source tree and single-object compiles.

Fast tests cover the pure helpers (kbuild's .cmd files, Debian metadata, the compiler check,
kbuild's directory walk, the ready marker) without a download.  The slow tests prepare the
real tree of the default release (~2 min the first time, then cached) and prove the key
fact the livepatch build rests on: replaying kbuild's saved command on an unpatched copy
gives the very object kbuild built, and never touches the tree.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from klpkit import debian
from klpkit.build import source as S
from klpkit.build.source import SourceError, SourceTree
from tests.conftest import require, require_tools

REL = debian.DEFAULT_RELEASE
CDROM = "drivers/cdrom/cdrom.c"
CMDLINE = "fs/proc/cmdline.c"  # built-in, part of proc.o, includes "internal.h"

# The first line of drivers/cdrom/.cdrom.o.cmd on 6.1 (flags shortened).
CDROM_CMD = (
    "cmd_drivers/cdrom/cdrom.o := gcc-12 -Wp,-MMD,drivers/cdrom/.cdrom.o.d -nostdinc "
    "-I./arch/x86/include -I./include -include ./include/linux/kconfig.h -D__KERNEL__ "
    "-fmacro-prefix-map=./= -O2 -g -ffunction-sections -fdata-sections  -DMODULE  "
    "-DKBUILD_BASENAME='\"cdrom\"' -DKBUILD_MODNAME='\"cdrom\"' -D__KBUILD_MODNAME=kmod_cdrom "
    "-c -o drivers/cdrom/cdrom.o drivers/cdrom/cdrom.c   ; ./tools/objtool/objtool "
    "--hacks=jump_label --orc --retpoline --rethunk --sls --static-call --uaccess   --module "
    "drivers/cdrom/cdrom.o\n"
    "\n"
    "source_drivers/cdrom/cdrom.o := drivers/cdrom/cdrom.c\n"
    "\n"
    "deps_drivers/cdrom/cdrom.o := \\\n"
    "  include/linux/compiler-version.h \\\n"
    "#SYMVER register_cdrom 0xbacc8d53\n"
)


# --- .cmd files ----------------------------------------------------------------------------


def test_parse_cmd_file_splits_compile_and_objtool():
    cmd = S.parse_cmd_file(CDROM_CMD, "drivers/cdrom/cdrom.o")
    assert cmd.compile[0] == "gcc-12"
    assert '-DKBUILD_MODNAME="cdrom"' in cmd.compile  # shell quoting removed
    assert cmd.compile[-3:] == ["-o", "drivers/cdrom/cdrom.o", "drivers/cdrom/cdrom.c"]
    assert len(cmd.post) == 1
    assert cmd.post[0][0] == "./tools/objtool/objtool"
    assert cmd.post[0][-2:] == ["--module", "drivers/cdrom/cdrom.o"]


def test_parse_cmd_file_savedcmd_and_make_escapes():
    # 6.3+ writes savedcmd_; kbuild escapes $ as $$ and # as $(pound) for make.
    text = (
        "savedcmd_fs/x.o := gcc -DA='\"a$$b$(pound)c\"' -c -o fs/x.o fs/x.c; "
        "./tools/objtool/objtool --orc fs/x.o\n"
    )
    cmd = S.parse_cmd_file(text, "fs/x.o")
    assert '-DA="a$b#c"' in cmd.compile
    assert cmd.post == [["./tools/objtool/objtool", "--orc", "fs/x.o"]]


def test_parse_cmd_file_without_objtool():
    cmd = S.parse_cmd_file("cmd_lib/x.o := gcc -c -o lib/x.o lib/x.c\n", "lib/x.o")
    assert cmd.post == []


@pytest.mark.parametrize(
    "text, match",
    [
        ("cmd_other.o := gcc -c -o other.o other.c\n", "no saved command for fs/x.o"),
        ("cmd_fs/x.o := ld -r -o fs/x.o fs/y.o\n", "not a compile"),
        (
            "cmd_fs/x.o := gcc -c -o fs/x.o fs/x.c ; ld -r -o fs/.tmp_x.o fs/x.o; mv fs/.tmp_x.o fs/x.o\n",
            "unexpected 'ld -r",
        ),
        ("cmd_fs/x.o := gcc -c -o fs/x.o 'fs/x.c\n", "cannot parse"),
    ],
)
def test_parse_cmd_file_refuses_what_it_cannot_replay(text, match):
    with pytest.raises(SourceError, match=match):
        S.parse_cmd_file(text, "fs/x.o")


def test_replay_moves_every_output_into_workdir(tmp_path):
    cmd = S.parse_cmd_file(CDROM_CMD, "drivers/cdrom/cdrom.o")
    gcc, objtool = S.replay_commands(cmd, CDROM, tmp_path)
    obj, src = str(tmp_path / "drivers/cdrom/cdrom.o"), str(tmp_path / CDROM)
    assert gcc[gcc.index("-o") + 1] == obj
    assert gcc[-1] == src
    assert f"-Wp,-MMD,{tmp_path}/drivers/cdrom/.cdrom.o.d" in gcc
    # quoted includes still find the file's neighbours; __FILE__ and DWARF lose the workdir
    i = gcc.index("-iquote")
    assert gcc[i + 1] == "drivers/cdrom"
    assert f"-fmacro-prefix-map={tmp_path}/=" in gcc
    assert f"-fdebug-prefix-map={tmp_path}/=" in gcc
    assert gcc.index("-c") > i
    # nothing tree-relative is written any more
    assert not [a for a in gcc + objtool if a.startswith("drivers/cdrom/") and a != "drivers/cdrom"]
    assert objtool[-1] == obj and objtool[0] == "./tools/objtool/objtool"
    assert [a for a in cmd.compile if a.startswith("-D")] == [a for a in gcc if a.startswith("-D")]


def test_replay_puts_patched_headers_first(tmp_path):
    cmd = S.parse_cmd_file(CDROM_CMD, "drivers/cdrom/cdrom.o")
    gcc, _ = S.replay_commands(cmd, CDROM, tmp_path, ("include/linux/cdrom.h",))
    i = gcc.index("-I./include")
    assert gcc[i - 1] == f"-I{tmp_path}/include"  # the patched copy wins
    assert f"-I{tmp_path}/arch/x86/include" not in gcc  # no header patched there
    plain, _ = S.replay_commands(cmd, CDROM, tmp_path)
    assert not [a for a in plain if a.startswith(f"-I{tmp_path}")]


def test_replay_refuses_a_command_for_another_source(tmp_path):
    cmd = S.parse_cmd_file(CDROM_CMD, "drivers/cdrom/cdrom.o")
    with pytest.raises(SourceError, match="does not compile drivers/cdrom/gdrom.c"):
        S.replay_commands(cmd, "drivers/cdrom/gdrom.c", tmp_path)


# --- Debian metadata -----------------------------------------------------------------------

CHANGELOG = """\
linux-signed-amd64 (6.1.170+3) bookworm-security; urgency=high

  * Sign kernel from linux 6.1.170-3

 -- Salvatore Bonaccorso <carnil@debian.org>  Fri, 08 May 2026 21:59:49 +0200

linux (6.1.170-2) bookworm-security; urgency=high

 -- Salvatore Bonaccorso <carnil@debian.org>  Fri, 08 May 2026 14:16:54 +0200
"""


def test_changelog_date_is_the_newest_entry():
    assert S.parse_changelog_date(CHANGELOG) == "Fri, 08 May 2026 21:59:49 +0200"
    with pytest.raises(SourceError, match="trailer"):
        S.parse_changelog_date("linux (1.0) unstable; urgency=low\n\n  * nothing\n")


def test_version_timestamp_is_the_utc_date():
    assert (
        S.version_timestamp("Debian", "6.1.170-3", "Fri, 08 May 2026 21:59:49 +0200")
        == "Debian 6.1.170-3 (2026-05-08)"
    )
    assert (
        S.version_timestamp("Debian", "1-1", "Fri, 08 May 2026 23:30:00 -0200")
        == "Debian 1-1 (2026-05-09)"
    )
    with pytest.raises(SourceError, match="cannot parse"):
        S.version_timestamp("Debian", "1-1", "yesterday")


def test_kernelvariables_give_arch_release_and_compiler():
    text = (
        "override ARCH = x86\noverride KERNELRELEASE = 6.1.0-47-amd64\nCCACHE = ccache\n"
        "CC = $(if $(DEBIAN_KERNEL_USE_CCACHE),$(CCACHE)) $(CROSS_COMPILE)gcc-12\n"
        "ifneq ($(DEB_BUILD_ARCH),$(DEB_HOST_ARCH))\n"
        "override CROSS_COMPILE = $(DEB_HOST_GNU_TYPE)-\nendif\n"
    )
    kv = S.parse_kernelvariables(text)
    assert kv["ARCH"] == "x86" and kv["KERNELRELEASE"] == "6.1.0-47-amd64"
    assert S.make_value_word(kv["CC"]) == "gcc-12"
    with pytest.raises(SourceError, match="cannot tell the compiler"):
        S.make_value_word("$(CCACHE) gcc clang")


def test_compiler_comparison():
    text = "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"
    assert S.compiler_mismatch(text, text + "\n", "gcc-12") is None
    msg = S.compiler_mismatch(text, "gcc-12 (Debian 12.2.0-14) 12.2.0", "gcc-12")
    assert "12.2.0-14+deb12u1" in msg and "'gcc-12 (Debian 12.2.0-14) 12.2.0'" in msg
    assert "\n" not in msg and "allow_compiler_mismatch" in msg


def test_config_parsing_and_diff():
    old = S.parse_config(
        'CONFIG_CC_VERSION_TEXT="gcc-12 (Debian \\"x\\") 12.2.0"\n'
        "CONFIG_GCC_VERSION=120200\nCONFIG_CDROM=m\n# CONFIG_SAMPLES is not set\n"
        "# a comment\n"
    )
    assert S.config_string(old, "CONFIG_CC_VERSION_TEXT") == 'gcc-12 (Debian "x") 12.2.0'
    assert old["CONFIG_SAMPLES"] == "n" and old["CONFIG_CDROM"] == "m"
    new = dict(old, CONFIG_GCC_VERSION="120300", CONFIG_CDROM="y")
    assert S.config_diff(old, new, ignore_toolchain=False) == [
        "CONFIG_CDROM: m -> y",
        "CONFIG_GCC_VERSION: 120200 -> 120300",
    ]
    assert S.config_diff(old, new, ignore_toolchain=True) == ["CONFIG_CDROM: m -> y"]


# --- errors and paths ----------------------------------------------------------------------


def test_condense_make_errors_keeps_the_cause():
    flex = (
        "/bin/sh: 1: flex: not found\n"
        "make[2]: *** [scripts/Makefile.host:9: scripts/kconfig/lexer.lex.c] Error 127\n"
        "make[1]: *** [Makefile:632: olddefconfig] Error 2\n"
        "make: *** [Makefile:234: __sub-make] Error 2\n"
    )
    assert S.condense_errors(flex) == (
        "/bin/sh: 1: flex: not found [make: scripts/Makefile.host:9: scripts/kconfig/lexer.lex.c]"
    )
    gcc = (
        "/tmp/w/fs/proc/cmdline.c: In function 'f':\n"
        "/tmp/w/fs/proc/cmdline.c:24:9: error: 'x' undeclared (first use in this function)\n"
        "   24 |         x = 1;\n      |         ^\n"
        "/tmp/w/fs/proc/cmdline.c:25:9: error: 'y' undeclared (first use in this function)\n"
    )
    assert (
        S.condense_errors(gcc, strip="/tmp/w")
        == "fs/proc/cmdline.c:24:9: error: 'x' undeclared (first use in this function) (and 1 more)"
    )
    assert S.condense_errors("") == "no output"
    assert len(S.condense_errors("error: " + "x" * 1000)) == 400


@pytest.mark.parametrize("path", ["/etc/passwd", "../x.c", "drivers/../../x.c", ".", ""])
def test_tree_paths_stay_inside(path):
    with pytest.raises(SourceError, match="not a path inside"):
        S.tree_path(path)


def test_tree_path_normalises():
    assert S.tree_path("./drivers//cdrom/cdrom.c") == CDROM


def test_missing_tools_are_named(monkeypatch):
    monkeypatch.setattr(
        S.shutil, "which", lambda tool: None if tool in ("flex", "bison") else "/bin/x"
    )
    with pytest.raises(SourceError, match=r"needs flex, bison, not installed \(apt-get install"):
        S._check_tools()


def test_failing_make_is_one_line(tmp_path):
    require_tools("make")
    (tmp_path / "Makefile").write_text("all:\n\t@echo building\n\t@klpkit-no-such-tool --version\n")
    tree = SourceTree(REL, "1-1", tmp_path, ["ARCH=x86"], S._clean_environ())
    with pytest.raises(SourceError) as err:
        tree._make(["all"], "all")
    assert str(err.value) == (
        "make all failed: make: klpkit-no-such-tool: No such file or "
        "directory [make: Makefile:3: all]"
    )


def _deb(tmp_path: Path, files: dict[str, bytes]) -> Path:
    require_tools("dpkg-deb", "tar", "xz")
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: linux-source-9.9\nVersion: 9.9.1-1\nArchitecture: all\n"
        "Maintainer: t <t@example.org>\nDescription: test\n"
    )
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    out = tmp_path / "linux-source-9.9_9.9.1-1_all.deb"
    subprocess.run(
        ["dpkg-deb", "-Zgzip", "--root-owner-group", "--build", str(root), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def test_unpack_streams_the_inner_tarball(tmp_path):
    tree = tmp_path / "src" / "linux-source-9.9"
    (tree / "kernel").mkdir(parents=True)
    (tree / "Makefile").write_text("VERSION = 9\n")
    (tree / "kernel" / "fork.c").write_text("int x;\n")
    tarball = tmp_path / "linux-source-9.9.tar.xz"
    subprocess.run(
        ["tar", "-cJf", str(tarball), "-C", str(tmp_path / "src"), "linux-source-9.9"], check=True
    )
    deb = _deb(
        tmp_path,
        {
            "usr/src/linux-source-9.9.tar.xz": tarball.read_bytes(),
            "usr/share/doc/linux-source-9.9/copyright": b"GPL",
        },
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    S._unpack_source(deb, dest)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == [
        "linux-source-9.9",
        "linux-source-9.9/Makefile",
        "linux-source-9.9/kernel",
        "linux-source-9.9/kernel/fork.c",
    ]


def test_unpack_refuses_a_package_without_the_tarball(tmp_path):
    deb = _deb(tmp_path, {"usr/share/doc/linux-source-9.9/copyright": b"GPL"})
    with pytest.raises(SourceError, match="package has no usr/src/linux-source"):
        S._unpack_source(deb, tmp_path)


# --- kbuild's directory walk -----------------------------------------------------------------

BUILT = {
    ".": {"drivers", "arch/x86", "fs", "mm"},
    "drivers": {"drivers/cdrom", "drivers/staging"},
    "drivers/cdrom": {"drivers/cdrom/cdrom.o"},
    "drivers/staging": set(),
    "arch/x86": {"arch/x86/kvm", "arch/x86/kernel"},
    "arch/x86/kvm": {"arch/x86/kvm/x86.o", "arch/x86/kvm/vmx/vmx.o"},
    "mm": {"mm/memory.o"},
}


@pytest.mark.parametrize("src", [CDROM, "arch/x86/kvm/x86.c", "arch/x86/kvm/vmx/vmx.c"])
def test_walk_finds_built_objects(src):
    assert S.unbuilt_reason(src, BUILT) is None


@pytest.mark.parametrize(
    "src, why",
    [
        ("drivers/cdrom/gdrom.c", "drivers/cdrom/ builds no gdrom.o"),
        ("mm/kmemleak.c", "mm/ builds no kmemleak.o"),
        ("samples/kobject/kobject-example.c", "does not descend into samples/"),
        ("drivers/staging/greybus/audio.c", "does not descend into drivers/staging/greybus/"),
        ("arch/x86/math-emu/fpu_entry.c", "does not descend into arch/x86/math-emu/"),
    ],
)
def test_walk_explains_unbuilt_objects(src, why):
    reason = S.unbuilt_reason(src, BUILT)
    assert reason.startswith(f"{src} is not built in this kernel's configuration") and why in reason


def test_parse_probe_normalises_the_top_level():
    out = (
        "klpkit-dir .: drivers arch/x86 kernel/bounds.s\n"
        "make: noise\nklpkit-dir drivers/cdrom: drivers/cdrom/cdrom.o \n"
    )
    assert S.parse_probe(out) == {
        ".": {"drivers", "arch/x86", "kernel/bounds.s"},
        "drivers/cdrom": {"drivers/cdrom/cdrom.o"},
    }


# --- the ready marker ------------------------------------------------------------------------


def _fake_ready_tree(tmp_path, monkeypatch, **marker_changes):
    cache, headers = tmp_path / "cache", tmp_path / "headers"
    monkeypatch.setenv("KLPKIT_CACHE", str(cache))
    headers.mkdir()
    (headers / ".config").write_text("CONFIG_X=y\n")
    monkeypatch.setattr(S, "headers_dir", lambda release: headers)
    base = cache / REL / "source"
    (base / "linux-source-6.1").mkdir(parents=True)
    (base / "linux-source-6.1" / "Makefile").write_text("")
    st = (headers / ".config").stat()
    marker = {
        "schema": S.MARKER_SCHEMA,
        "release": REL,
        "version": "6.1.170-3",
        "root": "linux-source-6.1",
        "make_args": ["ARCH=x86"],
        "build_env": {"DISTRIBUTOR": "Debian"},
        "headers_config": [st.st_mtime_ns, st.st_size],
        "compiler_mismatch": None,
    }
    marker.update(marker_changes)
    (base / S.MARKER).write_text(json.dumps(marker))
    slow = []
    monkeypatch.setattr(
        SourceTree, "_prepare_locked", classmethod(lambda cls, *a: slow.append(a) or "prepared")
    )
    return base, slow


def test_ready_marker_is_the_whole_warm_path(tmp_path, monkeypatch):
    base, slow = _fake_ready_tree(tmp_path, monkeypatch)
    monkeypatch.setattr(
        S.subprocess, "run", lambda *a, **k: pytest.fail("no subprocess when ready")
    )
    start = time.monotonic()
    tree = SourceTree.prepare(REL)
    assert time.monotonic() - start < 0.05
    assert (tree.root, tree.version, tree.release) == (base / "linux-source-6.1", "6.1.170-3", REL)
    assert tree._env["DISTRIBUTOR"] == "Debian" and tree._make_args == ["ARCH=x86"]
    assert not slow


@pytest.mark.parametrize(
    "change",
    [
        {"schema": S.MARKER_SCHEMA - 1},
        {"headers_config": [0, 11]},  # the headers package changed: another version
        {
            "compiler_mismatch": "compiler mismatch: ..."
        },  # prepared with the override, asked without
    ],
)
def test_stale_marker_prepares_again_under_the_lock(tmp_path, monkeypatch, change):
    _base, slow = _fake_ready_tree(tmp_path, monkeypatch, **change)
    assert SourceTree.prepare(REL) == "prepared"
    assert len(slow) == 1
    assert (tmp_path / "cache" / ".locks" / f"source-{REL}.lock").exists()


def test_marker_holds_no_user_environment(tmp_path, monkeypatch):
    base, _slow = _fake_ready_tree(tmp_path, monkeypatch)
    monkeypatch.setenv("KCFLAGS", "-O0")  # would silently change every object
    monkeypatch.setenv("KLPKIT_TEST_SECRET", "x")
    tree = SourceTree.prepare(REL)
    assert "KCFLAGS" not in tree._env and tree._env["LC_ALL"] == "C"
    assert "KLPKIT_TEST_SECRET" not in (base / S.MARKER).read_text()


# --- the real tree (slow) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree() -> SourceTree:
    """The prepared tree of the default release (prepared here on first use: ~2 min)."""
    require_tools(
        "make",
        "gcc-12",
        "flex",
        "bison",
        "bc",
        "pahole",
        "perl",
        "xz",
        "dpkg-deb",
        "dpkg-query",
        "apt-get",
    )
    require(
        (Path("/usr/src") / f"linux-headers-{REL}" / ".config").is_file(),
        f"linux-headers-{REL} not installed (run bash scripts/setup.sh)",
    )
    try:
        return SourceTree.prepare(REL)
    except debian.DebianError as e:  # no network / apt: a missing prerequisite, not a bug
        require(False, f"cannot fetch the kernel source: {e}")


def _alloc_sections(path: Path) -> list[tuple[str, bytes]]:
    """Name and bytes of every allocated section, and of the relocations that apply to them."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        secs = list(elf.iter_sections())
        alloc = {i for i, s in enumerate(secs) if s["sh_flags"] & 2}
        out = []
        for i, s in enumerate(secs):
            if i in alloc or (s["sh_type"] == "SHT_RELA" and s["sh_info"] in alloc):
                out.append((s.name, b"" if s["sh_type"] == "SHT_NOBITS" else s.data()))
        return out


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_prepared_tree_matches_the_debian_headers(tree):
    headers = Path("/usr/src") / f"linux-headers-{REL}"
    version = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", f"linux-headers-{REL}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert tree.release == REL and tree.version == version
    assert tree.root == debian.cache_root() / REL / "source" / tree.root.name
    assert (tree.root / ".config").read_bytes() == (headers / ".config").read_bytes()
    for name in S.GENERATED_HEADERS:
        ours = (tree.root / "include/generated" / name).read_bytes()
        assert ours == (headers / "include/generated" / name).read_bytes(), name
    assert (tree.root.parent / "VERSION").read_text().strip() == version
    assert json.loads((tree.root.parent / S.MARKER).read_text())["version"] == version


@pytest.mark.slow
def test_warm_prepare_only_reads_the_marker(tree):
    start = time.monotonic()
    again = SourceTree.prepare(REL, progress=lambda m: pytest.fail(f"warm prepare said {m}"))
    assert time.monotonic() - start < 0.05
    assert again.root == tree.root and again.version == tree.version


@pytest.mark.slow
def test_compile_original_is_kbuilds_object_and_cached(tree):
    first = tree.compile_original(CDROM)
    assert first.object == tree.root / "drivers/cdrom/cdrom.o" and first.object.is_file()
    cmd = S.parse_cmd_file(
        (tree.root / "drivers/cdrom/.cdrom.o.cmd").read_text(), "drivers/cdrom/cdrom.o"
    )
    assert "-DMODULE" in cmd.compile and "-ffunction-sections" in cmd.compile
    assert cmd.post and "--module" in cmd.post[0]
    mtime = first.object.stat().st_mtime_ns
    again = tree.compile_original("./" + CDROM)
    assert again.object == first.object and again.source == CDROM
    assert again.seconds < 0.1 and first.object.stat().st_mtime_ns == mtime
    objtool = tree.objtool_command
    assert Path(objtool[0]).is_file() and "--orc" in objtool and "--module" in objtool


@pytest.mark.slow
@pytest.mark.parametrize("src", [CDROM, CMDLINE])
def test_replaying_the_unpatched_text_gives_kbuilds_object(tree, tmp_path, src):
    original = tree.compile_original(src)
    patched = tree.compile_patched(src, tree.read_original(src), tmp_path)
    assert patched.object == tmp_path / (src[:-2] + ".o")
    assert _alloc_sections(patched.object) == _alloc_sections(original.object)
    # measured: even the debug info is identical (the prefix maps hide the work directory)
    assert filecmp.cmp(patched.object, original.object, shallow=False)


@pytest.mark.slow
def test_compile_patched_never_writes_into_the_tree(tree, tmp_path):
    tree.compile_original(CDROM)
    watched = [tree.root / "drivers/cdrom", tree.root / "include/generated"]
    before = [_snapshot(d) for d in watched]
    pristine = tree.read_original(CDROM)
    head = b"\nint media_changed(struct cdrom_device_info *cdi, int queue)\n{\n"
    text = pristine.replace(  # the seed's patch
        head, head + b'\tpr_info("%lx\\n", (unsigned long) cdrom_check_events);\n', 1
    )
    assert text != pristine
    patched = tree.compile_patched(CDROM, text, tmp_path)
    assert patched.object.is_file()
    assert not filecmp.cmp(patched.object, tree.root / "drivers/cdrom/cdrom.o", shallow=False)
    with pytest.raises(SourceError):
        tree.compile_patched(CDROM, text + b"\nint broken(\n", tmp_path)
    assert [_snapshot(d) for d in watched] == before
    assert tree.read_original(CDROM) == pristine
    assert not any(p.name.startswith("klpkit") for p in tree.root.iterdir())


@pytest.mark.slow
def test_patched_file_keeps_tree_file_name_and_neighbour_includes(tree, tmp_path):
    text = (
        tree.read_original(CMDLINE)
        + b'\n#include "internal.h"\nconst char klpkit_file[] = __FILE__;\n'
    )
    obj = tree.compile_patched(CMDLINE, text, tmp_path).object.read_bytes()
    assert b"fs/proc/cmdline.c\0" in obj
    assert str(tmp_path).encode() not in obj


@pytest.mark.slow
def test_patched_compile_error_is_one_line(tree, tmp_path):
    text = tree.read_original(CMDLINE) + b"\nint klpkit_broken = undeclared_thing;\n"
    with pytest.raises(SourceError) as err:
        tree.compile_patched(CMDLINE, text, tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) not in msg
    assert msg.startswith(f"patched {CMDLINE} does not compile: {CMDLINE}:")
    assert "undeclared_thing" in msg


@pytest.mark.slow
@pytest.mark.parametrize(
    "src, match",
    [
        ("mm/kmemleak.c", "mm/kmemleak.c is not built in this kernel's configuration"),
        ("samples/kobject/kobject-example.c", "does not descend into samples/"),
        ("drivers/cdrom/Makefile", "not a .c file"),
        ("drivers/cdrom/no-such-file.c", "does not exist in the"),
        ("../cdrom.c", "not a path inside"),
    ],
)
def test_compile_original_refuses(tree, src, match):
    with pytest.raises(SourceError, match=match):
        tree.compile_original(src)
    if src.endswith(".c") and not src.startswith("..") and tree.exists(src):
        assert not (tree.root / (src[:-2] + ".o")).exists()  # refused before compiling


@pytest.mark.slow
def test_tree_reading(tree):
    assert tree.exists(CDROM) and tree.exists("drivers/cdrom") and not tree.exists("nope.c")
    assert tree.read_original("drivers/cdrom/Makefile").startswith(b"# SPDX")
    with pytest.raises(SourceError, match="cannot read"):
        tree.read_original("drivers/cdrom/no-such-file.c")


@pytest.mark.slow
def test_unfinished_preparation_resumes_without_rebuilding(tree):
    """A run killed after the unpack (no marker) redoes only the make steps; identical make
    variables mean kbuild rebuilds nothing, not even objects compiled since."""
    obj = tree.compile_original(CDROM).object
    mtime = obj.stat().st_mtime_ns
    (tree.root.parent / S.MARKER).unlink()
    said: list[str] = []
    again = SourceTree.prepare(REL, progress=said.append)
    assert again.root == tree.root
    assert "make olddefconfig" in said and not any(m.startswith("unpacking") for m in said)
    assert obj.stat().st_mtime_ns == mtime
    assert (tree.root.parent / S.MARKER).is_file()


_CONCURRENT = """
import sys
from klpkit.build.source import SourceTree
tree = SourceTree.prepare(sys.argv[1])
print(tree.compile_original(sys.argv[2]).object)
"""


@pytest.mark.slow
def test_concurrent_builds_share_the_tree(tree):
    """Two processes compiling the same fresh object: the lock serialises kbuild, the second
    finds the object built, both get it."""
    src = "fs/proc/version.c"
    for stale in ("fs/proc/version.o", "fs/proc/.version.o.cmd"):
        (tree.root / stale).unlink(missing_ok=True)  # build output only, never source
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT, REL, src],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert [r[2] for r in results] == [0, 0], [r[1] for r in results]
    assert {r[0].strip() for r in results} == {str(tree.root / "fs/proc/version.o")}

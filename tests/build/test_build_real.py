"""``klpkit build`` on the real Debian 6.1.0-47 source: the seed's patch, the corpus of
patches, and every refusal class (exit status, one clear line, nothing written, the
cached source tree untouched)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from klpkit.elf import ElfFile
from klpkit.elf import constants as C
from klpkit.kernel.modinfo import Modinfo
from tests.conftest import BUILD_PATCHES, EXAMPLE_PATCHES

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("klpkit-build")]

SEED = EXAMPLE_PATCHES / "cdrom-media-changed.patch"


def _replaced(result) -> dict[str, list[str]]:
    return {
        o["source"]: [f["name"] for f in o["functions"] if f["status"] == "changed"]
        for o in result["report"]["objects"]
    }


def _module(result):
    elf = ElfFile.read(result["output"])
    syms = {s.name: s for s in elf.symtab.symbols}
    return elf, syms


def test_seed_patch_gives_the_case_b_livepatch(built_patches):
    r = built_patches["cdrom-media-changed"]
    assert r["rc"] == 0, r
    rep = r["report"]
    assert _replaced(r) == {"drivers/cdrom/cdrom.c": ["cdrom_ioctl_media_changed"]}
    obj = rep["objects"][0]
    assert obj["kernel_object"] == "cdrom" and obj["unchanged_functions"] == 60
    parts = {f["name"]: f["status"] for f in obj["functions"]}
    assert parts["cdrom_ioctl_media_changed.cold"] == "part"
    elf, syms = _module(r)
    klp = syms[".klp.sym.cdrom.cdrom_check_events,0"]
    assert klp.shndx == C.SHN_LIVEPATCH
    gated = [
        s
        for s in elf.relocation_sections()
        if s.name.startswith(".klp.rela.cdrom.") and any(x.symbol is klp for x in s.relocations)
    ]
    assert gated and all(s.flags & C.SHF_RELA_LIVEPATCH for s in gated)
    mi = Modinfo.parse(elf.section(".modinfo").data)
    assert "cdrom" not in mi.depends and mi.get("livepatch") == "Y"
    assert rep["check"]["ok"] is True
    assert set(rep["stages"]) >= {
        "patch",
        "source",
        "compile",
        "diff",
        "extract",
        "link",
        "convert",
        "check",
    }


def test_vmlinux_patch(built_patches):
    r = built_patches["proc-cmdline-marker"]
    assert r["rc"] == 0, r
    assert _replaced(r) == {"fs/proc/cmdline.c": ["cmdline_proc_show"]}
    assert r["report"]["objects"][0]["kernel_object"] == "vmlinux"


def test_non_unique_statics_get_their_sympos(built_patches):
    """c_start and c_next exist 3 times in vmlinux (consoles, proc_tty...): the replaced
    c_start gets old_sympos, the reference to c_next a sympos > 0."""
    r = built_patches["consoles-sympos-once"]
    assert r["rc"] == 0, r
    assert sorted(_replaced(r)["fs/proc/consoles.c"]) == ["c_start", "show_console_dev"]
    _elf, syms = _module(r)
    c_next = [n for n in syms if n.startswith(".klp.sym.vmlinux.c_next,")]
    assert len(c_next) == 1 and not c_next[0].endswith(",0"), c_next
    ext = r["report"]["objects"][0]["included"]["data"]
    assert any(d.startswith("__already_done") for d in ext), ext  # pr_info_once's flag


def test_new_helper_string_bug_entry_and_static_branch(built_patches):
    r = built_patches["version-new-helper"]
    assert r["rc"] == 0, r
    fn = {f["name"]: f["status"] for f in r["report"]["objects"][0]["functions"]}
    assert fn == {"version_proc_show": "changed", "klpkit_version_note": "new"}
    r = built_patches["uptime-string-warn"]
    assert r["rc"] == 0, r
    assert r["report"]["objects"][0]["included"]["special_entries"]["__bug_table"] == 1
    r = built_patches["loadavg-static-branch"]
    assert r["rc"] == 0, r
    assert r["report"]["objects"][0]["included"]["special_entries"]["__jump_table"] == 1
    elf, syms = _module(r)
    key = syms[".klp.sym.vmlinux.sched_schedstats,0"]
    jt = [s for s in elf.relocation_sections() if s.name == ".klp.rela.vmlinux.__jump_table"]
    assert jt and any(x.symbol is key for x in jt[0].relocations)


def test_user_access_entries_are_carried(built_patches):
    r = built_patches["readdir-uaccess"]
    assert r["rc"] == 0, r
    assert _replaced(r) == {"fs/readdir.c": ["filldir64"]}  # filldir: unchanged
    entries = r["report"]["objects"][0]["included"]["special_entries"]
    assert entries["__ex_table"] > 0 and entries[".altinstructions"] > 0, entries


def test_two_objects_in_one_patch(built_patches):
    r = built_patches["two-objects"]
    assert r["rc"] == 0, r
    assert {o["kernel_object"] for o in r["report"]["objects"]} == {"cdrom", "vmlinux"}
    elf, _ = _module(r)
    names = {s.name for s in elf.sections if s.name.startswith(".klp.rela.")}
    assert any(n.startswith(".klp.rela.cdrom.") for n in names)


def test_header_patch_with_named_sources(built_patches):
    """A header change reaches the objects named with --source: msf_to_lba() is inlined
    into cdrom.c's callers, which change."""
    r = built_patches["header-with-source"]
    assert r["rc"] == 0, r
    changed = _replaced(r)["drivers/cdrom/cdrom.c"]
    assert changed and all(name.startswith(("cdrom_", "mmc_")) for name in changed), changed


REFUSED = {
    "moves-lines-only": (1, "nothing to patch"),
    "refuse-header": (1, "include/linux/cdrom.h: a header"),
    "refuse-assembly": (1, "arch/x86/lib/memcpy_64.S: assembly"),
    "refuse-init-dir": (1, "init/version.c: init/ code"),
    "refuse-changed-data": (1, "debug: its initial value changed"),
    "refuse-new-data": (1, "klpkit_reads: new global variable"),
    "refuse-init-function": (1, "proc_cmdline_init: changed .init.text code runs only"),
    "refuse-weak-default": (1, "arch_dup_task_struct: a __weak default that vmlinux overrides"),
    "refuse-module-static-branch": (
        1,
        "dm_bufio_lock: a static branch on key no_sleep_enabled, which belongs to a module",
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refusals(built_patches, name):
    rc, text = REFUSED[name]
    r = built_patches[name]
    assert r["rc"] == rc and text in r["error"], r
    assert not Path(r.get("output") or "/nonexistent").exists()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_refusal_is_one_line_and_leaves_the_tree_clean(source_tree, debian_symdb, tmp_path):
    touched = [source_tree.root / "drivers/cdrom/cdrom.c", source_tree.root / "fs/proc/cmdline.c"]
    before = {p: (_digest(p), p.stat().st_mtime_ns) for p in touched}
    out = tmp_path / "livepatch-x.ko"
    for patch in ("refuse-changed-data", "refuse-new-data"):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "klpkit.cli",
                "build",
                str(BUILD_PATCHES / f"{patch}.patch"),
                "-o",
                str(out),
                "--symbols",
                str(debian_symdb.path),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "CI": "true"},
        )
        assert r.returncode == 1, r.stderr
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("klpkit: error:")]
        assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
        assert not out.exists()
    assert {p: (_digest(p), p.stat().st_mtime_ns) for p in touched} == before
    assert not list((source_tree.root / "drivers/cdrom").glob("*.orig"))


def test_patch_for_another_version_does_not_apply(debian_symdb, source_tree, tmp_path):
    bad = tmp_path / "bad.patch"
    bad.write_text(SEED.read_text().replace("bool changed;", "bool changed_elsewhere;"))
    out = tmp_path / "livepatch-bad.ko"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "klpkit.cli",
            "build",
            str(bad),
            "-o",
            str(out),
            "--symbols",
            str(debian_symdb.path),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "does not apply" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_json_report_names_every_stage_and_piece(debian_symdb, source_tree, tmp_path):
    out = tmp_path / "livepatch-seed.ko"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "klpkit.cli",
            "build",
            str(SEED),
            "-o",
            str(out),
            "--symbols",
            str(debian_symdb.path),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["written"] and doc["module"] == "livepatch_seed" and out.is_file()
    obj = doc["objects"][0]
    assert obj["included"]["special_entries"]["__mcount_loc"] == 1
    assert ".klp.sym.rela.cdrom.cdrom.cdrom_check_events,0" in obj["external_references"]
    assert doc["conversion"]["ok"] and doc["check"]["ok"]

"""The object differ and the extraction on small objects compiled by the test itself
(gcc with the kernel's code-shaping flags), so they are tested without a kernel tree."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from klpkit.build.extract import Outside, extract
from klpkit.build.objdiff import diff_objects
from klpkit.build.objview import ObjectView, base_name, cold_parent
from klpkit.build.patch import apply_file_patch, parse_patch
from klpkit.elf import ElfFile
from klpkit.elf import constants as C
from tests.conftest import require

#: What shapes kernel code: per-function/per-variable sections, ftrace's __fentry__ call
#: and __mcount_loc, the kernel code model, no unwind tables.
KERNEL_LIKE = [
    "-O2",
    "-ffunction-sections",
    "-fdata-sections",
    "-pg",
    "-mfentry",
    "-mrecord-mcount",
    "-mcmodel=kernel",
    "-fno-pic",
    "-fno-asynchronous-unwind-tables",
    "-fno-jump-tables",
    "-w",
]

PRELUDE = """
extern int printk(const char *fmt, ...);
extern void external_call(int);
#define __init __attribute__((section(".init.text")))
#define notrace __attribute__((no_instrument_function))
"""


def compile_c(tmp: Path, name: str, text: str) -> ElfFile:
    require(shutil.which("gcc"), "gcc")
    src = tmp / f"{name}.c"
    src.write_text(PRELUDE + text)
    obj = tmp / f"{name}.o"
    r = subprocess.run(
        ["gcc", *KERNEL_LIKE, "-c", "-o", str(obj), str(src)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    return ElfFile.read(obj)


def diff(tmp, old: str, new: str):
    return diff_objects(compile_c(tmp, "orig", old), compile_c(tmp, "patched", new), "t.c")


BASE = """
static int counter;
static int helper(int x) { return x * 3 + counter; }
int api(int x) { counter++; return helper(x) + 1; }
int other(int y) { printk("other %d\\n", y); return y - 1; }
"""


def statuses(d) -> dict[str, str]:
    return {f.name: f.status for f in d.functions}


def test_names_without_gcc_numbering():
    assert base_name("debug.12") == "debug"
    assert base_name("__UNIQUE_ID_ddebug336.100") == "__UNIQUE_ID_ddebug"
    assert base_name("foo.constprop.0") == "foo.constprop.0"
    assert base_name("foo.cold") == "foo.cold"
    assert cold_parent("foo.constprop.0.cold") == "foo.constprop.0"
    assert cold_parent("foo") is None


def test_same_source_nothing_changes(tmp_path):
    d = diff(tmp_path, BASE, BASE)
    assert d.functions == [] and d.refusals == []
    assert d.unchanged >= 2


def test_changed_function_and_why(tmp_path):
    d = diff(tmp_path, BASE, BASE.replace('"other %d\\n"', '"other: %d\\n"'))
    assert statuses(d) == {"other": "changed"}
    assert any('string "other: %d' in r for r in d.functions[0].reasons)
    assert d.replaced[0].orig_name == "other"


def test_inlined_helper_changes_its_caller(tmp_path):
    d = diff(tmp_path, BASE, BASE.replace("x * 3", "x * 5"))
    assert "api" in statuses(d) and statuses(d)["api"] == "changed"
    assert "helper" not in statuses(d)  # inlined: no symbol of its own


def test_renumbered_static_locals_are_not_changes(tmp_path):
    old = """
int a(void) { static int calls; return ++calls; }
int b(void) { static int calls; return calls += 2; }
"""
    # a new function-scope static before them renumbers calls.N in the patched object
    new = "int z(void) { static int calls; return calls--; }\n" + old
    d = diff(tmp_path, old, new)
    assert statuses(d) == {"z": "new"}


def test_new_helper_is_carried_and_the_caller_replaced(tmp_path):
    new = BASE.replace(
        "int other(int y) {",
        "__attribute__((noinline)) static int twice(int v) "
        "{ external_call(v); return 2 * v; }\nint other(int y) { y = twice(y);",
    )
    d = diff(tmp_path, BASE, new)
    st = statuses(d)
    assert st["other"] == "changed" and st["twice"] == "new"
    assert [f.name for f in d.replaced] == ["other"]


def test_cold_part_follows_its_parent(tmp_path):
    old = """
__attribute__((cold, noinline)) void oops(int);
int checked(int x) {
    if (__builtin_expect(x > 1000, 0)) { oops(x); printk("big %d\\n", x); return -1; }
    return x + 1;
}
"""
    new = old.replace('"big %d\\n"', '"too big %d\\n"')
    d = diff(tmp_path, old, new)
    st = statuses(d)
    assert st["checked"] == "changed"
    assert st.get("checked.cold") == "part", st
    assert [f.name for f in d.replaced] == ["checked"]


def test_changed_and_new_data_are_refused(tmp_path):
    old = "int limit = 5;\nint get(void) { return limit; }\n"
    d = diff(tmp_path, old, old.replace("limit = 5", "limit = 6"))
    assert [(r.symbol, r.kind) for r in d.refusals] == [("limit", "changed-data")]
    assert "shadow variables" in d.refusals[0].message
    d = diff(tmp_path, old, old + "int extra = 1;\nint get2(void) { return extra; }\n")
    assert [(r.symbol, r.kind) for r in d.refusals] == [("extra", "new-data")]


def test_function_scope_state_is_not_refused(tmp_path):
    old = "int f(int x) { return x; }\n"
    new = (
        'int f(int x) { static int once; if (!once) { once = 1; printk("first\\n"); } return x; }\n'
    )
    d = diff(tmp_path, old, new)
    assert d.refusals == [] and statuses(d) == {"f": "changed"}


def test_changed_rodata_changes_its_users(tmp_path):
    old = "static const int table[4] = {1, 2, 3, 4};\nint pick(int i) { return table[i & 3]; }\n"
    d = diff(tmp_path, old, old.replace("{1, 2, 3, 4}", "{1, 2, 3, 5}"))
    assert statuses(d) == {"pick": "changed"} and d.refusals == []
    assert d.changed_rodata == {"table"}


def test_init_and_notrace_changes_are_refused(tmp_path):
    old = "int __init setup(void) { return 1; }\nnotrace int hot(int x) { return x + 1; }\n"
    d = diff(tmp_path, old, old.replace("return 1;", "return 2;"))
    assert [(r.symbol, r.kind) for r in d.refusals] == [("setup", "init")]
    d = diff(tmp_path, old, old.replace("x + 1", "x + 2"))
    assert [(r.symbol, r.kind) for r in d.refusals] == [("hot", "no-fentry")]


def test_line_directives_keep_later_functions_unchanged(tmp_path):
    old = "int first(int x) { return x; }\nint later(void) { return __LINE__; }\n"
    patch = (
        b"--- a/t.c\n+++ b/t.c\n@@ -1,2 +1,3 @@\n int first(int x) { return x; }\n"
        b"+/* a comment that shifts the lines below */\n"
        b" int later(void) { return __LINE__; }\n"
    )
    fp = parse_patch(patch)[0]
    orig_c = (PRELUDE + old).encode()
    # the prelude shifts the hunk: apply_file_patch finds it at its offset
    with_lines = apply_file_patch(fp, orig_c).text.decode()
    without = apply_file_patch(fp, orig_c, line_directives=False).text.decode()
    assert "#line" in with_lines
    orig = compile_c(tmp_path, "orig", old)
    assert diff_objects(orig, _compile_raw(tmp_path, "p1", with_lines)).functions == []
    shifted = diff_objects(orig, _compile_raw(tmp_path, "p2", without))
    assert [f.name for f in shifted.functions] == ["later"]


def _compile_raw(tmp: Path, name: str, text: str) -> ElfFile:
    src = tmp / f"{name}.c"
    src.write_text(text)
    obj = tmp / f"{name}.o"
    r = subprocess.run(
        ["gcc", *KERNEL_LIKE, "-c", "-o", str(obj), str(src)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    return ElfFile.read(obj)


# ----------------------------------------------------------------- extraction
def _outside(sym, orig):
    if sym.shndx == C.SHN_UNDEF:
        return sym.name
    return f".klp.sym.rela.vmlinux.vmlinux.{orig.name},0"


def test_extract_carries_new_code_and_leaves_the_rest_outside(tmp_path):
    new = BASE.replace(
        "int other(int y) {",
        "__attribute__((noinline)) static int twice(int v) "
        "{ external_call(v); return 2 * v + counter; }\n"
        "int other(int y) { y = twice(y) + helper(y);",
    )
    orig, patched = compile_c(tmp_path, "orig", BASE), compile_c(tmp_path, "patched", new)
    d = diff_objects(orig, patched, "t.c")
    x = extract(ObjectView(patched), d, Outside(_outside, lambda f: f"__new_{f}"))
    out = tmp_path / "lp.o"
    x.elf.write(out)
    back = ElfFile.read(out)
    syms = {s.name: s for s in back.symtab.symbols}
    assert syms["other"].bind == C.STB_LOCAL and syms["__new_other"].bind == C.STB_GLOBAL
    assert syms["twice"].shndx != C.SHN_UNDEF  # the new helper is carried
    assert syms[".klp.sym.rela.vmlinux.vmlinux.counter,0"].shndx == C.SHN_UNDEF
    assert syms["external_call"].shndx == C.SHN_UNDEF and syms["printk"].shndx == C.SHN_UNDEF
    assert "api" not in syms  # unchanged: not carried
    assert x.special_entries.get("__mcount_loc") == 2  # other + twice
    strings = [s for s in back.sections if s.flags & C.SHF_STRINGS and s.is_alloc]
    assert any(b"other %d" in s.data for s in strings)
    if shutil.which("readelf"):
        r = subprocess.run(["readelf", "-a", "-W", str(out)], capture_output=True, text=True)
        assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr
    elftools = pytest.importorskip("elftools.elf.elffile")
    with open(out, "rb") as f:
        ef = elftools.ELFFile(f)
        assert ef.get_section_by_name(".rela.text.other").num_relocations() > 0

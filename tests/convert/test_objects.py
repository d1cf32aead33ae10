"""find_patched_objects / find_patched_functions: the klp_object and klp_func arrays of
a livepatch, read from relocations and section data on x86_64 (RELA), i386 (REL,
ELF32) and s390x (big-endian), with and without the arrays' own symbols."""

from __future__ import annotations

import pytest
from tests.klp_edit import set_old_name, set_old_sympos

from klpkit.convert.objects import find_patched_functions, find_patched_objects
from klpkit.elf import ElfFile

# The v6.1 layouts (include/linux/livepatch.h) with stand-ins for the kernel's types:
# old_name, new_func, old_sympos, then internal fields; name, funcs, then the rest.
LAYOUT = r"""
struct kobj { void *p[8]; };
struct list { void *n, *p; };
struct klp_func {
	const char *old_name; void *new_func; unsigned long old_sympos;
	void *old_func; struct kobj kobj; struct list stack_node, node;
	unsigned long old_size, new_size; _Bool nop, patched, transition;
};
struct klp_callbacks { void *pre, *post, *pre_un, *post_un; _Bool post_unpatch_enabled; };
struct klp_object {
	const char *name; struct klp_func *funcs; struct klp_callbacks callbacks;
	struct kobj kobj; struct list func_list, node; void *mod; _Bool dynamic, patched;
};
int lp_a(void) { return 1; }
int lp_b(void) { return 2; }
static int __attribute__((noinline)) lp_c(int x) { return x + 3; }
int use(int x) { return lp_c(x); }
static struct klp_func vfuncs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = lp_a, },
	{ .old_name = "state_show", .new_func = lp_b, .old_sympos = 3 },
	{ .old_name = "version_proc_show", .new_func = lp_c, .old_sympos = 258 },
	{ }
};
static struct klp_func mfuncs[] = {
	{ .old_name = "cdrom_ioctl_media_changed", .new_func = lp_c, .old_sympos = 2 }, { }
};
struct klp_object objs[] = { { .funcs = vfuncs, }, { .name = "cdrom", .funcs = mfuncs, }, { } };
"""

WANT = [("vmlinux", "cmdline_proc_show", 0, "lp_a", 0),
        ("vmlinux", "state_show", 3, "lp_b", 1),
        ("vmlinux", "version_proc_show", 258, "lp_c", 2),
        ("cdrom", "cdrom_ioctl_media_changed", 2, "lp_c", 0)]


def _summary(elf):
    return [(f.object, f.old_name, f.old_sympos, f.new_func, f.index)
            for f in find_patched_functions(elf)]


@pytest.mark.parametrize("arch", ["x86_64", "i386", "s390x"])
def test_functions_of_every_object(cc, arch):
    elf = ElfFile.read(cc(LAYOUT, arch=arch))
    assert [o.name for o in find_patched_objects(elf)] == ["vmlinux", "cdrom"]
    assert _summary(elf) == WANT
    funcs = find_patched_functions(elf)
    word = 8 if elf.elfclass == 64 else 4
    # entries of one array are one sizeof(struct klp_func) apart
    v = [f.offset for f in funcs if f.object == "vmlinux"]
    assert v[1] - v[0] == v[2] - v[1] > 3 * word
    assert all(f.section.startswith(".data") and f.name_section.startswith(".rodata.str")
               for f in funcs)


@pytest.mark.parametrize("arch", ["x86_64", "s390x"])
def test_without_the_arrays_symbols(cc, arch):
    """A module whose arrays have no sized symbol: the run of entries at one stride,
    up to the next array's head."""
    elf = ElfFile.read(cc(LAYOUT, arch=arch))
    for sym in elf.symtab.symbols:
        if sym.name in ("vfuncs", "mfuncs"):
            sym.size = 0
    assert _summary(elf) == WANT


@pytest.mark.parametrize("arch", ["x86_64", "s390x"])
def test_edits_round_trip(cc, arch, tmp_path):
    elf = ElfFile.read(cc(LAYOUT, arch=arch))
    set_old_name(elf, "state_show", "klpkit_renamed")
    set_old_sympos(elf, "cmdline_proc_show", 0x0102)
    out = tmp_path / "edited.o"
    elf.write(out)
    got = _summary(ElfFile.read(out))
    assert got[0] == ("vmlinux", "cmdline_proc_show", 0x0102, "lp_a", 0)
    assert got[1] == ("vmlinux", "klpkit_renamed", 3, "lp_b", 1)
    assert got[2:] == WANT[2:]


def test_no_livepatch_no_functions(cc):
    assert find_patched_functions(ElfFile.read(cc("int x = 1; int f(void) { return x; }"))) == []

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

WANT = [
    ("vmlinux", "cmdline_proc_show", 0, "lp_a", 0),
    ("vmlinux", "state_show", 3, "lp_b", 1),
    ("vmlinux", "version_proc_show", 258, "lp_c", 2),
    ("cdrom", "cdrom_ioctl_media_changed", 2, "lp_c", 0),
]


def _summary(elf):
    return [
        (f.object, f.old_name, f.old_sympos, f.new_func, f.index)
        for f in find_patched_functions(elf)
    ]


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
    assert all(
        f.section.startswith(".data") and f.name_section.startswith(".rodata.str") for f in funcs
    )


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


# ------------------------------------------------------- klp_patch.objs, as the kernel reads
# struct klp_patch: mod (THIS_MODULE), objs, states, replace, then internal fields.
PATCH = (
    LAYOUT
    + r"""
struct klp_state { unsigned long id; unsigned int version; void *data; };
struct klp_patch { void *mod; struct klp_object *objs; struct klp_state *states;
                   _Bool replace; void *internal[24]; };
extern char __this_module[];
int pre(void *obj) { return 0; }
void post(void *obj) { }
static struct klp_func no_funcs[] = { { } };
static struct klp_object pobjs[] = {
	{ .funcs = vfuncs, },
	{ .name = "cdrom", .funcs = no_funcs, .callbacks = { .pre = pre, .post_un = post }, },
	{ .name = "sr_mod", .funcs = no_funcs, },
	{ }
};
static struct klp_state states[] = { { .id = 0x12, .version = 1 }, { } };
struct klp_patch patch = { .mod = __this_module, .objs = pobjs, .states = states,
                           .replace = 1 };
extern int klp_enable_patch(struct klp_patch *);
int init(void) { return klp_enable_patch(&patch); }
"""
)


@pytest.mark.parametrize("arch", ["x86_64", "i386", "s390x"])
def test_klp_patch_objects_with_empty_funcs(cc, arch):
    """klp_patch.objs is what klp_enable_patch() walks: objects with empty funcs
    (callbacks only, nothing at all) count; the stand-in's other array, which no
    klp_patch lists, does not."""
    from klpkit.convert.objects import read_patched_objects

    po = read_patched_objects(ElfFile.read(cc(PATCH, arch=arch)))
    assert po.source == "klp_patch" and po.registers
    assert [(o.name, o.funcs, o.callbacks) for o in po.objects] == [
        ("vmlinux", 3, ()),
        ("cdrom", 0, ("pre_patch", "post_unpatch")),
        ("sr_mod", 0, ()),
    ]
    assert po.effective() == (["vmlinux", "cdrom", "sr_mod"], "klp_object")
    [patch] = po.patches
    assert patch.states and patch.replace and patch.objs is not None
    # the functions are those of the objects the kernel walks
    assert [
        (f.object, f.old_name) for f in find_patched_functions(ElfFile.read(cc(PATCH, arch=arch)))
    ] == [(o, n) for o, n, *_r in WANT[:3]]


def test_objects_set_at_run_time_fall_back_to_annotations(cc):
    """A klp_patch whose objs array is filled by code: nothing static to read, so the
    annotations name the objects (and the module still registers a patch)."""
    from klpkit.convert.objects import read_patched_objects

    src = r"""
extern char __this_module[];
struct klp_patch { void *mod; void *objs; void *states; _Bool replace; void *in[24]; };
static struct { const char *name; void *funcs; void *rest[30]; } objs[2];
struct klp_patch patch = { .mod = __this_module, .objs = objs, };
struct r { void *sym; unsigned int pos; } __attribute__((packed));
extern int cdrom_read_mech_status(void);
struct r rel[] __attribute__((section(".klp.module_relocs.cdrom"), used)) =
	{ { cdrom_read_mech_status, 0 } };
extern int st(void) __asm__(".klp.sym.rela.sr_mod.sr_mod.sr_block_open.0");
extern int klp_enable_patch(void *);
int init(void) { objs[0].name = "cdrom"; return st() + klp_enable_patch(&patch); }
"""
    po = read_patched_objects(ElfFile.read(cc(src)))
    assert po.objects == [] and not po.known and po.registers
    assert po.source == "none" and len(po.patches) == 1 and po.patches[0].objs is not None
    assert po.annotated == ["cdrom", "sr_mod"]
    assert po.effective() == (["cdrom", "sr_mod"], "annotations")


def test_entries_without_klp_patch_add_the_annotations(cc):
    """No klp_patch anchor: the klp_object entries found by their funcs, plus what the
    annotations name (an empty-funcs object the entries cannot show)."""
    from klpkit.convert.objects import read_patched_objects

    src = LAYOUT + (
        'extern int st(void) __asm__(".klp.sym.rela.sr_mod.sr_mod.x.0");\n'
        "int g(void) { return st(); }\n"
    )
    po = read_patched_objects(ElfFile.read(cc(src)))
    assert po.source == "klp_object" and not po.registers
    assert po.effective() == (["vmlinux", "cdrom", "sr_mod"], "klp_object, annotations")

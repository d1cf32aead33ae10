"""rules.vmlinux_kallsyms (C-level column filters, one regex pass over the string table)
returns exactly what the straightforward per-symbol version returns: same tuples, same
order.  The reference below is that version, kept verbatim as the specification."""

import random
from operator import itemgetter

import pytest

from klpkit.elf import constants as C
from klpkit.elf.fast import ElfScan
from klpkit.symbols import rules


def reference_vmlinux_kallsyms(scan) -> list[tuple[str, int, int, int]]:
    """One name_at() and one vmlinux_name_ignored() per symbol, then sort and tie-break."""
    keep_sec = [
        bool(flags & C.SHF_ALLOC) and not name.startswith(".debug")
        for name, flags in zip(scan.sh_names, scan.sh_flags, strict=True)
    ]
    nsec = len(keep_sec)
    skip_types = (C.STT_SECTION, C.STT_FILE)
    cand = [
        i
        for i, (o, info, x) in enumerate(zip(scan.st_names, scan.infos, scan.shndxs, strict=True))
        if o
        and x
        and (info & 0xF) not in skip_types
        and (keep_sec[x] if x < nsec else x == C.SHN_ABS)
    ]
    syms = [
        (scan.name_at(scan.st_names[i]), scan.infos[i], scan.shndxs[i], scan.values[i])
        for i in cand
    ]
    out = [
        s
        for s in syms
        if not rules.vmlinux_name_ignored(s[0])
        and (s[2] != C.SHN_ABS or s[0] in rules._KEEP_ABSOLUTE)
    ]
    out.sort(key=itemgetter(3))
    vals = [s[3] for s in out]
    i, n = 0, len(vals)
    while i < n:
        j = i + 1
        while j < n and vals[j] == vals[i]:
            j += 1
        if j - i > 1:
            out[i:j] = sorted(out[i:j], key=rules._tie_key)
        i = j
    return out


def fake_scan(strtab: bytes, symbols, sections) -> ElfScan:
    """An ElfScan holding only columns: ``symbols`` are (st_name, info, shndx, value),
    ``sections`` (name, flags); name_at() is ElfScan's own."""
    scan = ElfScan(b"")
    scan.strtab = strtab
    scan.st_names = [s[0] for s in symbols]
    scan.infos = bytes(s[1] for s in symbols)
    scan.shndxs = [s[2] for s in symbols]
    scan.values = [s[3] for s in symbols]
    scan.sh_names = [s[0] for s in sections]
    scan.sh_flags = [s[1] for s in sections]
    return scan


def same(scan) -> list:
    got = rules.vmlinux_kallsyms(scan)
    assert got == reference_vmlinux_kallsyms(scan)
    return got


SECTIONS = [
    ("", 0),
    (".text", C.SHF_ALLOC | 4),
    (".data", C.SHF_ALLOC | 1),
    (".comment", 0),
    (".debug_info", 0),
    (".data..percpu", C.SHF_ALLOC | 1),
]
FUNC, OBJECT, NOTYPE = C.STT_FUNC, C.STT_OBJECT, C.STT_NOTYPE
GLOBAL, WEAK = C.STB_GLOBAL << 4, C.STB_WEAK << 4


def table(*names: bytes) -> tuple[bytes, dict[bytes, int]]:
    """A string table (leading NUL) and the offset of each name."""
    raw, where = b"\0", {}
    for name in names:
        where.setdefault(name, len(raw))
        raw += name + b"\0"
    return raw, where


def test_suffix_shared_and_edge_names():
    strtab, at = table(
        b"__ksymtab_printk",
        b"x__crc_foo",
        b"kallsyms_names",
        b"xkallsyms_names",
        b"$$dollar",
        b"__crc_bar",
        b".Lfoo",
        b"L0",
        b"plain",
        b"__kernel_sigtramp",
        b"abs_other",
        b"__start_sec",
        b"start_weak",
        b"__kstrtab_y",
        b"caf\xc3\xa9",
        b"bad\xff",
    )
    syms = [
        (0, 0, 0, 0),  # null symbol
        (at[b"__ksymtab_printk"], GLOBAL | OBJECT, 2, 0x100),
        (at[b"__ksymtab_printk"] + 10, GLOBAL | FUNC, 1, 0x10),  # "printk", a tail
        (at[b"x__crc_foo"] + 1, GLOBAL | NOTYPE, 2, 0x20),  # "__crc_foo", a tail
        (at[b"x__crc_foo"] + 7, GLOBAL | NOTYPE, 2, 0x20),  # "foo"
        (at[b"x__crc_foo"] + 10, GLOBAL | NOTYPE, 2, 0x20),  # "" (its NUL)
        (at[b"kallsyms_names"], GLOBAL | OBJECT, 2, 0x30),  # exact: ignored
        (at[b"xkallsyms_names"] + 1, GLOBAL | OBJECT, 2, 0x30),  # the same, as a tail
        (at[b"xkallsyms_names"], GLOBAL | OBJECT, 2, 0x30),
        (at[b"$$dollar"], NOTYPE, 1, 0x40),
        (at[b"$$dollar"] + 1, NOTYPE, 1, 0x40),  # "$dollar": ignored
        (at[b"$$dollar"] + 2, NOTYPE, 1, 0x40),  # "dollar"
        (at[b"__crc_bar"], GLOBAL | NOTYPE, C.SHN_ABS, 0x1234),
        (at[b"__crc_bar"] + 1, GLOBAL | NOTYPE, 2, 0x50),  # "_crc_bar": kept
        (at[b".Lfoo"], NOTYPE, 1, 0x60),
        (at[b"L0"], NOTYPE, 1, 0x60),
        (at[b"L0"] + 1, NOTYPE, 1, 0x60),  # "0"
        (at[b"__kernel_sigtramp"], GLOBAL | FUNC, C.SHN_ABS, 0x70),
        (at[b"abs_other"], GLOBAL | FUNC, C.SHN_ABS, 0x70),
        (at[b"plain"], GLOBAL | FUNC, 0, 0x80),  # undefined
        (at[b"plain"], GLOBAL | FUNC, 3, 0x80),  # non-alloc section
        (at[b"plain"], GLOBAL | FUNC, 4, 0x80),  # .debug_*
        (at[b"plain"], GLOBAL | FUNC, 9, 0x80),  # past the last section
        (at[b"plain"], GLOBAL | FUNC, C.SHN_COMMON, 0x80),
        (at[b"plain"], C.STT_SECTION, 1, 0x80),
        (at[b"plain"], C.STT_FILE, C.SHN_ABS, 0),
        (at[b"plain"], GLOBAL | FUNC, 1, 0x90),
        (at[b"plain"], WEAK | FUNC, 1, 0x90),
        (at[b"__start_sec"], GLOBAL | NOTYPE, 1, 0x90),
        (at[b"start_weak"], WEAK | NOTYPE, 1, 0x90),
        (at[b"__kstrtab_y"] + 10, GLOBAL | OBJECT, 5, 0),  # "y", percpu
        (at[b"caf\xc3\xa9"], GLOBAL | FUNC, 1, 0xA0),
        (at[b"bad\xff"], GLOBAL | FUNC, 1, 0xA0),
    ]
    got = same(fake_scan(strtab, syms, SECTIONS))
    names = [r[0] for r in got]
    assert names[0] == "y" and "printk" in names and "foo" in names and "0" in names
    assert {"__crc_foo", "$dollar", "kallsyms_names", "abs_other"}.isdisjoint(names)
    assert "_crc_bar" in names and "__kernel_sigtramp" in names and "café" in names
    assert names[names.index("plain") : names.index("plain") + 4] == [
        "plain",
        "__start_sec",
        "plain",
        "start_weak",
    ]


def test_first_string_not_empty_and_arch_only_rules():
    # offset 0 is never a symbol name, whatever the table starts with; the suffix rules
    # ("$": also before a final newline) and the "contains" rules apply to tails too
    strtab = b"zero\0a_veneer\0b_from_thumb\0c.long_branch.x\0kept\0d_veneer\n\0"
    offs = [
        0,
        1,
        strtab.index(b"a_v"),
        strtab.index(b"_veneer"),
        strtab.index(b"b_f"),
        strtab.index(b"c.l"),
        strtab.index(b".long"),
        strtab.index(b"kept"),
        strtab.index(b"pt"),
        strtab.index(b"d_v"),
    ]
    syms = [(o, GLOBAL | FUNC, 1, v) for v, o in enumerate(offs)]
    names = [r[0] for r in same(fake_scan(strtab, syms, SECTIONS))]
    assert names == ["ero", "kept", "pt"]


def test_many_sections_abs_index_is_a_section():
    # with more than 0xfff1 sections, SHN_ABS is an ordinary index for the section rule
    sections = [("", 0)] + [(".text", C.SHF_ALLOC)] * (C.SHN_ABS + 1)
    strtab, at = table(b"__gp", b"other")
    syms = [
        (at[b"__gp"], GLOBAL | NOTYPE, C.SHN_ABS, 1),
        (at[b"other"], GLOBAL | NOTYPE, C.SHN_ABS, 2),
    ]
    assert [r[0] for r in same(fake_scan(strtab, syms, sections))] == ["__gp"]


VOCAB = [
    b"",
    b"a",
    b"_",
    b"__",
    b"f",
    b"foo",
    b"foo_bar",
    b"$",
    b"$x",
    b".L",
    b".Lx",
    b"L0",
    b"L00",
    b"kallsyms_names",
    b"kallsyms_",
    b"_SDA_BASE_",
    b"_SDA2_BASE_x",
    b"__crc_",
    b"__crc__crc_",
    b"__kstrtab_",
    b"__kstrtabns_",
    b"__ksymtab_",
    b"__efistub_",
    b"__kvm_nvhe_$",
    b"__kvm_nvhe_.L",
    b"__kcfi_typeid_",
    b"__LA25Thunk_",
    b"__start_",
    b"__stop_",
    b"_end",
    b"_start",
    b"__end_",
    b"_veneer",
    b"_from_arm",
    b"_from_thumb",
    b".long_branch.",
    b".plt_branch.",
    b"\n",
    b"\xc3\xa9",
    b"\xff",
]


def random_case(rng: random.Random):
    names = [
        b"".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 4)))
        for _ in range(rng.randint(1, 40))
    ]
    strtab = (b"" if rng.random() < 0.2 else b"\0") + b"\0".join(names) + b"\0"
    nsec = len(SECTIONS)
    shndx_pool = [0, 1, 1, 2, 2, 3, 4, 5, nsec, C.SHN_ABS, C.SHN_COMMON]
    syms = [(0, 0, 0, 0)]
    for _ in range(rng.randint(0, 60)):
        o = rng.randrange(len(strtab))  # any offset: tails too
        info = rng.choice((C.STB_LOCAL, C.STB_GLOBAL, C.STB_WEAK)) << 4 | rng.choice(
            (FUNC, OBJECT, NOTYPE, NOTYPE, C.STT_SECTION, C.STT_FILE)
        )
        syms.append((o, info, rng.choice(shndx_pool), rng.choice((0, 1, 2, 3, 2**64 - 8))))
    return fake_scan(strtab, syms, SECTIONS)


@pytest.mark.parametrize("seed", range(400))
def test_random_tables(seed):
    same(random_case(random.Random(seed)))


# (the real vmlinux, from the -dbg package, is checked by the oracle:
# tests/symbols/test_image.py::test_oracle_image_equals_dbg)

"""Cross-checks of klpkit.elf.reloc_types against GNU readelf and pyelftools.

readelf: gcc compiles a small C file that asks for many kinds of relocation (calls, data
and GOT references, TLS in every model, jump tables, function pointers, .eh_frame), and
every relocation readelf -rW lists must have, by its number (from r_info), the name
readelf prints. The native x86_64 and i386 (gcc -m32) builds and the s390x and ppc64
cross compilers (installed by scripts/setup.sh) are skipped here when missing, but fail
under CI=true; other cross compilers are used when present and not collected otherwise.
A second readelf check feeds it synthetic objects holding one relocation of every
number (0..1099, or 0..255 for ELF32) for each machine, so every name readelf knows is
compared without needing cross compilers.
pyelftools: its ENUM_RELOC_TYPE_* tables must agree wherever both define a number.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from klpkit.elf.reloc_types import (
    MACHINE_NAMES,
    NONE_TYPE,
    RELOC_TYPE_ALIASES,
    RELOC_TYPE_NAMES,
    reloc_type_name,
    reloc_type_number,
)

EM_386, EM_PPC, EM_PPC64, EM_S390, EM_ARM = 3, 20, 21, 22, 40
EM_X86_64, EM_AARCH64, EM_RISCV = 62, 183, 243

PREFIX = {
    EM_X86_64: "R_X86_64_",
    EM_386: "R_386_",
    EM_AARCH64: "R_AARCH64_",
    EM_PPC64: "R_PPC64_",
    EM_PPC: "R_PPC_",
    EM_S390: "R_390_",
    EM_ARM: "R_ARM_",
    EM_RISCV: "R_RISCV_",
}

ON_CI = os.environ.get("CI") == "true"


def _unavailable(what: str, required_on_ci: bool) -> None:
    if required_on_ci and ON_CI:
        pytest.fail(f"{what} is required on CI but is not available")
    pytest.skip(f"{what} is not available")


# --------------------------------------------------------------------------------------
# The tables themselves


def test_machines_are_consistent():
    assert set(MACHINE_NAMES) == set(RELOC_TYPE_NAMES) == set(NONE_TYPE)
    assert set(RELOC_TYPE_ALIASES) <= set(RELOC_TYPE_NAMES)
    assert set(PREFIX) == set(RELOC_TYPE_NAMES)
    assert MACHINE_NAMES[EM_X86_64] == "x86_64"
    assert MACHINE_NAMES[EM_386] == "i386"
    assert MACHINE_NAMES[EM_S390] == "s390x"


@pytest.mark.parametrize("machine", sorted(RELOC_TYPE_NAMES), ids=MACHINE_NAMES.get)
def test_names_are_well_formed(machine):
    names = RELOC_TYPE_NAMES[machine]
    for number, name in names.items():
        assert isinstance(number, int) and number >= 0
        assert name.startswith(PREFIX[machine]), (number, name)
        assert name == name.strip().upper()
    none = NONE_TYPE[machine]
    assert none == 0
    assert names[none] == PREFIX[machine] + "NONE"


@pytest.mark.parametrize("machine", sorted(RELOC_TYPE_NAMES), ids=MACHINE_NAMES.get)
def test_round_trip(machine):
    names = RELOC_TYPE_NAMES[machine]
    for number, name in names.items():
        assert reloc_type_name(machine, number) == name
        back = reloc_type_number(machine, name)
        assert names[back] == name  # the lowest number for a name used twice
        assert reloc_type_number(machine, name.lower()) == back
    for alias, number in RELOC_TYPE_ALIASES.get(machine, {}).items():
        assert alias.startswith(PREFIX[machine])
        assert number in names, alias
        # an alias never shadows the canonical name of another number
        assert alias not in names.values() or reloc_type_number(machine, alias) == number
        assert reloc_type_number(machine, alias) == number


def test_known_values():
    cases = {
        (EM_X86_64, 2): "R_X86_64_PC32",
        (EM_X86_64, 4): "R_X86_64_PLT32",
        (EM_X86_64, 11): "R_X86_64_32S",
        (EM_X86_64, 42): "R_X86_64_REX_GOTPCRELX",
        (EM_X86_64, 43): "R_X86_64_CODE_4_GOTPCRELX",
        (EM_X86_64, 51): "R_X86_64_CODE_6_GOTPC32_TLSDESC",
        (EM_386, 43): "R_386_GOT32X",
        (EM_AARCH64, 257): "R_AARCH64_ABS64",
        (EM_AARCH64, 283): "R_AARCH64_CALL26",
        (EM_AARCH64, 1024): "R_AARCH64_COPY",
        (EM_AARCH64, 1027): "R_AARCH64_RELATIVE",
        (EM_AARCH64, 1028): "R_AARCH64_TLS_DTPMOD64",
        (EM_AARCH64, 0x7F): "R_AARCH64_P32_TLSDESC_CALL",
        (EM_AARCH64, 580): "R_AARCH64_AUTH_ABS64",
        (EM_AARCH64, 1041): "R_AARCH64_AUTH_RELATIVE",
        (EM_PPC64, 10): "R_PPC64_REL24",
        (EM_PPC64, 38): "R_PPC64_ADDR64",
        (EM_PPC64, 116): "R_PPC64_REL24_NOTOC",
        (EM_PPC64, 118): "R_PPC64_ENTRY",
        (EM_PPC64, 151): "R_PPC64_GOT_DTPREL_PCREL34",
        (EM_PPC64, 252): "R_PPC64_REL16_HA",
        (EM_PPC, 10): "R_PPC_REL24",
        (EM_PPC, 255): "R_PPC_TOC16",
        (EM_S390, 19): "R_390_PC32DBL",
        (EM_S390, 65): "R_390_PLT24DBL",
        (EM_ARM, 28): "R_ARM_CALL",
        (EM_ARM, 160): "R_ARM_IRELATIVE",
        (EM_RISCV, 19): "R_RISCV_CALL_PLT",
    }
    for (machine, number), name in cases.items():
        assert reloc_type_name(machine, number) == name
        assert reloc_type_number(machine, name) == number
    assert reloc_type_number(EM_AARCH64, "R_AARCH64_NONE") == 0
    assert reloc_type_name(EM_AARCH64, 256) == "R_AARCH64_NULL"
    assert reloc_type_number(EM_AARCH64, "R_AARCH64_TLS_DTPMOD") == 1028
    assert reloc_type_number(EM_PPC64, "R_PPC64_ADDR30") == 37
    assert reloc_type_number(EM_X86_64, "R_X86_64_REX2_GOTPCRELX") == 43
    assert reloc_type_number(EM_386, "R_386_JMP_SLOT") == 7
    assert reloc_type_number(EM_ARM, "R_ARM_THM_PC22") == 10


def test_unknown_never_raises():
    assert reloc_type_name(EM_X86_64, 0x3E7) == "<unknown type 0x3e7>"
    assert reloc_type_name(9999, 1) == "<unknown type 0x1>"
    assert reloc_type_name(EM_X86_64, -1).startswith("<unknown type")
    assert reloc_type_name(EM_X86_64, None).startswith("<unknown type")  # type: ignore[arg-type]
    assert reloc_type_name(EM_X86_64, [2]).startswith("<unknown type")  # type: ignore[arg-type]
    assert reloc_type_name([62], 2).startswith("<unknown type")  # type: ignore[arg-type]
    assert reloc_type_number(EM_X86_64, "R_X86_64_NOPE") is None
    assert reloc_type_number(9999, "R_X86_64_PC32") is None
    assert reloc_type_number(EM_386, "R_X86_64_PC32") is None
    assert reloc_type_number(EM_X86_64, None) is None  # type: ignore[arg-type]
    assert reloc_type_number([62], "R_X86_64_PC32") is None  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# pyelftools

PYELFTOOLS_TABLES = {
    EM_X86_64: "ENUM_RELOC_TYPE_x64",
    EM_386: "ENUM_RELOC_TYPE_i386",
    EM_AARCH64: "ENUM_RELOC_TYPE_AARCH64",
    EM_PPC64: "ENUM_RELOC_TYPE_PPC64",
    EM_PPC: "ENUM_RELOC_TYPE_PPC",
    EM_S390: "ENUM_RELOC_TYPE_S390X",
    EM_ARM: "ENUM_RELOC_TYPE_ARM",
    EM_RISCV: "ENUM_RELOC_TYPE_RISCV",
}

# Where pyelftools (0.29-0.33) differs from us on purpose:
# * its AArch64 dynamic TLS block is shifted and swapped; the ABI, binutils, glibc and LLVM
#   all have 1028 TLS_DTPMOD64, 1029 TLS_DTPREL64, 1031 TLSDESC, 1032 IRELATIVE;
# * it calls the withdrawn AArch64 256 R_AARCH64_NONE, which readelf prints as
#   R_AARCH64_NULL (we keep R_AARCH64_NONE for 0, the current number).
PYELFTOOLS_DIFFERENCES = {
    (EM_AARCH64, 256): "R_AARCH64_NONE",
    (EM_AARCH64, 1028): "R_AARCH64_TLS_DTPREL64",
    (EM_AARCH64, 1029): "R_AARCH64_TLS_DTPMOD64",
    (EM_AARCH64, 1031): "R_AARCH64_TLS_DTPREL32",
    (EM_AARCH64, 1032): "R_AARCH64_TLS_DTPMOD32",
}


def _pyelftools_machines() -> list[int]:
    """Machines for which pyelftools has a table (it has none for RISC-V)."""
    from elftools.elf import enums

    return sorted(m for m, table in PYELFTOOLS_TABLES.items() if hasattr(enums, table))


@pytest.mark.parametrize("machine", _pyelftools_machines(), ids=MACHINE_NAMES.get)
def test_agrees_with_pyelftools(machine):
    from elftools.elf import enums

    table = getattr(enums, PYELFTOOLS_TABLES[machine])
    ours = RELOC_TYPE_NAMES[machine]
    compared = 0
    mismatches = []
    for name, number in table.items():
        if not isinstance(number, int) or number not in ours:
            continue  # pyelftools' default entry, or a number we do not define
        if PYELFTOOLS_DIFFERENCES.get((machine, number)) == name:
            continue
        compared += 1
        # pyelftools may use an older spelling that we know as an alias
        if name != ours[number] and reloc_type_number(machine, name) != number:
            mismatches.append((number, name, ours[number]))
    assert not mismatches, f"(number, pyelftools, ours): {mismatches}"
    assert compared >= 10


# --------------------------------------------------------------------------------------
# readelf on gcc-compiled objects

SOURCE = r"""
extern int ext_var;
extern int ext_arr[];
extern int ext_func(int);
static int local_var = 3;
int global_var = 4;
__thread int tls_var;
extern __thread int ext_tls_var;
static __thread int local_tls_var;
int (*fptr)(int) = ext_func;
int *dptr = &ext_var;
const char *str = "a string";

static int helper(int x) { return x * local_var; }

int use_all(int x)
{
    tls_var += x;
    ext_tls_var += local_tls_var++;
    switch (x) {
    case 0: return ext_func(x);
    case 1: return ext_var + 1;
    case 2: return ext_arr[x] + 2;
    case 3: return helper(x) + 3;
    case 4: return global_var * 5;
    case 5: return fptr(x) + 7;
    case 6: return *dptr + str[x];
    case 7: return ext_func(ext_var);
    default: return ext_arr[3] - x;
    }
}

int call_through(int (*f)(int), int x) { return f(x) + ext_func(x + 1); }
"""

Spec = tuple[str, tuple[str, ...], bool]  # compiler, flag sets, required on CI

NATIVE_FLAGS = (
    "-O2 -fno-pic -fno-pie",
    "-O2 -fPIC",
    "-O2 -fPIC -mtls-dialect=gnu2",
    "-O2 -mcmodel=kernel -fno-pie -mno-red-zone -fno-asynchronous-unwind-tables",
    "-O0 -fpie -mcmodel=large",
    "-O2 -fno-pie -pg -mfentry -mrecord-mcount",
)

TARGETS: dict[str, tuple[str, tuple[str, ...], bool, int]] = {
    # name: (compiler, flag sets, required on CI, expected e_machine)
    "x86_64": ("gcc", NATIVE_FLAGS, True, EM_X86_64),
    "i386": (
        "gcc",
        (
            "-m32 -O2 -fno-pic -fno-pie",
            "-m32 -O2 -fPIC",
            "-m32 -O2 -fPIC -mtls-dialect=gnu2",
        ),
        True,
        EM_386,
    ),
    "ppc64": (
        "powerpc64-linux-gnu-gcc",
        ("-O2", "-O2 -fPIC", "-O2 -mcmodel=medium -fno-pie", "-O2 -mcmodel=small"),
        True,
        EM_PPC64,
    ),
    "ppc64le": (
        "powerpc64le-linux-gnu-gcc",
        ("-O2", "-O2 -fPIC", "-O2 -mcpu=power10 -mpcrel"),
        False,
        EM_PPC64,
    ),
    "s390x": (
        "s390x-linux-gnu-gcc",
        ("-O2", "-O2 -fPIC", "-O2 -fno-pic -fno-pie", "-O2 -m31"),
        True,
        EM_S390,
    ),
    "aarch64": (
        "aarch64-linux-gnu-gcc",
        ("-O2", "-O2 -fPIC", "-O2 -mcmodel=large"),
        False,
        EM_AARCH64,
    ),
    "ppc": ("powerpc-linux-gnu-gcc", ("-O2", "-O2 -fPIC", "-O2 -msecure-plt -fpic"), False, EM_PPC),
    "arm": ("arm-linux-gnueabihf-gcc", ("-O2", "-O2 -fPIC", "-O2 -mthumb"), False, EM_ARM),
    "riscv64": ("riscv64-linux-gnu-gcc", ("-O2", "-O2 -fPIC"), False, EM_RISCV),
}


def _elf_header(path: Path) -> tuple[int, int]:
    """(ELF class, e_machine) of an object file."""
    ident = path.read_bytes()[:20]
    assert ident[:4] == b"\x7fELF"
    endian = "<" if ident[5] == 1 else ">"
    (machine,) = struct.unpack(endian + "H", ident[18:20])
    return ident[4], machine


def _readelf_relocs(path: Path) -> list[tuple[int, str, str]]:
    """(r_info, type column, the whole line) for each relocation readelf lists."""
    out = subprocess.run(
        ["readelf", "-rW", str(path)], check=True, capture_output=True, text=True
    ).stdout
    rows = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        try:
            int(fields[0], 16)
            info = int(fields[1], 16)
        except ValueError:
            continue  # headers and "Relocation section" lines
        rows.append((info, fields[2], line))
    return rows


def _compile(cc: str, flags: str, src: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [cc, *flags.split(), "-c", str(src), "-o", str(out)], capture_output=True, text=True
    )


def _collected_targets() -> list[str]:
    """The toolchains scripts/setup.sh installs (a missing one fails under CI), plus any
    other cross compiler that happens to be installed; absent optional ones are not
    collected at all, so a CI run reports no skipped check."""
    return sorted(
        t for t, (cc, _flags, required, _m) in TARGETS.items() if required or shutil.which(cc)
    )


@pytest.mark.parametrize("target", _collected_targets())
def test_agrees_with_readelf(target, tmp_path):
    cc, flag_sets, required, expected_machine = TARGETS[target]
    if shutil.which("readelf") is None:
        _unavailable("readelf", required)
    if shutil.which(cc) is None:
        _unavailable(cc, required)
    src = tmp_path / "relocs.c"
    src.write_text(SOURCE)

    # The base flag set must build; a failure there means the toolchain is unusable
    # (for example gcc -m32 without gcc-multilib).
    first = tmp_path / "base.o"
    res = _compile(cc, flag_sets[0], src, first)
    if res.returncode != 0:
        _unavailable(f"{cc} {flag_sets[0]} ({res.stderr.strip()[:300]})", required)

    seen: dict[int, str] = {}
    mismatches = []
    objects = 0
    for i, flags in enumerate(flag_sets):
        obj = tmp_path / f"obj{i}.o"
        if _compile(cc, flags, src, obj).returncode != 0:
            continue  # an optional variant this compiler version lacks
        objects += 1
        elf_class, machine = _elf_header(obj)
        assert machine == expected_machine, (flags, machine)
        mask = 0xFFFFFFFF if elf_class == 2 else 0xFF
        for info, readelf_name, line in _readelf_relocs(obj):
            number = info & mask
            ours = reloc_type_name(machine, number)
            seen[number] = ours
            if ours != readelf_name:
                mismatches.append((flags, number, readelf_name, ours, line.strip()))
    assert not mismatches, "\n".join(map(repr, mismatches))
    assert objects >= 2
    # enough distinct relocation kinds that the comparison means something
    assert len(seen) >= 5, seen


# --------------------------------------------------------------------------------------
# readelf on synthetic objects: one relocation of every number, for every machine


def _synthetic_object(machine: int, is64: bool, big: bool, types: list[int]) -> bytes:
    """A relocatable ELF file whose .rela.text holds one relocation of each type."""
    e = ">" if big else "<"
    shstrtab = b"\0.text\0.rela.text\0.symtab\0.strtab\0.shstrtab\0"
    if is64:
        rela = b"".join(struct.pack(e + "QQq", 0, t, 0) for t in types)
        relent, symtab = 24, b"\0" * 24
    else:
        rela = b"".join(struct.pack(e + "IIi", 0, t & 0xFF, 0) for t in types)
        relent, symtab = 12, b"\0" * 16
    ehsize = 64 if is64 else 52
    parts = [b"\0" * 16, rela, symtab, b"\0", shstrtab]
    offsets, body = [], b""
    for part in parts:
        offsets.append(ehsize + len(body))
        body += part + b"\0" * (-len(part) % 8)
    shoff = ehsize + len(body)
    shfmt = e + ("IIQQQQIIQQ" if is64 else "IIIIIIIIII")

    def shdr(name, sh_type, flags, index, link, info, entsize):
        off = offsets[index] if index is not None else 0
        size = len(parts[index]) if index is not None else 0
        name_off = shstrtab.index(name) if name else 0
        return struct.pack(shfmt, name_off, sh_type, flags, 0, off, size, link, info, 1, entsize)

    shdrs = b"".join(
        [
            shdr(b"", 0, 0, None, 0, 0, 0),
            shdr(b".text\0", 1, 6, 0, 0, 0, 0),
            shdr(b".rela.text\0", 4, 0x40, 1, 3, 1, relent),
            shdr(b".symtab\0", 2, 0, 2, 4, 1, len(symtab)),
            shdr(b".strtab\0", 3, 0, 3, 0, 0, 0),
            shdr(b".shstrtab\0", 3, 0, 4, 0, 0, 0),
        ]
    )
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 2 if big else 1, 1]) + b"\0" * 9
    flags = 0x05000000 if machine == EM_ARM else 0  # EABI version 5
    if is64:
        head = struct.pack(e + "HHIQQQIHHHHHH", 1, machine, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 6, 5)
    else:
        head = struct.pack(
            e + "HHIIIIIHHHHHH", 1, machine, 1, 0, 0, shoff, flags, 52, 0, 0, 40, 6, 5
        )
    return ident + head + body + shdrs


# (ELF64, big-endian) as each machine's usual objects are
SYNTHETIC_LAYOUT = {
    EM_X86_64: (True, False),
    EM_386: (False, False),
    EM_AARCH64: (True, False),
    EM_PPC64: (True, True),
    EM_PPC: (False, True),
    EM_S390: (True, True),
    EM_ARM: (False, False),
    EM_RISCV: (True, False),
}


@pytest.mark.parametrize("machine", sorted(SYNTHETIC_LAYOUT), ids=MACHINE_NAMES.get)
def test_every_number_agrees_with_readelf(machine, tmp_path):
    """Every number readelf has a name for is in our table under that name (or under
    a name whose alias is readelf's); numbers readelf does not know yet are ignored."""
    if shutil.which("readelf") is None:
        _unavailable("readelf", True)
    is64, big = SYNTHETIC_LAYOUT[machine]
    types = list(range(1100 if is64 else 256))
    obj = tmp_path / "synthetic.o"
    obj.write_bytes(_synthetic_object(machine, is64, big, types))
    rows = _readelf_relocs(obj)
    assert len(rows) == len(types)
    mask = 0xFFFFFFFF if is64 else 0xFF
    names = RELOC_TYPE_NAMES[machine]
    missing, mismatches, agreed = [], [], 0
    for info, readelf_name, _line in rows:
        number = info & mask
        if readelf_name.startswith("unrecognized"):
            continue
        if number not in names:
            missing.append((number, readelf_name))
        elif readelf_name == names[number] or reloc_type_number(machine, readelf_name) == number:
            agreed += 1
        else:
            mismatches.append((number, readelf_name, names[number]))
    assert not missing, f"(number, readelf) missing from our table: {missing}"
    assert not mismatches, f"(number, readelf, ours): {mismatches}"
    assert agreed >= 30

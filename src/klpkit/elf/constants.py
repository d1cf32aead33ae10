"""ELF constants klpkit uses, including the OS-specific livepatch values.

Values are from the System V gABI and the kernel's include/uapi/linux/elf.h
(SHF_RELA_LIVEPATCH, SHN_LIVEPATCH).
"""

# e_ident
ELFMAG = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
EV_CURRENT = 1

# e_type
ET_NONE, ET_REL, ET_EXEC, ET_DYN, ET_CORE = 0, 1, 2, 3, 4

# e_machine (those klpkit knows by name; see reloc_types.MACHINE_NAMES)
EM_386 = 3
EM_PPC = 20
EM_PPC64 = 21
EM_S390 = 22
EM_ARM = 40
EM_X86_64 = 62
EM_AARCH64 = 183
EM_RISCV = 243
EM_LOONGARCH = 258

# Special section indexes
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_LOOS = 0xFF20
SHN_LIVEPATCH = 0xFF20  # kernel: symbol resolved by the livepatch core
SHN_HIOS = 0xFF3F
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2
SHN_XINDEX = 0xFFFF
SHN_HIRESERVE = 0xFFFF

# Section types
SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_HASH = 5
SHT_DYNAMIC = 6
SHT_NOTE = 7
SHT_NOBITS = 8
SHT_REL = 9
SHT_SHLIB = 10
SHT_DYNSYM = 11
SHT_INIT_ARRAY = 14
SHT_FINI_ARRAY = 15
SHT_PREINIT_ARRAY = 16
SHT_GROUP = 17
SHT_SYMTAB_SHNDX = 18
SHT_LLVM_ADDRSIG = 0x6FFF4C03
SHT_LLVM_CALL_GRAPH_PROFILE = 0x6FFF4C09
SHT_GNU_HASH = 0x6FFFFFF6
SHT_GNU_VERDEF = 0x6FFFFFFD
SHT_GNU_VERNEED = 0x6FFFFFFE
SHT_GNU_VERSYM = 0x6FFFFFFF

# Section flags
SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHF_MERGE = 0x10
SHF_STRINGS = 0x20
SHF_INFO_LINK = 0x40
SHF_LINK_ORDER = 0x80
SHF_OS_NONCONFORMING = 0x100
SHF_GROUP = 0x200
SHF_TLS = 0x400
SHF_COMPRESSED = 0x800
SHF_MASKOS = 0x0FF00000
SHF_RELA_LIVEPATCH = 0x00100000  # kernel: a livepatch relocation section
SHF_MASKPROC = 0xF0000000

GRP_COMDAT = 0x1

# Symbol binding and type (st_info)
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STB_GNU_UNIQUE = 10
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4
STT_COMMON, STT_TLS = 5, 6
STT_GNU_IFUNC = 10

STV_DEFAULT, STV_INTERNAL, STV_HIDDEN, STV_PROTECTED = 0, 1, 2, 3

BIND_NAMES = {STB_LOCAL: "LOCAL", STB_GLOBAL: "GLOBAL", STB_WEAK: "WEAK", STB_GNU_UNIQUE: "UNIQUE"}
TYPE_NAMES = {
    STT_NOTYPE: "NOTYPE",
    STT_OBJECT: "OBJECT",
    STT_FUNC: "FUNC",
    STT_SECTION: "SECTION",
    STT_FILE: "FILE",
    STT_COMMON: "COMMON",
    STT_TLS: "TLS",
    STT_GNU_IFUNC: "IFUNC",
}
VIS_NAMES = {
    STV_DEFAULT: "DEFAULT",
    STV_INTERNAL: "INTERNAL",
    STV_HIDDEN: "HIDDEN",
    STV_PROTECTED: "PROTECTED",
}
SECTION_TYPE_NAMES = {
    SHT_NULL: "NULL",
    SHT_PROGBITS: "PROGBITS",
    SHT_SYMTAB: "SYMTAB",
    SHT_STRTAB: "STRTAB",
    SHT_RELA: "RELA",
    SHT_HASH: "HASH",
    SHT_DYNAMIC: "DYNAMIC",
    SHT_NOTE: "NOTE",
    SHT_NOBITS: "NOBITS",
    SHT_REL: "REL",
    SHT_SHLIB: "SHLIB",
    SHT_DYNSYM: "DYNSYM",
    SHT_INIT_ARRAY: "INIT_ARRAY",
    SHT_FINI_ARRAY: "FINI_ARRAY",
    SHT_PREINIT_ARRAY: "PREINIT_ARRAY",
    SHT_GROUP: "GROUP",
    SHT_SYMTAB_SHNDX: "SYMTAB_SHNDX",
    SHT_LLVM_ADDRSIG: "LLVM_ADDRSIG",
    SHT_LLVM_CALL_GRAPH_PROFILE: "LLVM_CALL_GRAPH_PROFILE",
    SHT_GNU_HASH: "GNU_HASH",
    SHT_GNU_VERDEF: "VERDEF",
    SHT_GNU_VERNEED: "VERNEED",
    SHT_GNU_VERSYM: "VERSYM",
}
SPECIAL_SHNDX_NAMES = {
    SHN_UNDEF: "UND",
    SHN_ABS: "ABS",
    SHN_COMMON: "COM",
    SHN_LIVEPATCH: "LIVEPATCH",
    SHN_XINDEX: "XINDEX",
}


def st_bind(info: int) -> int:
    return info >> 4


def st_type(info: int) -> int:
    return info & 0xF


def st_info(bind: int, type_: int) -> int:
    return (bind << 4) | (type_ & 0xF)


def section_flags_text(flags: int) -> str:
    """readelf-style flag letters (W A X M S I L O G T C o p), 'o' for SHF_RELA_LIVEPATCH."""
    letters = [
        (SHF_WRITE, "W"),
        (SHF_ALLOC, "A"),
        (SHF_EXECINSTR, "X"),
        (SHF_MERGE, "M"),
        (SHF_STRINGS, "S"),
        (SHF_INFO_LINK, "I"),
        (SHF_LINK_ORDER, "L"),
        (SHF_OS_NONCONFORMING, "O"),
        (SHF_GROUP, "G"),
        (SHF_TLS, "T"),
        (SHF_COMPRESSED, "C"),
    ]
    text = "".join(ch for bit, ch in letters if flags & bit)
    if flags & SHF_MASKOS:
        text += "o"
    if flags & SHF_MASKPROC:
        text += "p"
    return text

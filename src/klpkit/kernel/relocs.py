"""What the x86_64 module loader writes for each relocation type.

``__apply_relocate_add()`` (arch/x86/kernel/module.c, v4.x .. newest) handles these types
and writes this many bytes each (0: nothing, R_X86_64_NONE); ``check`` judges relocation
targets by it and ``build`` masks relocation sites with it.
"""

X86_64_RELOC_SIZES = {0: 0, 1: 8, 2: 4, 4: 4, 10: 4, 11: 4, 24: 8}

#: Types computed relative to the place (R_X86_64_PC32, PLT32, PC64).
X86_64_PC_RELATIVE = frozenset({2, 4, 24})

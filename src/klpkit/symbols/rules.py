"""Which symbols the kernel's livepatch core sees, and in which order: sympos rules.

The livepatch core resolves ``.klp.sym.<obj>.<name>,<sympos>`` with
``klp_find_object_symbol()`` (kernel/livepatch/core.c): it counts the symbols
called ``<name>`` in ``<obj>`` in the order it iterates them, and takes the
``sympos``-th (1-based); ``sympos == 0`` means "must be unique".  What it
iterates, and so what this module reproduces:

vmlinux
    The kallsyms table that ``scripts/kallsyms`` generated at build time.
    * before v6.2: ``kallsyms_on_each_symbol()`` walks that table front to back;
    * v6.2 and later: ``kallsyms_on_each_match_symbol()`` walks a name-sorted index
      (``kallsyms_seqs_of_names``) in which equal names are ordered by address,
      then by table position.
    Both give the same order among same-named symbols: the table's order, which
    ``scripts/kallsyms`` sorts by address.  Its tie-break (``compare_symbols()``,
    v4.x..v6.1): non-weak before weak, then "linker-script provided" names
    (``__start_*``, ``__stop_*``, ``*_end`` ...) last, then fewer leading
    underscores first, then input order — the ``nm -n`` order of System.map
    (ties there are by name).  For two symbols *with the same name* only the
    address, the weakness and the input order can differ; we use
    ``(address, weak, name, symbol-table index)``.
    Which symbols are in the table (v6.1, ``KALLSYMS_ALL=y`` as livepatch needs):
    what ``scripts/mksysmap`` keeps from ``nm -n vmlinux`` (since v6.1 kallsyms
    reads that very file) minus what ``scripts/kallsyms.c`` ignores:
      - nm omits section and file symbols; undefined (``U``/``w``/``v``),
        debugging (``N``) and absolute (``a`` by mksysmap, ``A`` by kallsyms.c,
        except four ia64 names) symbols are dropped;
      - names starting ``$`` (ARM mapping symbols), ``.L``, ``__crc_``,
        ``__kstrtab_``, ``__kstrtabns_``, and the name ``L0`` (mksysmap);
      - the kallsyms tables themselves (``kallsyms_names`` ...), ``_SDA_BASE_``,
        ``_SDA2_BASE_``, and the arch thunk/veneer/stub patterns of kallsyms.c.
    Older kernels (< v6.1) fed ``nm -n`` to kallsyms directly, so ``__kstrtab_*``
    and friends were in the table there; such names are unique, so sympos of
    C symbols is unaffected.

modules
    ``module_kallsyms_on_each_symbol(objname, ...)`` walks ``mod->kallsyms->symtab``
    in order, skipping ``SHN_UNDEF``.  After the module's init has run (the usual
    case: the target is loaded before the livepatch) that is the *core* table
    built by ``layout_symtab()``/``add_kallsyms()`` (kernel/module/kallsyms.c,
    v2.6.x..v6.x): the .ko's ``.symtab`` order, keeping only symbols for which
    ``is_core_symbol()`` holds — named, defined, ``st_shndx < e_shnum`` (so no
    ``SHN_ABS``/``SHN_COMMON``), and either in the per-cpu section
    (``.data..percpu``, with ``KALLSYMS_ALL``) or in a section that is
    ``SHF_ALLOC`` at load time (the loader clears it on ``.modinfo`` and
    ``__versions``) and not an init section (``.init*``; also ``.exit*`` when the
    kernel lacks ``MODULE_UNLOAD``).
    Caveat: when the target module loads *after* the livepatch,
    ``klp_module_coming()`` resolves while ``mod->kallsyms`` still points to the
    full init-time table (every symbol of ``.symtab``).  Same-named symbols in
    init sections, ``.modinfo`` or absolute symbols then shift positions; we store
    those symbols too (flag ``core=False``) so callers can see ``load_sympos`` /
    ``load_count`` and refuse or warn.
    Livepatch modules keep all their symbols.  A pending upstream series (2026,
    "module/kallsyms: sort function symbols and use binary search") would move a
    module's function symbols first, sorted by address: if it lands, the module
    rule needs a version switch here.

binding and type of vmlinux symbols
    are what kallsyms' type letter says (:data:`LETTER_FLAGS`), whatever the source,
    because that letter is all the kernel keeps (``kallsyms_get_symbol_type()``, the
    letter /proc/kallsyms prints) and all a kernel image carries: the database built
    from the ``-dbg`` vmlinux's ELF symbol table (:func:`vmlinux_letters` computes the
    letter nm would print, then kallsyms' per-cpu override) and the one built from the
    image's kallsyms tables (:mod:`klpkit.symbols.vmlinuz`) are then equal
    (tests/symbols/test_image.py, the oracle).  Binding is the letter's case (nm: upper
    case = global), 'W'/'V' weak; type is 'func' for code ('t', and 'W': a weak
    non-object), 'object' for data ('d', 'r', 'b', 'V', ...).  Two fields lose what the
    ELF symbol table knows, and on Debian 6.1.0-47 these symbols read differently from
    their ``st_info``:
      - *type*, within a section class: 't'/'T' is any symbol in executable code, so an
        assembler label (``STT_NOTYPE``: ``entry_SYSCALL_64``, ``_stext``; 225 symbols)
        reads 'func'; 'd'/'r'/'b' is any symbol in data, so a linker-script or assembler
        label there (``STT_NOTYPE``: ``__start_rodata``, the 10,555 ``__ksymtab_*``;
        11,411 symbols) reads 'object'.  ftrace, not the type, decides whether a
        function can be patched (``klp_patch_func()`` -> ``ftrace_location()``);
      - *binding* of per-cpu symbols: with ``--absolute-percpu``
        (``CONFIG_KALLSYMS_ABSOLUTE_PERCPU``, x86_64 SMP, whose per-cpu area is linked
        at 0) scripts/kallsyms.c ``make_percpus_absolute()`` types every symbol in
        ``[__per_cpu_start, __per_cpu_end]`` 'A', so static and global per-cpu
        variables look alike: binding 'unknown', type 'object' (382 symbols).
    Modules keep their ELF binding and type (their .ko files are always at hand).

Verified on Debian 6.1.0-47-amd64 (6.1.170-3): the vmlinux table computed from the
unstripped vmlinux equals the real System.map minus the 8 ``kallsyms_*`` tables
(94,105 symbols, 1,120 duplicated names, each in ascending address order) and the
kallsyms table decoded from the image's boot/vmlinuz, name for name, letter for letter,
address for address (tests/symbols/test_image.py); that kernel already carries
``kallsyms_seqs_of_names`` (the v6.2 name index, backported), which orders duplicates
the same way.  Module counts equal ``readelf -sW`` filtered by the rules above
(tests/symbols/test_real.py).
"""

from __future__ import annotations

import re
from itertools import compress, islice
from operator import eq, itemgetter

from klpkit.elf import constants as C

# --- vmlinux: scripts/mksysmap + scripts/kallsyms.c (v6.1) --------------------
_IGNORED_NAMES = frozenset(
    {
        "kallsyms_addresses",
        "kallsyms_offsets",
        "kallsyms_relative_base",
        "kallsyms_num_syms",
        "kallsyms_names",
        "kallsyms_markers",
        "kallsyms_token_table",
        "kallsyms_token_index",
        "kallsyms_seqs_of_names",
        "_SDA_BASE_",
        "_SDA2_BASE_",
        "L0",
    }
)
_IGNORED_PREFIXES = (
    "$",
    ".L",
    "__crc_",
    "__kstrtab_",
    "__kstrtabns_",  # mksysmap
    "__efistub_",
    "__kvm_nvhe_$",
    "__kvm_nvhe_.L",
    "__AArch64ADRPThunk_",
    "__ARMV5PILongThunk_",
    "__ARMV7PILongThunk_",
    "__ThumbV7PILongThunk_",
    "__LA25Thunk_",
    "__microLA25Thunk_",
    "__kcfi_typeid_",  # kallsyms.c
)
_IGNORED_SUFFIXES = ("_from_arm", "_from_thumb", "_veneer")
_IGNORED_MATCHES = (".long_branch.", ".plt_branch.")
_KEEP_ABSOLUTE = frozenset(
    {"__kernel_syscall_via_break", "__kernel_syscall_via_epc", "__kernel_sigtramp", "__gp"}
)


_IGNORED_RE = re.compile(
    "|".join(
        [
            "^(?:" + "|".join(re.escape(p) for p in _IGNORED_PREFIXES) + ")",
            "(?:" + "|".join(re.escape(p) for p in _IGNORED_SUFFIXES) + ")$",
            "|".join(re.escape(p) for p in _IGNORED_MATCHES),
        ]
    )
)


def _trie(words) -> str:
    """A regex matching text that starts with one of ``words`` (literals), factored as a
    trie so that the regex engine tries one branch per character."""
    root: dict = {}
    for word in words:
        node = root
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}  # a word ends here: any continuation matches

    def emit(node: dict) -> str:
        if "" in node:
            return ""
        alts = [re.escape(ch) + emit(node[ch]) for ch in sorted(node)]
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    return emit(root)


# What a name ignored by prefix or by exact name starts with, in the NUL-separated string
# table: the prefixes, and the exact names with their terminating NUL.
_IGNORED_STARTS = _IGNORED_PREFIXES + tuple(sorted(n + "\0" for n in _IGNORED_NAMES))
# A NUL and the first character of the next string when that string is ignored by its
# prefix or exact name; vmlinux_kallsyms() replaces both with NULs.
_IGNORED_AFTER_NUL = re.compile("\0(?=" + _trie(_IGNORED_STARTS) + ")[^\0]")
# The other name rules need the whole name; a string table without these strings has
# no such names.
_IGNORED_ANYWHERE = _IGNORED_SUFFIXES + _IGNORED_MATCHES
# st_info -> 1 when nm lists the symbol's type (not a section or file symbol)
_KEPT_TYPES = bytes((i & 0xF) not in (C.STT_SECTION, C.STT_FILE) for i in range(256))
_VALUE = itemgetter(3)


def vmlinux_name_ignored(name: str) -> bool:
    """True when scripts/mksysmap or scripts/kallsyms drop a symbol by its name."""
    return not name or name in _IGNORED_NAMES or _IGNORED_RE.search(name) is not None


def linker_provided(name: str) -> bool:
    """scripts/kallsyms' may_be_linker_script_provide_symbol()."""
    if len(name) < 8 or not name.startswith("__"):
        return False
    return name.startswith(("__start_", "__stop_", "__end_")) or name.endswith(("_start", "_end"))


def vmlinux_kallsyms(scan) -> list[tuple[str, int, int, int]]:
    """The kallsyms table of a linked vmlinux, in kernel order.

    Returns ``(name, info, shndx, value)`` tuples sorted as scripts/kallsyms sorts them.

    Same result as filtering every symbol with :func:`vmlinux_name_ignored` and sorting
    by address then :func:`_tie_key`, but without a Python call per symbol (a vmlinux has
    ~130,000): column filters run in C (``bytes.translate``, ``itertools.compress``), names
    are sliced from the string table decoded once, and the names ignored by prefix or
    exact name are found by one regex pass over the string table (see
    ``_IGNORED_AFTER_NUL``), so only names that share the tail of another string are
    tested one by one.  ``scan`` is a :class:`klpkit.elf.fast.ElfScan`, whose string
    table is NUL-terminated (checked when it was read).
    """
    strtab = scan.strtab
    text = strtab.decode("latin-1")  # one character per byte: offsets still fit
    find = text.find
    # nm omits section and file symbols (a C-level filter on st_info, see _KEPT_TYPES)
    kept = scan.infos.translate(_KEPT_TYPES)
    offsets = list(compress(scan.st_names, kept))
    shndxs = list(compress(scan.shndxs, kept))
    # Names, "" when ignored.  A symbol whose name starts a string of the table reads it
    # from `blanked`, where every string scripts/mksysmap or kallsyms.c would drop by
    # prefix or by exact name already reads "".  A symbol pointing into the middle of a
    # string (ld shares suffixes: "foo" is the tail of "__ksymtab_foo") is tested itself.
    blanked = _IGNORED_AFTER_NUL.sub("\0\0", text)
    bfind = blanked.find
    ignored_at = text.startswith
    names = [
        blanked[o : bfind("\0", o)]
        if text[o - 1] == "\0"
        else ""
        if ignored_at(_IGNORED_STARTS, o)
        else text[o : find("\0", o)]
        for o in offsets
    ]
    if any(map(text.__contains__, _IGNORED_ANYWHERE)):  # ARM and PowerPC stubs only
        search = _IGNORED_RE.search
        names = [name if name and search(name) is None else "" for name in names]
    # nm shows 'N' for symbols in debugging sections and drops non-alloc ones from
    # System.map the same way; undefined and absolute symbols are dropped (module doc).
    keep_sec = [
        bool(flags & C.SHF_ALLOC) and not name.startswith(".debug")
        for name, flags in zip(scan.sh_names, scan.sh_flags, strict=True)
    ]
    nsec = len(keep_sec)
    keep: frozenset[str]
    for x in set(shndxs):
        if not x or not (keep_sec[x] if x < nsec else x == C.SHN_ABS):
            keep = frozenset()
        elif x == C.SHN_ABS:
            keep = _KEEP_ABSOLUTE
        else:
            continue
        for i in _indexes(shndxs, x):
            if names[i] not in keep:
                names[i] = ""
    if text[:1] != "\0":  # offset 0 names nothing (read "" normally)
        for i in _indexes(offsets, 0):
            names[i] = ""
    if not strtab.isascii():  # as ElfScan.name_at: UTF-8, else escapes
        names = [
            name if name.isascii() else name.encode("latin-1").decode("utf-8", "surrogateescape")
            for name in names
        ]
    infos, values = compress(scan.infos, kept), compress(scan.values, kept)
    out = list(compress(zip(names, infos, shndxs, values, strict=True), names))
    out.sort(key=_VALUE)  # by address; stable: then symbol-table order
    # scripts/kallsyms tie-break among equal addresses: non-weak first, linker-script
    # symbols last, fewer leading underscores first, then input (nm -n: name) order.
    vals = list(map(_VALUE, out))
    for start, stop in _runs(list(map(eq, vals, islice(vals, 1, None)))):
        out[start:stop] = sorted(out[start:stop], key=_tie_key)
    return out


def _indexes(items: list, value):
    """Every index of ``value`` in ``items`` (C-level scans)."""
    i = -1
    try:
        while True:
            i = items.index(value, i + 1)
            yield i
    except ValueError:
        return


def _runs(same: list[bool]):
    """``(start, stop)`` of each run of rows tied together: ``same[j]`` says whether
    rows ``j`` and ``j + 1`` tie."""
    start = last = -2
    for j in _indexes(same, True):
        if j != last + 1:
            if start >= 0:
                yield start, last + 2
            start = j
        last = j
    if start >= 0:
        yield start, last + 2


def _tie_key(sym):
    name, info = sym[0], sym[1]
    return (
        (info >> 4) == C.STB_WEAK,
        linker_provided(name),
        len(name) - len(name.lstrip("_")),
        name,
    )


# --- vmlinux: binding and type as the kernel's type letter says them -----------
# (why, and what the letter cannot say: the module doc, "binding and type")
KALLSYMS_BIND_UNKNOWN = 15
_LETTER_TYPES = {
    "t": C.STT_FUNC,
    "w": C.STT_FUNC,
    "v": C.STT_OBJECT,
    "d": C.STT_OBJECT,
    "b": C.STT_OBJECT,
    "r": C.STT_OBJECT,
    "g": C.STT_OBJECT,
    "s": C.STT_OBJECT,
    "a": C.STT_OBJECT,
}


def _letter_flags(code: int) -> int:
    letter = chr(code)
    if not letter.isalpha():
        return KALLSYMS_BIND_UNKNOWN
    lower = letter.lower()
    if lower == "a":
        bind = KALLSYMS_BIND_UNKNOWN
    elif lower in "wv":
        bind = C.STB_WEAK
    else:
        bind = C.STB_GLOBAL if letter.isupper() else C.STB_LOCAL
    return bind | _LETTER_TYPES.get(lower, C.STT_NOTYPE) << 4


# type letter (a byte) -> the database's flags (bind | type << 4); every value fits a
# byte, so ``letters.translate(LETTER_FLAGS)`` maps a whole table at once
LETTER_FLAGS = bytes(_letter_flags(c) for c in range(256))


def letter_flags(letter: str) -> int:
    """The database flags of a vmlinux symbol whose kallsyms type letter is ``letter``."""
    code = ord(letter[:1] or "?")
    return LETTER_FLAGS[code] if code < 256 else KALLSYMS_BIND_UNKNOWN


def _section_letter(sh_type: int, sh_flags: int) -> str:
    """nm's letter class of a defined symbol in a section (binutils bfd_decode_symclass()
    on the BFD flags ELF sections get: code 't', no contents 'b', read-only data 'r',
    other data 'd').  x86's vmlinux links .rodata writable, so its symbols are 'd'."""
    if sh_flags & C.SHF_EXECINSTR:
        return "t"
    if sh_type == C.SHT_NOBITS:
        return "b"
    return "d" if sh_flags & C.SHF_WRITE else "r"


def absolute_percpu(scan) -> bool:
    """Whether the kernel's kallsyms marks per-cpu symbols 'A': CONFIG_KALLSYMS_ABSOLUTE_PERCPU
    is ``X86_64 && SMP``, exactly the kernels whose ``.data..percpu`` is linked at address
    0 (arch/x86/kernel/vmlinux.lds.S, ``PERCPU_VADDR(..., 0, ...)`` for X86_64_SMP)."""
    i = scan.section_index(PERCPU_SECTION)
    return bool(i) and scan.machine == C.EM_X86_64 and scan.sh_addrs[i] == 0


def vmlinux_letters(scan, table: list[tuple[str, int, int, int]]) -> bytes:
    """The kallsyms type letter of each row of :func:`vmlinux_kallsyms`: what nm prints
    for it (scripts/mksysmap feeds ``nm -n`` to kallsyms since v6.1), then
    make_percpus_absolute()'s 'A' (see :func:`absolute_percpu`)."""
    types, flags = scan.sh_types, scan.sh_flags
    nsec = len(types)
    tables = {}
    for x in {row[2] for row in table}:
        cls = "a" if x == C.SHN_ABS or x >= nsec else _section_letter(types[x], flags[x])
        tables[x] = bytes(ord(_nm_letter(cls, info)) for info in range(256))
    letters = bytearray(tables[x][info] for _n, info, x, _v in table)
    if absolute_percpu(scan):
        bounds = {
            name: value
            for name, _i, _x, value in table
            if name in ("__per_cpu_start", "__per_cpu_end")
        }
        lo, hi = bounds.get("__per_cpu_start"), bounds.get("__per_cpu_end")
        if lo is not None and hi is not None:
            for i, row in enumerate(table):
                if lo <= row[3] <= hi:
                    letters[i] = ord("A")
    return bytes(letters)


def _nm_letter(cls: str, info: int) -> str:
    bind, typ = info >> 4, info & 0xF
    if bind == C.STB_WEAK:
        return "V" if typ == C.STT_OBJECT else "W"
    if bind == C.STB_GNU_UNIQUE:
        return "u"
    return cls.upper() if bind == C.STB_GLOBAL else cls


# --- modules: kernel/module/kallsyms.c is_core_symbol() ------------------------
PERCPU_SECTION = ".data..percpu"
NOT_LOADED_SECTIONS = (".modinfo", "__versions")


def module_section_classes(scan, *, module_unload: bool = True) -> list[int]:
    """Per section index: 2 = its symbols are in the core kallsyms, 1 = only in the
    init-time table, 0 = the null section (undefined).

    A module's kallsyms rows are then its ``.symtab`` in order, keeping named symbols
    that are neither undefined nor section/file symbols, flagged core when their
    section is class 2 (``SHN_ABS`` and other reserved indexes: init-time only).
    ``klpkit.symbols.build.read_module`` applies this in its hot loop.
    """
    init = ".init"
    skip = NOT_LOADED_SECTIONS
    out = [
        2
        if name == PERCPU_SECTION
        or (
            flags & C.SHF_ALLOC
            and not name.startswith(init)
            and name not in skip
            and (module_unload or not name.startswith(".exit"))
        )
        else 1
        for name, flags in zip(scan.sh_names, scan.sh_flags, strict=True)
    ]
    out[0] = 0
    return out

"""The kernel's special sections of an x86_64 object: tables of fixed-size entries that
point at code, and what a livepatch built from that code must carry of them.

When ``klpkit build`` moves a function from a compiled kernel object into a livepatch,
the function's entries in these tables must come along, or the kernel loses track of
the code: no ``WARN``/``BUG`` report (``__bug_table``, read by ``report_bug()``), no
exception fixup (``__ex_table``, ``search_exception_tables()``), jump labels never
patched (``__jump_table``, ``jump_label_add_module()``), alternatives and retpoline /
return-thunk sites never rewritten (``.altinstructions``, ``.retpoline_sites``,
``.return_sites`` in ``module_finalize()``), no ORC unwinding (``.orc_unwind_ip`` +
``.orc_unwind``, ``unwind_module_init()``), no ftrace site (``__mcount_loc``), no
SMP lock prefix patching (``.smp_locks``).  Each entry is kept when its *anchor*
(the relocation at ``anchor`` inside the entry) points into code the livepatch carries.

Entry sizes are the x86_64 layouts of Linux 6.1 (``struct bug_entry`` with
``CONFIG_GENERIC_BUG_RELATIVE_POINTERS``, ``struct jump_entry`` with relative
pointers, ``struct alt_instr`` with a ``u16 cpuid``, ``struct exception_table_entry``
with a ``data`` word, ``struct orc_entry``; ``struct static_call_site``).  Kernels
whose layouts differ need their own row (``struct alt_instr`` grew ``u32 ft_flags``
in 6.3: 14 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EntryTable:
    """A special section made of ``size``-byte entries anchored on code at ``anchor``.

    ``parallel`` names a section without relocations whose i-th entry belongs to this
    section's i-th entry (``.orc_unwind`` for ``.orc_unwind_ip``), with its entry size.
    ``key``: where the entry names a static key (jump label) or static call key: the
    kernel resolves it when the *livepatch* loads (``jump_label_add_module()``,
    ``static_call_add_module()``), before any module-gated livepatch relocation is
    applied, so a key that belongs to a module cannot be reached from a livepatch.
    ``sized_ref``: the entry points at a piece of another section whose length it gives
    (``.altinstructions``: the replacement code in ``.altinstr_replacement`` and its
    ``replacementlen``), so two entries mean the same when those bytes are the same,
    wherever the piece sits.
    ``fingerprint``: the entry says something about the code's behaviour (a BUG's line
    and flags, an exception fixup, a jump label's key), so a function whose entries
    differ has changed even when its bytes did not; objtool's derived tables (ORC,
    retpoline and return sites) and ``__mcount_loc`` follow from the code itself.
    """

    name: str
    size: int
    anchor: int = 0
    parallel: tuple[str, int] | None = None
    fingerprint: bool = False
    key: int | None = None  # offset of a static key / static call key the entry uses
    sized_ref: tuple[int, int] | None = None  # (reference offset, offset of its length byte)


ENTRY_TABLES: dict[str, EntryTable] = {
    t.name: t
    for t in (
        EntryTable("__bug_table", 12, fingerprint=True),  # disp, file disp, line, flags
        EntryTable("__ex_table", 12, fingerprint=True),  # insn, fixup, data
        EntryTable("__jump_table", 16, fingerprint=True, key=8),  # code, target, key (+branch bit)
        EntryTable(
            ".altinstructions",
            12,
            fingerprint=True,  # instr, repl, cpuid, lengths
            sized_ref=(4, 11),
        ),
        EntryTable(".static_call_sites", 8, key=4),  # addr, key
        EntryTable(".smp_locks", 4),
        EntryTable("__mcount_loc", 8),
        EntryTable(".orc_unwind_ip", 4, parallel=(".orc_unwind", 6)),
        EntryTable(".retpoline_sites", 4),
        EntryTable(".return_sites", 4),
        EntryTable(".call_sites", 4),
        EntryTable(".ibt_endbr_seal", 4),
    )
}

#: Sections a livepatch never takes from the compiled object: the export tables (the
#: livepatch exports nothing of the patched object), module metadata (the livepatch has
#: its own), and objtool's ``.discard.*`` annotations (consumed at build time, dropped
#: by the module linker script).
NEVER_COPIED_PREFIXES = (
    "___ksymtab",
    "__ksymtab",
    "__kcrctab",
    ".modinfo",
    "__param",
    ".discard.",
    ".note.",
    ".comment",
    ".debug_",
    ".gnu.linkonce.",
    "__versions",
    ".init.",
    ".exit.",
    "__initcall",
    ".initcall",
    ".con_initcall",
    "__tracepoint_str",
    "__patchable_function_entries",
)

#: Sections whose code runs only while the kernel or the module initialises (or
#: unloads): a change there cannot be livepatched, the code has already run.
INIT_SECTION_PREFIXES = (".init.", ".exit.", ".head.text", ".ref.text", ".meminit.", ".cpuinit.")

#: Function-scope static state that a changed function gets a fresh copy of, as upstream
#: klp-build does: the ``_once`` flags, ratelimit states, lock class keys, dynamic debug
#: descriptors, ``__func__`` strings and switch tables are per call site, not state the
#: rest of the object shares.
FRESH_COPY_PREFIXES = (
    "__already_done",
    "__print_once",
    "__warned",
    "_rs.",
    "__key.",
    "__func__.",
    "CSWTCH.",
    "__UNIQUE_ID_ddebug",
    "descriptor.",
    "__flags.",
    "__msg.",
    "__print_fmt",
    "__FUNCTION__.",
    "__PRETTY_FUNCTION__.",
)

#: Sections whose contents are such per-call-site state, whatever the symbol is called.
FRESH_COPY_SECTIONS = ("__dyndbg", ".data.once", ".data..once")

#: Where ftrace's call sits in an x86_64 function compiled with ``-mfentry``: the first
#: instruction, or right after an ``endbr64`` (4 bytes) with IBT.  The livepatch core
#: redirects a function through that call (``klp_patch_func()`` registers an ftrace
#: handler on it), so a function without it cannot be replaced.
FENTRY_SYMBOL = "__fentry__"
FENTRY_RELOC_OFFSETS = (1, 5)

"""ELF sanity as the module loader sees it, and the relocations x86_64 can apply.

Two passes: a raw one over the header tables (what elf_validity_check(),
setup_load_info() and __apply_relocate_add() look at, with the kernel's messages),
which works on files klpkit's ELF model would refuse; then the model is read for the
other families.  Returning False stops the run (nothing else can be checked).
"""

from __future__ import annotations

from klpkit.check.context import Context
from klpkit.check.findings import Place, Stage
from klpkit.check.rules import X86_64_RELOC_SIZES, nonzero_message
from klpkit.elf import constants as C
from klpkit.elf.reloc_types import reloc_type_name
from klpkit.elf.structs import layout_for
from klpkit.kernel import klp
from klpkit.kernel.livepatch import is_klp_rela, parse_klp_rela_object

ELFMAG = b"\x7fELF"


def _raw(ctx: Context) -> bool:
    header = _raw_header(ctx)
    if header is None:
        return False
    lay, ok, shoff, shnum, shstrndx = header
    data = ctx.data
    shdrs = [lay.shdr.unpack_from(data, shoff + i * lay.shdr.size) for i in range(shnum)]
    if not _raw_shstrtab(ctx, shdrs, shstrndx) or not _raw_sections(ctx, shdrs, shstrndx):
        return False
    if not any(h[1] == C.SHT_SYMTAB for h in shdrs):
        ctx.add(
            "elf.symtab", None, "no symbol table", f"{ctx.name}: module has no symbols (stripped?)"
        )
        return False
    return ok


def _raw_header(ctx: Context):
    """The ELF header as elf_validity_check() reads it: (layout, type and machine ok,
    e_shoff, e_shnum, e_shstrndx), or None when nothing past it can be read."""
    data = ctx.data
    n = len(data)
    if n < 52 or data[:4] != ELFMAG:
        if n < 64:
            ctx.add(
                "elf.header",
                None,
                f"file too short for an ELF header ({n} bytes)",
                f"Invalid ELF header len {n}",
            )
        else:
            ctx.add("elf.header", None, "no ELF magic", "Invalid ELF header magic: != \x7fELF")
        return None
    if data[4] not in (1, 2) or data[5] not in (1, 2):
        ctx.add("elf.header", None, f"unknown ELF class {data[4]} / data encoding {data[5]}")
        return None
    lay = layout_for(32 if data[4] == 1 else 64, data[5] == 1)
    if n < lay.ehdr.size:
        ctx.add("elf.header", None, "truncated ELF header", f"Invalid ELF header len {n}")
        return None
    (_i, etype, machine, _v, _e, _ph, shoff, _f, _eh, _phe, _phn, shentsize, shnum, shstrndx) = (
        lay.ehdr.unpack_from(data, 0)
    )
    ok = True
    if etype != C.ET_REL:
        ctx.add(
            "elf.header",
            None,
            f"e_type is {etype}, a module must be ET_REL",
            f"Invalid ELF header type: {etype} != {C.ET_REL}",
        )
        ok = False
    if machine != C.EM_X86_64 or lay.elfclass != 64:
        ctx.add(
            "elf.header",
            None,
            f"e_machine {machine} (ELF{lay.elfclass}) is not x86_64: "
            "the target kernel's loader refuses it",
            f"Invalid architecture in ELF header: {machine}",
        )
        ok = False
    if shentsize != lay.shdr.size:
        ctx.add(
            "elf.header",
            None,
            f"e_shentsize {shentsize} != {lay.shdr.size}",
            "Invalid ELF section header size",
        )
        return None
    if shoff >= n or shnum * lay.shdr.size > n - shoff:
        ctx.add(
            "elf.header",
            None,
            "section header table extends past the end of the file",
            "Invalid ELF section header overflow",
        )
        return None
    return lay, ok, shoff, shnum, shstrndx


def _raw_shstrtab(ctx: Context, shdrs: list, shstrndx: int) -> bool:
    """The section name table: a real section, inside the file, NUL-terminated."""
    data, n, shnum = ctx.data, len(ctx.data), len(shdrs)
    if shstrndx == C.SHN_UNDEF or shstrndx >= shnum:
        ctx.add(
            "elf.shstrtab",
            None,
            f"e_shstrndx {shstrndx} is not a section index",
            f"Invalid ELF section name index: {shstrndx} || e_shstrndx ({shstrndx}) "
            f">= e_shnum ({shnum})",
        )
        return False
    st = shdrs[shstrndx]
    if st[4] + st[5] > n:
        ctx.add(
            "elf.shstrtab",
            None,
            "section name table extends past the end of the file",
            f"Invalid ELF section hdr(type {st[1]})",
        )
        return False
    if st[5] == 0:
        ctx.add("elf.shstrtab", None, "empty section name table", "empty section name table")
        return False
    if data[st[4] + st[5] - 1] != 0:
        ctx.add(
            "elf.shstrtab",
            None,
            "section name table is not NUL-terminated",
            "ELF Spec violation: section name table isn't null terminated",
        )
        return False
    return True


def _raw_sections(ctx: Context, shdrs: list, shstrndx: int) -> bool:
    """Section 0, each section's contents and symbol table link, allocated sections'
    names."""
    n, shnum, names_size = len(ctx.data), len(shdrs), shdrs[shstrndx][5]
    if shdrs[0][1] != C.SHT_NULL or shdrs[0][5] != 0 or shdrs[0][3] != 0:
        ctx.add(
            "elf.section",
            Place("[0]"),
            "section 0 is not an empty SHT_NULL section",
            f"ELF Spec violation: section 0 type({shdrs[0][1]})!=SH_NULL or non-zero len or addr",
        )
        return False
    for i, (name, stype, flags, _a, off, size, link, _inf, _al, _es) in enumerate(shdrs[1:], 1):
        if stype in (C.SHT_NULL, C.SHT_NOBITS):
            continue
        if stype == C.SHT_SYMTAB and (link == 0 or link >= shnum):
            ctx.add(
                "elf.section",
                Place(f"[{i}]"),
                f"symbol table sh_link {link} is invalid",
                f"Invalid ELF sh_link!=SHN_UNDEF({link}) or (sh_link({link}) >= "
                f"hdr->e_shnum({shnum})",
            )
            return False
        if off + size > n:
            ctx.add(
                "elf.section",
                Place(f"[{i}]"),
                f"section contents ({size} bytes at "
                f"{off:#x}) extend past the end of the file ({n} bytes)",
                f"Invalid ELF section in module (section {i} type {stype})",
            )
            return False
        if flags & C.SHF_ALLOC and name >= names_size:
            ctx.add(
                "elf.section",
                Place(f"[{i}]"),
                "section name offset outside .shstrtab",
                f"Invalid ELF section name in module (section {i} type {stype})",
            )
            return False
    return True


def _symbols_and_sections(ctx: Context) -> None:
    elf = ctx.elf
    nsec = len(elf.sections)
    for sym in elf.symtab.symbols[1:]:
        sh = sym.shndx
        if isinstance(sh, int) and sh == C.SHN_COMMON:
            ctx.add(
                "elf.common",
                Place(symbol=sym.name),
                "common symbol (compile with -fno-common)",
                f"{ctx.name}: please compile with -fno-common",
            )
        elif (
            isinstance(sh, int)
            and sh not in (C.SHN_UNDEF, C.SHN_ABS, C.SHN_LIVEPATCH)
            and sh >= nsec
        ):
            ctx.add(
                "elf.symbol-section",
                Place(symbol=sym.name),
                f"section index {sh:#x} is not a section",
                f"{ctx.name}: Symbol {sym.name} has an invalid section index {sh} (max {nsec - 1})",
            )


def _relocations(ctx: Context) -> None:
    """Relocation symbol indexes, offsets, types and target bytes, from the raw tables
    (the model refuses out-of-range symbol indexes, the kernel does not check them)."""
    elf = ctx.elf
    lay = elf.layout
    data = ctx.data
    nsyms = elf.symtab.size // lay.sym.size
    for rs in elf.relocation_sections():
        target = rs.target
        if target is None or not target.is_alloc:
            continue  # apply_relocations() skips non-allocated targets
        raw = data[rs.orig_offset : rs.orig_offset + rs.size] if rs.orig_offset else rs.data
        if rs.type == C.SHT_REL:
            ctx.add(
                "elf.rel",
                Place(rs.name),
                "SHT_REL relocations: the x86_64 loader applies only RELA",
                f"module {ctx.name}: REL relocation unsupported",
            )
            continue
        if len(raw) % lay.rela.size:
            continue  # reported by klp.rela.link / the model
        _section_relocations(ctx, rs, raw, nsyms)


def _section_relocations(ctx: Context, rs, raw: bytes, nsyms: int) -> None:
    """Each Elf_Rela of one section against its (allocated) target, as
    __apply_relocate_add() meets it."""
    elf, lay = ctx.elf, ctx.elf.layout
    target = rs.target
    tname = target.name
    rec = lay.rela
    tdata = target.data if target.type != C.SHT_NOBITS else None
    tsize = target.size
    reported_types: set[int] = set()
    for i, (off, info, _add) in enumerate(rec.iter_unpack(raw)):
        symidx, rtype = lay.r_sym(info), lay.r_type(info)
        place = Place(tname, off)
        if symidx >= nsyms:
            ctx.add(
                "elf.reloc-symbol",
                Place(rs.name, i * rec.size),
                f"relocation {i} uses symbol index {symidx}, the symbol table has "
                f"{nsyms}: the kernel reads past the table",
            )
            continue
        if elf.machine != C.EM_X86_64:
            continue
        size = _reloc_size(ctx, rtype, place, reported_types)
        if not size:
            continue
        if off + size > tsize:
            ctx.add(
                "elf.reloc-offset",
                place,
                f"relocation {i} writes {size} bytes at "
                f"{off:#x}, past the end of {tname} ({tsize} bytes)",
            )
            continue
        if tdata is not None and any(tdata[off : off + size]):
            _nonzero(ctx, rs, place, rtype, tdata[off : off + size])


def _reloc_size(ctx: Context, rtype: int, place: Place, reported: set[int]) -> int | None:
    """The bytes an x86_64 relocation type writes (0: none); an unknown type is reported
    once per section and None."""
    size = X86_64_RELOC_SIZES.get(rtype)
    if size is None and rtype not in reported:
        reported.add(rtype)
        ctx.add(
            "elf.reloc-type",
            place,
            f"relocation type {reloc_type_name(ctx.elf.machine, rtype)} is not "
            "handled by x86_64 apply_relocate_add",
            f"{ctx.name}: Unknown rela relocation: {rtype}",
        )
    return size


def _nonzero(ctx: Context, rs, place: Place, rtype: int, target_bytes: bytes) -> None:
    is_klp = is_klp_rela(rs)
    f = ctx.add(
        "elf.reloc-nonzero",
        place,
        f"{'livepatch ' if is_klp else ''}relocation "
        f"{reloc_type_name(ctx.elf.machine, rtype)} in {rs.name}: the "
        f"{len(target_bytes)} target bytes are {target_bytes.hex()}, the x86 "
        "loader refuses to overwrite a nonzero value",
        nonzero_message(ctx.kver).replace("type %d", f"type {rtype}", 1),
    )
    if f is not None and is_klp and not _applied_at_load(ctx, rs):
        f.stage = Stage.OBJECT


def _applied_at_load(ctx: Context, rs) -> bool:
    """Does the module loader write this livepatch relocation section while the module
    loads (klp.when_applied: vmlinux-gated, since 5.8)?"""
    gate = parse_klp_rela_object(rs.name) or ""
    return klp.when_applied(gate, ctx.objects, ctx.kver, ctx.registers).when is klp.When.LOAD


def run(ctx: Context):
    if not _raw(ctx):
        return False
    ctx.open_elf()  # ElfError: refused like inspect and convert refuse it (exit 2)
    from klpkit.kernel.modinfo import Modinfo, module_name

    sec = ctx.elf.section(".modinfo")
    ctx.modinfo = Modinfo.parse(sec.data) if sec is not None else Modinfo()
    if ctx.name == "livepatch":
        ctx.name = module_name(ctx.path, ctx.modinfo)
    if ctx.elf.section(".gnu.linkonce.this_module") is None:
        ctx.add(
            "elf.symtab",
            None,
            "no .gnu.linkonce.this_module section (not a module)",
            f"{ctx.name}: No module found in object",
        )
        return False
    _symbols_and_sections(ctx)
    _relocations(ctx)
    return None

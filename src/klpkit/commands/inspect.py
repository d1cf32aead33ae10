"""``klpkit inspect FILE``: a livepatch-aware readelf."""

from klpkit.elf import ElfFile
from klpkit.inspect import inspect
from klpkit.output import print_json, print_table


def register(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="show sections, symbols, relocations and livepatch data",
        description="A livepatch-aware readelf: sections, symbols, relocations "
        "grouped by target section, .klp.rela/.klp.sym decoded, "
        "modinfo and signature.",
    )
    p.add_argument("file", help="ELF object or kernel module")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--symbols", action="store_true", help="also list every symbol")
    p.add_argument("--relocs", action="store_true", help="also list every relocation")
    p.add_argument("-a", "--all", action="store_true", help="everything")
    p.set_defaults(func=run)


def run(args) -> int:
    # a .ko.xz/.ko.zst/.ko.gz is decompressed in memory; every table decoded: a defect
    # anywhere is one error line (exit 2), as for check and convert
    elf = ElfFile.read(args.file).validate()
    view = inspect(elf)
    view["compression"] = elf.compression
    if args.json:
        print_json(view)
        return 0
    sig = view["signature"]
    packed = f" ({elf.compression}-compressed)" if elf.compression else ""
    print(
        f"{view['file']}{packed}: {view['class']} {view['endian']}-endian {view['machine']} "
        f"{view['type']}, {len(view['sections'])} sections, {len(view['symbols'])} symbols, "
        + (
            f"signed ({sig['id_type']}, {sig['length']} bytes appended)"
            if sig
            else "no module signature"
        )
    )
    print()
    print_table(
        ["Nr", "Name", "Type", "Flg", "Size", "Lk", "Inf", "Al"],
        [
            (
                s["index"],
                s["name"],
                s["type"],
                s["flags"],
                s["size"],
                s["link"],
                s["info"],
                s["align"],
            )
            for s in view["sections"]
        ],
        title="Sections",
    )
    lp = view["livepatch"]
    print()
    if lp["sections"] or lp["symbols"]:
        print_table(
            ["Section", "Object", "Patches", "Flags", "Relocs"],
            [
                (s["name"], s["object"] or "MALFORMED", s["target"], s["flags"], s["relocations"])
                for s in lp["sections"]
            ],
            title="Livepatch relocation sections",
        )
        print()
        print_table(
            ["Symbol", "Object", "Name", "Sympos", "SHN_LIVEPATCH"],
            [
                (
                    s["name"],
                    s["object"] or "MALFORMED",
                    s["symbol"],
                    s["sympos"],
                    "yes" if s["shn_livepatch"] else "NO",
                )
                for s in lp["symbols"]
            ],
            title="Livepatch symbols",
        )
    else:
        print("Livepatch relocations: none")
    if view["modinfo"]:
        print()
        print_table(
            ["Key", "Value"], [(f["key"], f["value"]) for f in view["modinfo"]], title="Modinfo"
        )
    if args.symbols or args.all:
        print()
        print_table(
            ["Num", "Value", "Size", "Type", "Bind", "Vis", "Ndx", "Name"],
            [
                (
                    s["index"],
                    f"{s['value']:x}",
                    s["size"],
                    s["type"],
                    s["bind"],
                    s["visibility"],
                    s["section"],
                    s["name"],
                )
                for s in view["symbols"]
            ],
            title="Symbols",
        )
    if args.relocs or args.all:
        for target, relocs in view["relocations"].items():
            print()
            print_table(
                ["Offset", "Type", "Symbol", "Addend", "From"],
                [
                    (
                        f"{r['offset']:#x}",
                        r["type"],
                        r["symbol"],
                        "" if r["addend"] is None else r["addend"],
                        r["section"],
                    )
                    for r in relocs
                ],
                title=f"Relocations patching {target}",
            )
    return 0

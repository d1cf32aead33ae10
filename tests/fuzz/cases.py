"""Fuzz cases: for one (seed, index), a damaged input and the command lines to run on it.

A *group* is one mutant (a module, a database, a text file, a path setup) and the runs
of every command that takes it; each run is a :class:`Case`.  Everything is derived from
``random.Random(f"{seed}:{index}")``, so a group is re-made exactly by its index.

Classes (the rows of the campaign's table):

``elf``       the plain ELF mutants: truncation, header, section header, symbol,
              relocation, signature, byte flips
``numbers``   ``.klp.sym.``/``.klp.sym.rela.`` positions with > 4,300 digits, non-ASCII
              digits, signs, blanks; the same in ``--map NAME=OBJ,POS`` and ``--map-file``
``utf8``      names that are not UTF-8: symbols, sections, Symbols.list lines, --map
``sections``  sh_info/sh_link pointing nowhere, retyped sections (SHT_SYMTAB_SHNDX...),
              damaged annotation sections
``database``  a database with the right header and schema and damaged content
``text``      damaged Symbols.list, map files and saved kallsyms
``paths``     output over an input (same name, other name, hard/symbolic link), missing or
              unwritable output directory, a directory / FIFO / /dev/zero as an input, a
              stale temp file of a killed run
``messages``  inputs whose error must name the file: a NUL in a name, > 65,536 objects,
              malformed kallsyms lines
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path

from tests.fuzz import elfmut
from tests.fuzz.corpus import Corpus

CLASSES = ("elf", "numbers", "utf8", "sections", "database", "text", "paths", "messages")
#: share of groups per class in a campaign (the ELF mutants are the cheapest per run)
WEIGHTS = {
    "elf": 30,
    "numbers": 14,
    "utf8": 14,
    "sections": 14,
    "database": 12,
    "text": 9,
    "paths": 5,
    "messages": 1,
}
MODULE_COMMANDS = ("inspect", "convert", "check", "deps", "klp-convert")
DB_COMMANDS = (
    "convert",
    "check",
    "deps",
    "klp-convert",
    "symbols info",
    "symbols lookup",
    "symbols export-list",
)


@dataclass
class Case:
    klass: str
    command: str  # the row of the per-command table
    argv: list[str]
    what: str  # the mutation, one line
    entry: str = "klpkit"  # or "klp-convert"
    inputs: list[str] = field(default_factory=list)  # files whose bytes must not change
    named: list[str] = field(default_factory=list)  # an error must name one of these
    output: str | None = None  # an ELF output to validate when the run accepts
    reference: str | None = None  # the input the output's ELF diagnostics compare with
    cli_only: bool = False  # needs a process of its own (SIGKILL)
    force_cli: bool = False  # also through the real CLI, always (a hang or blow-up risk)
    pre_kill: float | None = None  # first run it as a process SIGKILLed after this long
    timeout: float = 60.0
    stale: str | None = None  # a stale temp file that an accepted write must remove
    expect_refusal: bool = False  # accepting this is wrong (output over an input)

    @property
    def command_line(self) -> list[str]:
        return ["klp-convert" if self.entry == "klp-convert" else "klpkit", *self.argv]


@dataclass
class Group:
    klass: str
    cases: list[Case]
    workdir: Path


def pick_class(rng: random.Random, only: str | None = None) -> str:
    """The group's class: drawn even when ``only`` decides it, so that (seed, index,
    class) makes the same mutant whatever the weights are."""
    drawn = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
    return only or drawn


def make_group(corpus: Corpus, seed: int, index: int, workdir: Path, only=None) -> Group:
    """The mutant and runs of group ``index`` (files under ``workdir``, made empty)."""
    rng = random.Random(f"{seed}:{index}")
    klass = pick_class(rng, only)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    maker = {
        "elf": _elf_group,
        "numbers": _numbers_group,
        "utf8": _utf8_group,
        "sections": _sections_group,
        "database": _database_group,
        "text": _text_group,
        "paths": _paths_group,
        "messages": _messages_group,
    }[klass]
    cases = maker(rng, corpus, workdir)
    for c in cases:
        c.klass = klass
    return Group(klass, cases, workdir)


# --- module mutants × every command that reads a module ----------------------------------------


def module_runs(
    rng: random.Random, corpus: Corpus, mutant: Path, what: str, *, symbols=None
) -> list[Case]:
    """inspect, convert, check, deps and klp-convert on one module mutant; sometimes also
    ``check GOOD --loaded MUTANT`` and ``symbols add MUTANT``."""
    db = str(symbols or corpus.db)
    m = str(mutant)
    out = str(mutant.parent / "out.ko")
    out2 = str(mutant.parent / "out2.ko")
    inputs = [m, db]
    inspect = ["inspect", m] + rng.choice([[], ["-a"], ["--json"], ["-a", "--json"]])
    convert = ["convert", m, "-o", out, "--symbols", db] + rng.choice(
        [[], [], ["--json"], ["--all"], ["--keep-exports"]]
    )
    check = ["check", m, "--symbols", db] + rng.choice([[], ["--json"], ["--notes"]])
    deps = ["deps", m, "--symbols", db] + rng.choice([[], ["--json"], ["--all"]])
    lst = str(corpus.symbols_list if rng.random() < 0.8 else corpus.nm_list)
    cases = [
        Case("", "inspect", inspect, what, inputs=[m], named=[m]),
        Case("", "convert", convert, what, inputs=inputs, named=[m, db, out], output=out,
             reference=m),
        Case("", "check", check, what, inputs=inputs, named=[m, db]),
        Case("", "deps", deps, what, inputs=inputs, named=[m, db]),
        Case("", "klp-convert", [lst, m, out2], what, entry="klp-convert", inputs=[m, lst],
             named=[m, lst, out2], output=out2, reference=m),
    ]  # fmt: skip
    r = rng.random()
    if r < 0.12:  # the mutant as a livepatch already loaded
        good = str(corpus.converted[rng.choice(sorted(corpus.converted))])
        cases.append(
            Case("", "check", ["check", good, "--symbols", db, "--loaded", m], what,
                 inputs=[good, db, m], named=[m, good, db])
        )  # fmt: skip
    elif r < 0.2:  # the mutant added to a database (a target the livepatch patches)
        new_db = str(mutant.parent / "added.sqlite")
        cases.append(
            Case("", "symbols add", ["symbols", "add", m, "--db", db, "-o", new_db], what,
                 inputs=[m, db], named=[m, db, new_db])
        )  # fmt: skip
    return cases


def _base_module(rng: random.Random, corpus: Corpus, converted_share=0.5) -> tuple[str, Path]:
    pool = corpus.converted if rng.random() < converted_share else corpus.modules
    if rng.random() < 0.12:
        pool = corpus.targets
    name = rng.choice(sorted(pool))
    return name, pool[name]


def _write_mutant(workdir: Path, data: bytes, name: str = "in.ko") -> Path:
    path = workdir / name
    path.write_bytes(data)
    return path


def _elf_group(rng, corpus, workdir) -> list[Case]:
    name, base = _base_module(rng, corpus)
    data = base.read_bytes()
    kind = rng.choice(list(elfmut.PLAIN))
    new, what = elfmut.PLAIN[kind](rng, data, elfmut.Elf(data))
    if rng.random() < 0.15:  # a second, different mutation on top
        kind2 = rng.choice(list(elfmut.PLAIN))
        try:
            new2, what2 = elfmut.PLAIN[kind2](rng, new, elfmut.Elf(new))
            new, what = new2, f"{what}; {what2}"
        except Exception:  # noqa: BLE001 - the first mutation left nothing to parse
            pass
    path, how = _store(rng, workdir, new)
    return module_runs(rng, corpus, path, f"{name}: {kind}: {what}{how}")


def _store(rng: random.Random, workdir: Path, data: bytes) -> tuple[Path, str]:
    """The mutant as a plain .ko, or (as Debian 6.12 installs modules) compressed --
    sometimes with the compressed stream itself damaged -- or under a file name that is
    not UTF-8."""
    r = rng.random()
    if r < 0.08:
        import gzip
        import lzma

        suffix, packed = rng.choice(
            [
                (".ko.xz", lzma.compress(data, check=lzma.CHECK_CRC32)),
                (".ko.gz", gzip.compress(data)),
            ]
        )
        how = f" (as {suffix})"
        if rng.random() < 0.5:
            buf = bytearray(packed)
            cut = rng.choice(["truncate", "flip"])
            if cut == "truncate":
                buf = buf[: rng.randrange(1, len(buf))]
            else:
                buf[rng.randrange(len(buf))] ^= 0xFF
            packed = bytes(buf)
            how = f" (as {suffix}, stream {cut}d)"
        return _write_mutant(workdir, packed, "in" + suffix), how
    if r < 0.11:
        name = os.fsdecode(b"in-\xff\xfe-" + rng.choice(elfmut.BAD_BYTES) + b".ko")
        return _write_mutant(workdir, data, name), f" (file name {os.fsencode(name)!r})"
    return _write_mutant(workdir, data), ""


def _numbers_group(rng, corpus, workdir) -> list[Case]:
    if rng.random() < 0.6:
        pool = {
            **{k: v for k, v in corpus.converted.items()},
            "lp_annot": corpus.modules["lp_annot"],
        }
        name = rng.choice(sorted(pool))
        data = pool[name].read_bytes()
        res = elfmut.klp_sym_position(rng, data, elfmut.Elf(data))
        if res is not None:
            path = _write_mutant(workdir, res[0])
            return module_runs(rng, corpus, path, f"{name}: {res[1]}")
    # --map NAME=OBJ,POS and --map-file lines with such a position
    name = rng.choice(["lp_cdrom", "lp_policy", "lp_ambig"])
    mod = str(corpus.modules[name])
    db = str(corpus.db)
    sym = rng.choice(["debug", "cdrom_check_events", "state_show", "cdrom_read_mech_status"])
    obj = rng.choice(["cdrom", "vmlinux"])
    pos = elfmut.odd_number(rng)
    spec = f"{sym}={obj},{pos}"
    out = str(workdir / "out.ko")
    mapf = workdir / "map.txt"
    mapf.write_text(f"# odd position\n{spec}\n", encoding="utf-8")
    what = f"{name}: --map {elfmut._short(spec.encode())}"
    return [
        Case("", "convert", ["convert", mod, "-o", out, "--symbols", db, "--map", spec], what,
             inputs=[mod, db], named=[mod, db, out, "--map"], output=out, reference=mod),
        Case("", "convert", ["convert", mod, "--dry-run", "--symbols", db, "--map", spec,
                             "--json"], what, inputs=[mod, db], named=[mod, db, "--map"]),
        Case("", "convert", ["convert", mod, "-o", out, "--symbols", db, "--map-file",
                             str(mapf)], f"{name}: --map-file {elfmut._short(spec.encode())}",
             inputs=[mod, db, str(mapf)], named=[str(mapf)], output=out, reference=mod),
    ]  # fmt: skip


def _utf8_group(rng, corpus, workdir) -> list[Case]:
    r = rng.random()
    if r < 0.6:
        name, base = _base_module(rng, corpus, converted_share=0.4)
        data = base.read_bytes()
        new, what = elfmut.bad_utf8_name(rng, data, elfmut.Elf(data))
        path = _write_mutant(workdir, new)
        return module_runs(rng, corpus, path, f"{name}: {what}")
    if r < 0.8:  # a Symbols.list whose object or symbol lines are not UTF-8
        return _symbols_list_runs(rng, corpus, workdir, _spoil_list_utf8)
    # --map with a name that is not UTF-8 (as os.fsdecode() makes argv: surrogates)
    mod = str(corpus.modules["lp_cdrom"])
    db = str(corpus.db)
    bad = rng.choice(elfmut.BAD_BYTES).decode("utf-8", "surrogateescape")
    spec = rng.choice([f"cdrom_check_events{bad}=cdrom", f"debug=cd{bad}rom,0", f"{bad}=vmlinux"])
    out = str(workdir / "out.ko")
    mapf = workdir / "map.txt"
    mapf.write_bytes(b"# not UTF-8\n" + spec.encode("utf-8", "surrogateescape") + b"\n")
    return [
        Case("", "convert", ["convert", mod, "-o", out, "--symbols", db, "--map", spec],
             f"--map {spec!r}", inputs=[mod, db], named=[mod, db, out, "--map"], output=out,
             reference=mod),
        Case("", "convert", ["convert", mod, "--dry-run", "--json", "--symbols", db,
                             "--map-file", str(mapf)], f"--map-file {spec!r}",
             inputs=[mod, db, str(mapf)], named=[str(mapf)]),
        Case("", "symbols lookup", ["symbols", "lookup", spec.split("=")[0], "--db", db],
             f"lookup {spec!r}", inputs=[db], named=[db]),
    ]  # fmt: skip


def _sections_group(rng, corpus, workdir) -> list[Case]:
    pool = {**corpus.modules, **{f"{k}.klp": v for k, v in corpus.converted.items()}}
    if rng.random() < 0.3:  # the modules with annotation sections
        pool = {k: v for k, v in pool.items() if "annot" in k}
    name = rng.choice(sorted(pool))
    data = pool[name].read_bytes()
    new, what = elfmut.odd_section(rng, data, elfmut.Elf(data))
    path = _write_mutant(workdir, new)
    return module_runs(rng, corpus, path, f"{name}: {what}")


# --- damaged databases ----------------------------------------------------------------------------

META_KEYS = (
    "release",
    "machine",
    "counts",
    "sources",
    "build_id",
    "source",
    "klpkit",
    "symvers",
    "skipped",
)


def damage_db(rng: random.Random, path: Path) -> str:
    """Damage the content of a database file in place (header and schema stay right)."""
    kind = rng.choice(
        ["meta-missing", "meta-value", "meta-value", "object-row", "exports", "exports",
         "pages", "pages", "table", "random-bytes", "random-bytes", "truncate", "objects"]
    )  # fmt: skip
    if kind in ("random-bytes", "truncate"):
        data = bytearray(path.read_bytes())
        page = 16384
        if kind == "truncate":
            cut = rng.choice([page, 2 * page, len(data) - page, len(data) // 2])
            path.write_bytes(bytes(data[:cut]))
            return f"truncated to {cut} bytes"
        at = rng.randrange(1, len(data) // page) * page + rng.choice([0, 8, 100, 4000])
        n = rng.choice([16, 512, 4096])
        data[at : at + n] = bytes(rng.randrange(256) for _ in range(n))
        path.write_bytes(bytes(data[: len(path.read_bytes())]))
        return f"{n} random bytes at offset {at}"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return _damage_rows(rng, conn, kind)
    finally:
        conn.close()


def _damage_rows(rng: random.Random, conn: sqlite3.Connection, kind: str) -> str:
    if kind == "meta-missing":
        key = rng.choice(META_KEYS)
        conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        return f"meta key {key} deleted"
    if kind == "meta-value":
        key, value = rng.choice(
            [("machine", "62x"), ("machine", "-1"), ("machine", "3"), ("machine", "²"),
             ("machine", "9" * 5000), ("counts", "{bad json"), ("counts", "[]"),
             ("counts", '{"objects": "x"}'), ("sources", "{"), ("sources", "5"),
             ("sources", "[1, 2]"), ("skipped", "[[1]]"), ("skipped", "nope"),
             ("release", ""), ("release", "6.1.0-47-amd64/../x"), ("release", "\udcff"),
             ("build_id", "zz"), ("klpkit", "")]
        )  # fmt: skip
        raw = value.encode("utf-8", "surrogateescape")
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (raw, key))
        return f"meta {key} = {elfmut._short(raw)}"
    if kind == "object-row":
        oid = rng.choice([0, 1, 2, 3])
        conn.execute("DELETE FROM objects WHERE id = ?", (oid,))
        return f"objects row {oid} deleted"
    if kind == "objects":
        col, new = rng.choice(
            [("name", b"cd\xffrom"), ("name", ""), ("kind", "weird"), ("depends", "x,,\xff"),
             ("path", b"\xff"), ("id", 70000), ("name", "vmlinux2")]
        )  # fmt: skip
        oid = rng.choice([0, 1])
        try:
            conn.execute(f"UPDATE objects SET {col} = ? WHERE id = ?", (new, oid))
        except sqlite3.IntegrityError:
            conn.execute("DELETE FROM objects WHERE id = ?", (oid,))
            return f"objects row {oid} deleted"
        return f"objects[{oid}].{col} = {new!r}"
    if kind == "exports":
        col, new = rng.choice(
            [("crc", "text"), ("crc", b"\x01\x02"), ("crc", -1), ("crc", 2**63 - 1),
             ("type", 5), ("type", "EXPORT_SYMBOL_WEIRD"), ("obj", 9999), ("obj", -1),
             ("namespace", b"\xff"), ("name", b"\xff\xfe")]
        )  # fmt: skip
        try:
            conn.execute(f"UPDATE exports SET {col} = ?", (new,))
        except sqlite3.IntegrityError:  # a key column: one row only
            one = "SELECT name FROM exports ORDER BY name LIMIT 1"
            conn.execute(f"UPDATE exports SET {col} = ? WHERE name = ({one})", (new,))
            return f"first exports row: {col} = {new!r}"
        return f"every exports.{col} = {new!r}"
    if kind == "pages":
        rows = conn.execute("SELECT first FROM symbol_pages").fetchall()
        first = rng.choice(rows)[0]
        records: object = rng.choice(
            [b"", b"\x00", b"name\x00zzzz", b"name\x00" + b"f" * 13, b"\xff" * 40, "text",
             12345, b"a\x000000000000000\x00b"]
        )  # fmt: skip
        if rng.random() < 0.3:
            conn.execute("DELETE FROM symbol_pages WHERE first = ?", (first,))
            return f"symbol page {first[:20]!r} deleted"
        conn.execute("UPDATE symbol_pages SET records = ? WHERE first = ?", (records, first))
        return f"symbol page {first[:20]!r} records = {records!r}"
    table = rng.choice(["meta", "objects", "symbol_pages", "exports"])
    conn.execute(f"DROP TABLE {table}")
    return f"table {table} dropped"


def _database_group(rng, corpus, workdir) -> list[Case]:
    db = workdir / "damaged.sqlite"
    shutil.copyfile(corpus.db, db)
    what = damage_db(rng, db)
    d = str(db)
    name = rng.choice(["lp_cdrom", "lp_policy", "lp_annot", "lp_vmkey"])
    mod = str(corpus.modules[name])
    klp = str(corpus.converted.get(name, corpus.modules[name]))
    out = str(workdir / "out.ko")
    exported = str(workdir / "exported.list")
    sym = rng.choice(["debug", "cdrom_check_events", "state_show", "_printk", "nope"])
    cases = [
        Case("", "convert", ["convert", mod, "-o", out, "--symbols", d], what,
             inputs=[mod, d], named=[d, mod], output=out, reference=mod),
        Case("", "check", ["check", klp, "--symbols", d] + rng.choice([[], ["--json"]]), what,
             inputs=[klp, d], named=[d, klp]),
        Case("", "deps", ["deps", klp, "--symbols", d] + rng.choice([[], ["--json"]]), what,
             inputs=[klp, d], named=[d, klp]),
        Case("", "klp-convert", [d, mod, str(workdir / "out2.ko")], what, entry="klp-convert",
             inputs=[mod, d], named=[d, mod], output=str(workdir / "out2.ko"), reference=mod),
        Case("", "symbols info", ["symbols", "info", "--db", d]
             + rng.choice([[], ["--json"]]), what, inputs=[d], named=[d]),
        Case("", "symbols lookup", ["symbols", "lookup", sym, "--db", d]
             + rng.choice([[], ["--json"], ["--object", "cdrom"], ["--init"]]), what,
             inputs=[d], named=[d]),
        Case("", "symbols export-list", ["symbols", "export-list", exported, "--db", d], what,
             inputs=[d], named=[d, exported]),
    ]  # fmt: skip
    if VERIFY:
        cases.append(
            Case("", "symbols info", ["symbols", "info", "--verify", "--db", d], what,
                 inputs=[d], named=[d])
        )  # fmt: skip
    return cases


def _has_verify() -> bool:
    try:
        from klpkit.cli import build_parser

        build_parser().parse_args(["symbols", "info", "--verify", "--db", "x"])
    except SystemExit:
        return False
    return True


VERIFY = _has_verify()


# --- damaged text inputs ------------------------------------------------------------------------


def _spoil_list_utf8(rng: random.Random, lines: list[bytes]) -> str:
    bad = rng.choice(elfmut.BAD_BYTES)
    objs = [i for i, ln in enumerate(lines) if ln.startswith(b"*") and ln != b"*.klpkit"]
    if rng.random() < 0.4:
        i = rng.choice(objs)
        lines[i] = lines[i][:2] + bad + lines[i][2:]
        return f"object line {i + 1} -> {lines[i][:30]!r}"
    i = rng.randrange(1, len(lines))
    lines[i] = lines[i] + bad
    return f"line {i + 1} -> {lines[i][:40]!r}"


def _spoil_list_text(rng: random.Random, lines: list[bytes]) -> str:  # noqa: C901 - one table
    i = rng.randrange(1, len(lines))
    kind = rng.choice(
        ["header", "nul", "empty-object", "star", "long", "meta-count", "meta-codes",
         "meta-crc", "meta-tabs", "dup-object", "delete-object", "crlf"]
    )  # fmt: skip
    meta = [j for j, ln in enumerate(lines) if b"\t" in ln]
    if kind == "header":
        lines[0] = rng.choice([b"", b"klp-convert-symbol-data.0.2", b"klp-convert-symbol-dat"])
    elif kind == "nul":
        lines[i] = lines[i][:3] + b"\0" + lines[i][3:]
    elif kind == "empty-object":
        lines.insert(i, b"*")
    elif kind == "star":
        lines.insert(1, b"orphan_symbol")
    elif kind == "long":
        lines[i] = b"x" * rng.choice([4096, 1 << 20, (16 << 20) + 1])
    elif kind == "crlf":
        for j in range(1, min(len(lines), 200)):
            lines[j] += b"\r"
    elif kind == "dup-object":
        lines.append(b"*cdrom")
        lines.append(b"cdrom_check_events")
    elif kind == "delete-object":
        objs = [j for j, ln in enumerate(lines) if ln.startswith(b"*")]
        del lines[rng.choice(objs)]
    elif meta:
        j = rng.choice(meta)
        f = lines[j].split(b"\t")
        if kind == "meta-count" and f[0] == b"object" and len(f) > 5:
            f[5] = elfmut.odd_number(rng).encode()
        elif kind == "meta-codes" and f[0] == b"object" and len(f) > 6:
            f[6] = f[6][: len(f[6]) // 2] + b"?!"
        elif kind == "meta-crc" and f[0] == b"export" and len(f) > 5:
            f[5] = rng.choice([b"zz", "１２".encode(), b"9" * 5000, b"-1"])
        else:
            f = f[: rng.randrange(len(f))]
        lines[j] = b"\t".join(f)
        i = j
    return f"{kind} at line {i + 1}"


def _symbols_list_runs(rng, corpus, workdir, spoil) -> list[Case]:
    src = corpus.symbols_list if rng.random() < 0.7 else corpus.nm_list
    lines = src.read_bytes().split(b"\n")
    what = f"{src.name}: " + spoil(rng, lines)
    lst = workdir / "Symbols.list"
    lst.write_bytes(b"\n".join(lines))
    s = str(lst)
    name = rng.choice(["lp_cdrom", "lp_policy", "lp_annot", "lp_vmkey", "lp_empty"])
    mod = str(corpus.modules[name])
    klp = str(corpus.converted.get(name, corpus.modules[name]))
    out, out2, db = (str(workdir / n) for n in ("out.ko", "out2.ko", "built.sqlite"))
    return [
        Case("", "klp-convert", [s, mod, out], what, entry="klp-convert", inputs=[s, mod],
             named=[s, mod], output=out, reference=mod),
        Case("", "convert", ["convert", mod, "-o", out2, "--symbols", s], what,
             inputs=[s, mod], named=[s, mod], output=out2, reference=mod),
        Case("", "check", ["check", klp, "--symbols", s], what, inputs=[s, klp],
             named=[s, klp]),
        Case("", "deps", ["deps", klp, "--symbols", s], what, inputs=[s, klp],
             named=[s, klp]),
        Case("", "symbols build", ["symbols", "build", "--symbols-list", s, "--db", db,
                                   "--release", corpus.release], what, inputs=[s],
             named=[s, db]),
    ]  # fmt: skip


def _map_file_runs(rng, corpus, workdir) -> list[Case]:
    line = rng.choice(
        [b"debug", b"=cdrom", b"debug=", b"debug=cdrom,", b"debug=,1", b"debug=cdrom,1,2",
         b"debug==cdrom", b"debug=cdrom 1", b"de bug=cdrom", b"debug=cdrom,0\r", b"\0=\0",
         b"debug=cdrom\0,1", b"x" * 100000 + b"=cdrom", b"debug=cdrom,0x1", b"\xff=cdrom",
         b"debug=cdrom,-0", b"debug=nosuchobject", b"nosuchsymbol=cdrom"]
    )  # fmt: skip
    mapf = workdir / "map.txt"
    mapf.write_bytes(b"# fuzz\n" + line + b"\n")
    mod = str(corpus.modules[rng.choice(["lp_cdrom", "lp_policy"])])
    db, out, m = str(corpus.db), str(workdir / "out.ko"), str(mapf)
    what = f"--map-file line {elfmut._short(line)}"
    return [
        Case("", "convert", ["convert", mod, "-o", out, "--symbols", db, "--map-file", m],
             what, inputs=[mod, db, m], named=[m, mod, db], output=out, reference=mod),
        Case("", "convert", ["convert", mod, "--dry-run", "--symbols", db, "--map-file", m],
             what, inputs=[mod, db, m], named=[m, mod, db]),
    ]  # fmt: skip


def _kallsyms_runs(rng, corpus, workdir) -> list[Case]:
    lines = corpus.kallsyms.read_bytes().split(b"\n")
    i = rng.randrange(len(lines) - 1)
    bad = rng.choice(
        [b"", b"ffffffff81000000", b"ffffffff81000000 T", b"zzzz T name", "１２３ T x".encode(),
         b"ffffffff81000000 T name\t[cdrom", b"ffffffff81000000 T name\t[]", b"f" * 5000 + b" T x",
         b"ffffffff81000000 \xff name", b"ffffffff81000000 T na\xffme", b"-1 T x",
         b"ffffffff81000000  T  x", b"ffffffff81000000 TT x", b"0x10 T x", b"\0"]
    )  # fmt: skip
    lines[i] = bad
    k = workdir / "kallsyms"
    k.write_bytes(b"\n".join(lines))
    db = str(workdir / "built.sqlite")
    what = f"kallsyms line {i + 1} = {elfmut._short(bad)}"
    return [
        Case("", "symbols build", ["symbols", "build", "--kallsyms", str(k), "--db", db,
                                   "--release", corpus.release], what, inputs=[str(k)],
             named=[str(k), db]),
    ]  # fmt: skip


def _text_group(rng, corpus, workdir) -> list[Case]:
    r = rng.random()
    if r < 0.55:
        return _symbols_list_runs(rng, corpus, workdir, _spoil_list_text)
    if r < 0.8:
        return _map_file_runs(rng, corpus, workdir)
    return _kallsyms_runs(rng, corpus, workdir)


# --- paths ----------------------------------------------------------------------------------------


def dead_pid() -> int:
    """A pid that no process has now (a child that has exited and been reaped)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _paths_group(rng, corpus, workdir) -> list[Case]:
    kind = rng.choice(
        ["same", "hardlink", "symlink", "dotted", "db-out", "db-hardlink", "export-over-db",
         "map-out", "missing-dir", "unwritable", "out-is-dir", "in-is-dir", "fifo", "devzero",
         "stale", "missing-input", "empty-input", "add-missing-dir", "build-db-dir",
         "klp-convert-over", "symlink-loop", "sigkill", "graph-over"]
    )  # fmt: skip
    if kind == "sigkill":
        return _sigkill_case(rng, corpus, workdir)
    return _path_case(rng, corpus, workdir, kind)


def _sigkill_case(rng, corpus, workdir: Path) -> list[Case]:
    """``symbols build`` SIGKILLed part-way, then run again: no temp file may stay."""
    lst, db = str(corpus.symbols_list), str(workdir / "k.sqlite")
    argv = ["symbols", "build", "--symbols-list", lst, "--db", db, "--release", corpus.release]
    delay = rng.choice([0.05, 0.3, 0.6, 1.0, 1.5, 2.5])
    return [
        Case("", "symbols build", argv, f"SIGKILL after {delay} s, then again", inputs=[lst],
             named=[lst, db], pre_kill=delay, timeout=60.0)
    ]  # fmt: skip


def _path_case(rng, corpus, workdir: Path, kind: str) -> list[Case]:  # noqa: C901 - one table
    mod = workdir / "lp.ko"
    shutil.copyfile(corpus.modules[rng.choice(["lp_cdrom", "lp_policy"])], mod)
    db = workdir / "db.sqlite"
    shutil.copyfile(corpus.db, db)
    m, d = str(mod), str(db)
    base = ["convert", m, "--symbols", d, "-o"]
    refuse = True
    force_cli = False
    if kind == "same":
        argv, named = [*base, m], [m]
    elif kind == "hardlink":
        os.link(mod, workdir / "alias.ko")
        argv, named = [*base, str(workdir / "alias.ko")], [m, str(workdir / "alias.ko")]
    elif kind == "symlink":
        os.symlink(mod, workdir / "link.ko")
        argv, named = [*base, str(workdir / "link.ko")], [m, str(workdir / "link.ko")]
    elif kind == "dotted":
        other = str(workdir / "." / ".." / workdir.name / "lp.ko")
        argv, named = [*base, other], [m, other]
    elif kind == "db-out":
        argv, named = [*base, d], [d]
    elif kind == "db-hardlink":
        os.link(db, workdir / "db2.sqlite")
        argv, named = [*base, str(workdir / "db2.sqlite")], [d, str(workdir / "db2.sqlite")]
    elif kind == "export-over-db":
        alias = rng.choice([d, str(workdir / "dbh.sqlite")])
        if alias != d:
            os.link(db, alias)
        argv, named = ["symbols", "export-list", alias, "--db", d], [d, alias]
    elif kind == "map-out":
        mapf = workdir / "map.txt"
        shutil.copyfile(corpus.map_file, mapf)
        argv, named = [*base, str(mapf), "--map-file", str(mapf)], [str(mapf)]
    elif kind == "graph-over":
        # deps --graph FILE.png writes FILE.dot beside it: neither may be the module
        dot = workdir / "lp.dot"
        shutil.copyfile(mod, dot)
        graph = str(workdir / rng.choice(["lp.dot", "lp.png", "lp.svg", "lp.gv"]))
        argv = ["deps", str(dot), "--symbols", d, "--graph", graph]
        return [
            Case("", "deps", argv, f"{kind} {Path(graph).name}", inputs=[str(dot), d],
                 named=[str(dot), graph], expect_refusal=graph.endswith((".dot", ".png", ".svg")))
        ]  # fmt: skip
    elif kind == "klp-convert-over":
        lst = workdir / "Symbols.list"
        shutil.copyfile(corpus.symbols_list, lst)
        target = rng.choice([m, str(lst)])
        return [
            Case("", "klp-convert", [str(lst), m, target], kind, entry="klp-convert",
                 inputs=[m, str(lst)], named=[target], expect_refusal=True)
        ]  # fmt: skip
    else:
        argv, named, force_cli = _odd_path(rng, corpus, workdir, kind, m, d)
        # an empty map file is a map with no lines; a stale temp is to be cleaned
        refuse = kind != "stale" and not (kind == "empty-input" and "--map-file" in argv)
    inputs = [p for p in (m, d, str(workdir / "map.txt")) if Path(p).is_file()]
    out = None
    if argv[0] == "convert" and kind == "stale":
        out = argv[argv.index("-o") + 1]
    case = Case("", " ".join(argv[:2]) if argv[0] == "symbols" else argv[0], argv, kind,
                inputs=inputs, named=named, output=out, reference=m if out else None,
                force_cli=force_cli, expect_refusal=refuse,
                timeout=10.0 if force_cli else 30.0)  # fmt: skip
    if kind == "stale":
        case.stale = named[-1]
    return [case]


def _odd_path(rng, corpus, workdir: Path, kind: str, m: str, d: str):
    base = ["convert", m, "--symbols", d, "-o"]
    if kind == "missing-dir":
        out = str(workdir / "no" / "such" / "out.ko")
        return [*base, out], [out, str(workdir / "no")], False
    if kind == "unwritable":
        out = rng.choice(["/proc/klpkit-fuzz.ko", "/sys/klpkit-fuzz.ko"])
        return [*base, out], [out, "/proc", "/sys"], False
    if kind == "out-is-dir":
        (workdir / "outdir").mkdir()
        return [*base, str(workdir / "outdir")], [str(workdir / "outdir")], False
    if kind == "in-is-dir":
        (workdir / "indir.ko").mkdir()
        what = rng.choice(["module", "db", "map", "list"])
        p = str(workdir / "indir.ko")
        return _special_input(corpus, workdir, what, p, m, d), [p], False
    if kind == "fifo":
        p = str(workdir / "fifo.ko")
        os.mkfifo(p)
        what = rng.choice(["module", "db", "map", "list"])
        return _special_input(corpus, workdir, what, p, m, d), [p], True
    if kind == "devzero":
        what = rng.choice(["module", "db", "map", "list"])
        return _special_input(corpus, workdir, what, "/dev/zero", m, d), ["/dev/zero"], True
    if kind == "stale":
        target = workdir / "out.ko"
        stale = workdir / f".out.ko.{dead_pid()}.abcd1234.tmp"
        stale.write_bytes(b"\0" * rng.choice([16, 1 << 20]))
        return [*base, str(target)], [str(target), str(stale)], False
    if kind == "missing-input":
        p = str(workdir / "missing.ko")
        return (
            ["inspect", p] if rng.random() < 0.5 else [*base[:1], p, *base[2:], "x.ko"],
            [p],
            False,
        )
    if kind == "empty-input":
        empty = workdir / "empty.ko"
        empty.write_bytes(b"")
        what = rng.choice(["module", "db", "map", "list"])
        return _special_input(corpus, workdir, what, str(empty), m, d), [str(empty)], False
    if kind == "symlink-loop":
        loop = workdir / "loop.ko"
        os.symlink(loop, loop)
        return ["inspect", str(loop)], [str(loop)], False
    if kind == "add-missing-dir":
        out = str(workdir / "no" / "x.sqlite")
        return ["symbols", "add", m, "--db", d, "-o", out], [out, str(workdir / "no")], False
    # build-db-dir
    (workdir / "dbdir").mkdir()
    p = str(workdir / "dbdir")
    return ["symbols", "build", "--symbols-list", str(corpus.symbols_list), "--db", p], [p], False


def _special_input(corpus, workdir: Path, what: str, p: str, m: str, d: str) -> list[str]:
    out = str(workdir / "out.ko")
    if what == "module":
        return ["inspect", p]
    if what == "db":
        return ["symbols", "info", "--db", p]
    if what == "map":
        return ["convert", m, "--symbols", d, "-o", out, "--map-file", p]
    return ["convert", m, "--symbols", p, "-o", out]


# --- messages that must name the file -------------------------------------------------------------


def _messages_group(rng, corpus, workdir) -> list[Case]:
    # (> 65,536 objects: ~3 s a run, so a twentieth of the group)
    kind = rng.choice(["nul-name", "kallsyms", "nul-map"] * 6 + ["many-objects"])
    if kind == "kallsyms":
        return _kallsyms_runs(rng, corpus, workdir)
    lst = workdir / "Symbols.list"
    head = corpus.symbols_list.read_bytes().split(b"\n")[0]
    if kind == "nul-name":
        body = b"*vmlinux\nprintk\nsta\0te_show\n*cdrom\ndebug\n"
    elif kind == "many-objects":
        body = b"".join(b"*m%d\nsym\n" % i for i in range(65537))
    else:
        mapf = workdir / "map.txt"
        mapf.write_bytes(b"deb\0ug=cdrom,0\n")
        mod, db, out = str(corpus.modules["lp_cdrom"]), str(corpus.db), str(workdir / "o.ko")
        return [
            Case("", "convert", ["convert", mod, "-o", out, "--symbols", db, "--map-file",
                                 str(mapf)], "NUL in a map-file name", inputs=[mod, db, str(mapf)],
                 named=[str(mapf)], output=out, reference=mod)
        ]  # fmt: skip
    lst.write_bytes(head + b"\n" + body)
    s = str(lst)
    mod = str(corpus.modules["lp_cdrom"])
    out, db = str(workdir / "out.ko"), str(workdir / "built.sqlite")
    return [
        Case("", "symbols build", ["symbols", "build", "--symbols-list", s, "--db", db,
                                   "--release", corpus.release], kind, inputs=[s],
             named=[s, db]),
        Case("", "klp-convert", [s, mod, out], kind, entry="klp-convert", inputs=[s, mod],
             named=[s, mod], output=out, reference=mod),
    ]  # fmt: skip


def is_special(path: str) -> bool:
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True

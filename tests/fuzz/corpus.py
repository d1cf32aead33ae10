"""The real inputs the fuzz harness mutates.

* the test livepatch modules the test suite builds (tests/convert/lp_sources.py,
  tests/convert/lp_issue12.py, examples/cdrom) and Debian's ``cdrom.ko``;
* the same livepatches converted by klpkit (``.klp.sym``/``.klp.rela`` to damage);
* a small symbol database cut from the real Debian one (the objects the modules patch or
  use, every vmlinux name the modules mention, their exports and CRCs), so that a damaged
  copy costs a file copy and every command resolves what it would against the full one;
* that database as a klpkit Symbols.list, a kernel-Makefile (``nm``) Symbols.list, a map
  file and a saved /proc/kallsyms.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: objects kept whole in the small database: what the test livepatches patch or call
KEEP_OBJECTS = ("vmlinux", "cdrom", "scsi_mod", "sr_mod")
#: vmlinux names kept besides the ones a module mentions (ambiguous and common ones)
EXTRA_NAMES = ("state_show", "enabled_show", "debug", "cmdline_proc_show", "_printk", "printk")
#: unrelated vmlinux names kept, so that pages and lookups are not trivially small
FILLER = 500


@dataclass
class Corpus:
    root: Path
    modules: dict[str, Path] = field(default_factory=dict)  # livepatches as built
    converted: dict[str, Path] = field(default_factory=dict)  # converted by klpkit
    targets: dict[str, Path] = field(default_factory=dict)  # plain modules (cdrom.ko...)
    db: Path | None = None
    symbols_list: Path | None = None
    nm_list: Path | None = None
    kallsyms: Path | None = None
    map_file: Path | None = None
    release: str = ""

    def all_modules(self) -> dict[str, Path]:
        out = dict(self.modules)
        out.update({f"{k}.klp": v for k, v in self.converted.items()})
        out.update(self.targets)
        return out

    def to_json(self) -> dict:
        return {
            k: (str(v) if isinstance(v, Path) else {n: str(p) for n, p in v.items()})
            for k, v in self.__dict__.items()
            if v is not None and k != "root" and not isinstance(v, str)
        } | {"release": self.release, "root": str(self.root)}

    @classmethod
    def from_json(cls, data: dict) -> Corpus:
        c = cls(Path(data["root"]), release=data["release"])
        for k, v in data.items():
            if k in ("root", "release"):
                continue
            setattr(c, k, {n: Path(p) for n, p in v.items()} if isinstance(v, dict) else Path(v))
        return c


def livepatch_sources() -> tuple[dict[str, str], str]:
    """(sources, Kbuild) of every test livepatch module of the test suite."""
    from tests.convert.lp_issue12 import SOURCES
    from tests.convert.lp_sources import LP_AMBIG, LP_ANNOT, LP_POLICY

    sources = {
        "lp_policy.c": LP_POLICY,
        "lp_ambig.c": LP_AMBIG,
        "lp_annot.c": LP_ANNOT,
        "lp_cdrom.c": (REPO / "examples" / "cdrom" / "lp_cdrom.c").read_text(),
        **SOURCES,
    }
    kbuild = "obj-m := " + " ".join(n.replace(".c", ".o") for n in sources) + "\n"
    return sources, kbuild


def build_livepatches(out: Path) -> dict[str, Path]:
    """Build (once: the result is kept beside a digest of the sources) the modules."""
    from tests.kbuild import build_modules

    sources, kbuild = livepatch_sources()
    digest = hashlib.sha256(json.dumps([sources, kbuild]).encode()).hexdigest()
    stamp = out / "sources.sha256"
    want = {n[:-2] for n in sources}
    if stamp.is_file() and stamp.read_text() == digest:
        kos = {k.stem: k for k in out.glob("*.ko")}
        if set(kos) == want:
            return kos
    shutil.rmtree(out, ignore_errors=True)
    kos = {k.stem: k for k in build_modules(out, sources, kbuild)}
    stamp.write_text(digest)
    return kos


def _mentioned_names(paths) -> set[str]:
    """Every identifier-like string in the modules' bytes (symbol names, klp_func
    old_names, annotation names, .klp.sym names' parts)."""
    names: set[str] = set()
    for p in paths:
        data = Path(p).read_bytes()
        for m in re.findall(rb"[A-Za-z_][A-Za-z0-9_]{2,}", data):
            names.add(m.decode())
    return names


def small_db(full_db, out: Path, module_paths) -> Path:
    """The objects of :data:`KEEP_OBJECTS` from ``full_db``; vmlinux restricted to the
    names the modules mention (every occurrence of each, so sympos is unchanged) and a
    filler. Exports and CRCs of the kept names come along.

    Made through klpkit's public commands: the full database exported as a Symbols.list
    (klpkit's format), the lines and the ``*.klpkit`` records of what is left out
    dropped, and the rest imported with ``symbols build --symbols-list``."""
    import random

    full_list = out.with_suffix(".full.list")
    _cli(["symbols", "export-list", str(full_list), "--db", str(full_db)])
    lines = full_list.read_bytes().split(b"\n")
    full_list.unlink()
    wanted = {n.encode() for n in _mentioned_names(module_paths) | set(EXTRA_NAMES)}
    vmlinux = _object_lines(lines, b"vmlinux")
    names = sorted(set(vmlinux))
    wanted |= set(random.Random(14).sample(names, min(FILLER, len(names))))
    keep = {o.encode() for o in KEEP_OBJECTS}
    kept_rows: dict[bytes, list[bool]] = {}
    body: list[bytes] = [lines[0]]
    obj = None
    meta: list[bytes] = []
    for line in lines[1:]:
        if line.startswith(b"*"):
            obj = line[1:]
            if obj == b".klpkit" or obj in keep:
                (meta if obj == b".klpkit" else body).append(line)
                kept_rows.setdefault(obj, [])
            continue
        if obj == b".klpkit":
            meta.append(line)
        elif obj in keep:
            take = obj != b"vmlinux" or line in wanted or line[len(b"__ksymtab_") :] in wanted
            kept_rows[obj].append(take)
            if take:
                body.append(line)
    body.extend(_filter_meta(meta, keep, kept_rows, wanted))
    small_list = out.with_suffix(".list")
    small_list.write_bytes(b"\n".join(body) + b"\n")
    out.unlink(missing_ok=True)
    _cli(["symbols", "build", "--symbols-list", str(small_list), "--db", str(out)])
    small_list.unlink()
    return out


def _cli(argv: list[str]) -> None:
    import contextlib
    import io

    from klpkit.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(argv)
    if rc:
        raise RuntimeError(f"klpkit {' '.join(argv)}: exit {rc}: {err.getvalue()}")


def _object_lines(lines: list[bytes], obj: bytes) -> list[bytes]:
    start = lines.index(b"*" + obj) + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(b"*"))
    return lines[start:end]


def _codes(text: bytes) -> list[bytes]:
    """The per-symbol bind/type codes of a ``*.klpkit`` object record ('!' marks one)."""
    out, i = [], 0
    while i < len(text):
        n = 3 if text[i : i + 1] == b"!" else 2
        out.append(text[i : i + n])
        i += n
    return out


def _filter_meta(meta, keep, kept_rows, wanted) -> list[bytes]:
    out = []
    for rec in meta:
        f = rec.split(b"\t")
        if f[0] == b"object":
            if f[1] not in keep:
                continue
            take = kept_rows[f[1]]
            codes = _codes(f[6])
            rows = [c for c, t in zip(codes, take[: len(codes)], strict=False) if t]
            f[5], f[6] = str(len(rows)).encode(), b"".join(rows)
            f[4] = b",".join(d for d in f[4].split(b",") if d in keep)
        elif f[0] == b"export":
            if f[1] not in keep or (f[1] == b"vmlinux" and f[2] not in wanted):
                continue
        out.append(b"\t".join(f))
    return out


def write_kallsyms(db_path: Path, out: Path) -> Path:
    """A saved /proc/kallsyms of the small database's vmlinux and modules (synthetic
    addresses; the type letter from the stored binding and type)."""
    from klpkit.symbols import SymbolDB

    lines = []
    with SymbolDB.open(db_path) as db:
        addr = 0xFFFFFFFF81000000
        for obj, rows in db.all_symbols().items():
            for name, flags in rows:
                bind, typ = flags & 0xF, (flags >> 4) & 0xF
                letter = "T" if typ == 2 else "D" if typ == 1 else "t"
                if bind == 0:
                    letter = letter.lower()
                suffix = "" if obj == "vmlinux" else f"\t[{obj}]"
                lines.append(f"{addr:016x} {letter} {name}{suffix}")
                addr += 16
    out.write_text("\n".join(lines) + "\n")
    return out


def write_nm_list(db_path: Path, out: Path) -> Path:
    """The database as the kernel Makefile's Symbols.list (``nm`` names, no klpkit part)."""
    from klpkit.symbols import SymbolDB
    from klpkit.symbols.symbols_list import HEADER

    lines = [HEADER]
    with SymbolDB.open(db_path) as db:
        for obj, rows in db.all_symbols().items():
            lines.append("*" + obj)
            lines.extend(sorted(n for n, _f in rows))
    out.write_text("\n".join(lines) + "\n")
    return out


def build_corpus(root: Path, full_db: Path, cdrom_ko: Path, modules: dict[str, Path]) -> Corpus:
    """Everything the harness mutates, under ``root`` (made once; cheap to reuse)."""
    from klpkit.symbols import SymbolDB

    root.mkdir(parents=True, exist_ok=True)
    c = Corpus(root)
    mods = root / "modules"
    mods.mkdir(exist_ok=True)
    for name, src in modules.items():
        # as `make modules_install INSTALL_MOD_STRIP=1` installs them: the debug sections'
        # thousands of relocations would make every run slow and test nothing livepatch
        dst = mods / f"{name}.ko"
        subprocess.run(["strip", "--strip-debug", "-o", str(dst), str(src)], check=True)
        c.modules[name] = dst
    c.targets["cdrom"] = root / "cdrom.ko"
    shutil.copyfile(cdrom_ko, c.targets["cdrom"])
    # one livepatch with its debug sections, as Kbuild leaves it
    c.targets["lp_cdrom.debug"] = root / "lp_cdrom.debug.ko"
    shutil.copyfile(modules["lp_cdrom"], c.targets["lp_cdrom.debug"])
    c.db = small_db(full_db, root / "small.sqlite", [*c.modules.values(), c.targets["cdrom"]])
    with SymbolDB.open(c.db) as db:
        c.release = db.release
    for name, src in c.modules.items():
        dst = mods / f"{name}.klp.ko"
        try:
            _cli(["convert", str(src), "-o", str(dst), "--symbols", str(c.db)])
        except RuntimeError:
            continue  # a livepatch that does not convert (an unknown symbol: lp_ambig)
        c.converted[name] = dst
    c.symbols_list = root / "Symbols.list"
    _cli(["symbols", "export-list", str(c.symbols_list), "--db", str(c.db)])
    c.nm_list = write_nm_list(c.db, root / "Symbols.nm.list")
    c.kallsyms = write_kallsyms(c.db, root / "kallsyms")
    c.map_file = root / "map.txt"
    c.map_file.write_text(
        "# NAME=OBJ[,POS]\ncdrom_check_events=cdrom\ndebug=cdrom,0\nstate_show=vmlinux,2\n"
    )
    (root / "corpus.json").write_text(json.dumps(c.to_json(), indent=1))
    return c

"""The symbol database of the real Debian kernel 6.1.0-47-amd64 (6.1.170-3): image, -dbg and
headers packages (fetched and cached by klpkit.debian).  Every check can fail."""

import os
import random
from collections import defaultdict
from pathlib import Path

import pytest

from klpkit.errors import KlpkitError
from klpkit.symbols import (
    SymbolDB,
    build_from_debian,
    export_symbols_list,
    import_symbols_list,
    rules,
)
from klpkit.symbols.build import find_modules

from .conftest import readelf_counts

pytestmark = pytest.mark.slow
RELEASE = "6.1.0-47-amd64"


@pytest.fixture(scope="session")
def real_inputs(debian_image, debian_dbg, debian_headers):
    symvers = Path(debian_headers) / "Module.symvers"
    assert symvers.is_file(), f"{symvers} missing"
    return Path(debian_image), Path(debian_dbg), symvers


@pytest.fixture(scope="session")
def real_db(real_inputs, tmp_path_factory):
    image, dbg, symvers = real_inputs
    return build_from_debian(image, dbg, symvers, db=tmp_path_factory.mktemp("db") / "k.sqlite",
                             progress=False)


def test_whole_kernel_built(real_db, real_inputs):
    image = real_inputs[0]
    mods = find_modules(image / "lib" / "modules" / RELEASE)
    assert len(mods) == 4022
    assert real_db.release == RELEASE
    assert len(real_db.objects()) == 4023 and real_db.objects()[0] == "vmlinux"
    assert real_db.build_id and len(real_db.build_id) == 40   # vmlinux .notes GNU build id
    assert real_db.counts()["symbols"] > 600_000


def test_cdrom_spot_checks(real_db):
    (e,) = real_db.lookup("cdrom_check_events")
    assert (e.object, e.bind, e.type, e.exported, e.export_type) == (
        "cdrom", "global", "func", True, "EXPORT_SYMBOL")
    assert e.klp_sympos == 0 and e.crc is not None
    (m,) = real_db.lookup("cdrom_ioctl_media_changed")
    assert (m.object, m.bind, m.type, m.exported, m.sympos, m.count) == (
        "cdrom", "local", "func", False, 1, 1)
    (d,) = real_db.lookup("debug", "cdrom")
    assert (d.bind, d.type) == ("local", "object")
    assert real_db.lookup("media_changed", "cdrom") == []      # inlined in 6.1
    assert real_db.exporter("cdrom_check_events") == "cdrom"
    assert "cdrom" in real_db.module_depends("sr_mod")
    assert real_db.exporter("printk") is None and real_db.exporter("_printk") == "vmlinux"


def _system_map_kallsyms_order(path):
    """The real System.map (nm -n, filtered by mksysmap) re-sorted exactly as
    scripts/kallsyms sorts its input, minus what kallsyms.c ignores."""
    entries = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        addr, letter, name = line.split()[:3]
        if letter in "Aa" or rules.vmlinux_name_ignored(name):
            continue
        entries.append((int(addr, 16), letter in "wWvV", rules.linker_provided(name),
                        len(name) - len(name.lstrip("_")), i, name))
    entries.sort()
    return [(e[5], e[0]) for e in entries]


def test_vmlinux_sympos_matches_real_system_map(real_db, real_inputs):
    dbg = real_inputs[1]
    smap = dbg / "usr/lib/debug/boot" / f"System.map-{RELEASE}"
    order = _system_map_kallsyms_order(smap)
    ours = [n for n, _f in real_db.symbols_of("vmlinux")]
    assert ours == [n for n, _a in order]
    # every duplicated name: sympos 1..N is ascending address in the real System.map
    addrs = defaultdict(list)
    for name, addr in order:
        addrs[name].append(addr)
    dups = {n: a for n, a in addrs.items() if len(a) > 1}
    assert len(dups) > 1000
    for name in ["__func__.0", "_rs.1", "cpu_has_perm"] + sorted(dups)[:200]:
        if name not in dups:
            continue
        entries = real_db.lookup(name, "vmlinux")
        assert [e.sympos for e in entries] == list(range(1, len(dups[name]) + 1))
        assert all(e.count == len(dups[name]) for e in entries)
        assert dups[name] == sorted(dups[name])


def test_module_counts_match_readelf(real_db, real_inputs):
    mods = {os.path.basename(p): p for p in
            find_modules(real_inputs[0] / "lib" / "modules" / RELEASE)}
    sample = ["cdrom.ko", "sr_mod.ko", "ext4.ko", "xfs.ko", "snd-hda-intel.ko"]
    sample += random.Random(61).sample(sorted(mods), 25)
    for base in sample:
        path = mods[base]
        name = base[:-3].replace("-", "_")
        flags = [f for _n, f in real_db.symbols_of(name)]
        assert flags, f"{name} not in the database"
        core = sum(1 for f in flags if not f & 0x100)
        assert (core, len(flags)) == readelf_counts(Path(path)), base


def test_exports_from_objects_equal_module_symvers(real_inputs, real_db, tmp_path):
    image, dbg, _symvers = real_inputs
    derived = build_from_debian(image, dbg, None, db=tmp_path / "nosymvers.sqlite",
                                progress=False)
    q = ("SELECT e.name, o.name, e.type, e.namespace, e.crc FROM exports e "
         "JOIN objects o ON o.id = e.obj ORDER BY e.name")
    assert derived._query(q) == real_db._query(q)
    assert len(derived._query(q)) == 24618


def test_symbols_list_round_trip(real_db, tmp_path):
    out = tmp_path / "Symbols.list"
    export_symbols_list(real_db, out)
    again = import_symbols_list(out, db=tmp_path / "again.sqlite")
    assert again == real_db
    assert again.lookup("cdrom_check_events") == real_db.lookup("cdrom_check_events")


def test_corrupt_module_among_thousands(real_inputs, tmp_path):
    image, dbg, symvers = real_inputs
    fake = tmp_path / "image"
    moddir = fake / "lib" / "modules" / RELEASE
    moddir.mkdir(parents=True)
    for p in find_modules(image / "lib" / "modules" / RELEASE):
        rel = Path(p).relative_to(image / "lib" / "modules" / RELEASE)
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(p, moddir / rel)
    bad = moddir / "kernel" / "zz_corrupt.ko"
    bad.write_bytes(b"\x7fELF" + os.urandom(4000))
    with pytest.raises(KlpkitError, match=r"zz_corrupt\.ko: .*--skip-bad"):
        build_from_debian(fake, dbg, symvers, db=tmp_path / "x.sqlite", progress=False)
    assert not (tmp_path / "x.sqlite").exists()
    db = build_from_debian(fake, dbg, symvers, db=tmp_path / "x.sqlite", progress=False,
                           skip_bad=True)
    assert [p for p, _r in db.skipped] == [str(bad)]
    assert len(db.objects()) == 4023


def test_real_db_refusals(real_db, tmp_path):
    with pytest.raises(KlpkitError, match="is for kernel 6.1.0-47-amd64, not 6.1.0-48-amd64"):
        SymbolDB.open(real_db.path, release="6.1.0-48-amd64")
    cut = tmp_path / "cut.sqlite"
    with open(real_db.path, "rb") as f:
        cut.write_bytes(f.read(5_000_000))
    with pytest.raises(KlpkitError, match="truncated"):
        SymbolDB.open(cut)


def test_system_map_source_equals_vmlinux_source(real_db, real_inputs, tmp_path):
    """Only the real System.map (no vmlinux): same vmlinux symbols, same order."""
    _image, dbg, _symvers = real_inputs
    fake_img = tmp_path / "image"
    (fake_img / "lib" / "modules" / RELEASE).mkdir(parents=True)
    boot = tmp_path / "dbg" / "usr" / "lib" / "debug" / "boot"
    boot.mkdir(parents=True)
    os.symlink(dbg / "usr/lib/debug/boot" / f"System.map-{RELEASE}",
               boot / f"System.map-{RELEASE}")
    db = build_from_debian(fake_img, tmp_path / "dbg", db=tmp_path / "m.sqlite",
                           progress=False)
    # names and bindings agree (nm letters do not carry the ELF symbol type exactly)
    assert [(n, f & 0xF) for n, f in db.symbols_of("vmlinux")] == [
        (n, f & 0xF) for n, f in real_db.symbols_of("vmlinux")]
    dup = db.lookup("__func__.0", "vmlinux")
    assert [e.sympos for e in dup] == list(range(1, len(dup) + 1)) and len(dup) > 100


def test_debian_placeholder_system_map(real_inputs, tmp_path):
    image = real_inputs[0]
    placeholder = image / "boot" / f"System.map-{RELEASE}"
    assert placeholder.stat().st_size < 200
    with pytest.raises(KlpkitError, match=f"placeholder.*linux-image-{RELEASE}-dbg"):
        build_from_debian(image, None, db=tmp_path / "p.sqlite", progress=False)

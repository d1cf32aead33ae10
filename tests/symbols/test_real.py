"""The symbol database of the real Debian kernel 6.1.0-47-amd64 (6.1.170-3) from the image
and headers packages (fetched and cached by klpkit.debian; vmlinux's symbols from the
image's kallsyms tables -- the -dbg package is only the oracle's, tests/symbols/
test_image.py).  Every check can fail."""

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
)
from klpkit.symbols.elf_objects import find_modules
from klpkit.symbols.vmlinuz import read_image

from .conftest import readelf_counts

pytestmark = pytest.mark.slow
RELEASE = "6.1.0-47-amd64"


@pytest.fixture(scope="session")
def real_inputs(debian_image, debian_headers):
    symvers = Path(debian_headers) / "Module.symvers"
    assert symvers.is_file(), f"{symvers} missing"
    return Path(debian_image), symvers


@pytest.fixture(scope="session")
def real_db(real_inputs, tmp_path_factory):
    image, symvers = real_inputs
    return build_from_debian(
        image, None, symvers, db=tmp_path_factory.mktemp("db") / "k.sqlite", progress=False
    )


def test_whole_kernel_built(real_db, real_inputs):
    image = real_inputs[0]
    mods = find_modules(image / "lib" / "modules" / RELEASE)
    assert len(mods) == 4022
    assert real_db.release == RELEASE
    assert len(real_db.objects()) == 4023 and real_db.objects()[0] == "vmlinux"
    assert real_db.build_id and len(real_db.build_id) == 40  # vmlinux .notes GNU build id
    assert real_db.counts()["symbols"] > 600_000


def test_cdrom_spot_checks(real_db):
    (e,) = real_db.lookup("cdrom_check_events")
    assert (e.object, e.bind, e.type, e.exported, e.export_type) == (
        "cdrom",
        "global",
        "func",
        True,
        "EXPORT_SYMBOL",
    )
    assert e.klp_sympos == 0 and e.crc is not None
    (m,) = real_db.lookup("cdrom_ioctl_media_changed")
    assert (m.object, m.bind, m.type, m.exported, m.sympos, m.count) == (
        "cdrom",
        "local",
        "func",
        False,
        1,
        1,
    )
    (d,) = real_db.lookup("debug", "cdrom")
    assert (d.bind, d.type) == ("local", "object")
    assert real_db.lookup("media_changed", "cdrom") == []  # inlined in 6.1
    assert real_db.exporter("cdrom_check_events") == "cdrom"
    assert "cdrom" in real_db.module_depends("sr_mod")
    assert real_db.exporter("printk") is None and real_db.exporter("_printk") == "vmlinux"


def test_vmlinux_sympos_is_kallsyms_address_order(real_db, real_inputs):
    """Every duplicated vmlinux name: sympos 1..N is the kallsyms table's order, which is
    ascending address (the real System.map agrees: the oracle in test_image.py)."""
    ks = read_image(real_inputs[0] / "boot" / f"vmlinuz-{RELEASE}", exports=False).kallsyms
    assert [n for n, _f in real_db.symbols_of("vmlinux")] == ks.names
    addrs = defaultdict(list)
    for name, addr in zip(ks.names, ks.addresses, strict=True):
        addrs[name].append(addr)
    dups = {n: a for n, a in addrs.items() if len(a) > 1}
    assert len(dups) == 1120
    for name in ["__func__.0", "_rs.1", "cpu_has_perm"] + sorted(dups)[:200]:
        if name not in dups:
            continue
        entries = real_db.lookup(name, "vmlinux")
        assert [e.sympos for e in entries] == list(range(1, len(dups[name]) + 1))
        assert all(e.count == len(dups[name]) for e in entries)
        assert dups[name] == sorted(dups[name])


def test_module_counts_match_readelf(real_db, real_inputs):
    mods = {
        os.path.basename(p): p for p in find_modules(real_inputs[0] / "lib" / "modules" / RELEASE)
    }
    sample = ["cdrom.ko", "sr_mod.ko", "ext4.ko", "xfs.ko", "snd-hda-intel.ko"]
    sample += random.Random(61).sample(sorted(mods), 25)
    for base in sample:
        path = mods[base]
        name = base[:-3].replace("-", "_")
        flags = [f for _n, f in real_db.symbols_of(name)]
        assert flags, f"{name} not in the database"
        core = sum(1 for f in flags if not f & 0x100)
        assert (core, len(flags)) == readelf_counts(Path(path)), base


def test_exports_from_objects_equal_module_symvers(real_inputs, real_db, debian_symdb):
    """vmlinux's exports from the image's own __ksymtab/__kcrctab and the modules' from
    their objects (``debian_symdb``) equal the headers' Module.symvers."""
    derived = debian_symdb
    assert derived.export_rows() == real_db.export_rows()
    assert len(derived.export_rows()) == 24618


def test_symbols_list_round_trip(real_db, tmp_path):
    out = tmp_path / "Symbols.list"
    export_symbols_list(real_db, out)
    again = import_symbols_list(out, db=tmp_path / "again.sqlite")
    assert again == real_db
    assert again.lookup("cdrom_check_events") == real_db.lookup("cdrom_check_events")


def test_corrupt_module_among_thousands(real_inputs, tmp_path):
    image, symvers = real_inputs
    fake = tmp_path / "image"
    moddir = fake / "lib" / "modules" / RELEASE
    moddir.mkdir(parents=True)
    (fake / "boot").mkdir()
    os.symlink(image / "boot" / f"vmlinuz-{RELEASE}", fake / "boot" / f"vmlinuz-{RELEASE}")
    for p in find_modules(image / "lib" / "modules" / RELEASE):
        rel = Path(p).relative_to(image / "lib" / "modules" / RELEASE)
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(p, moddir / rel)
    bad = moddir / "kernel" / "zz_corrupt.ko"
    bad.write_bytes(b"\x7fELF" + os.urandom(4000))
    with pytest.raises(KlpkitError, match=r"zz_corrupt\.ko: .*--skip-bad"):
        build_from_debian(fake, None, symvers, db=tmp_path / "x.sqlite", progress=False)
    assert not (tmp_path / "x.sqlite").exists()
    db = build_from_debian(
        fake, None, symvers, db=tmp_path / "x.sqlite", progress=False, skip_bad=True
    )
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


def test_debian_placeholder_system_map(real_inputs, tmp_path):
    """A root without boot/vmlinuz and only Debian's placeholder System.map: the error
    says where vmlinux's symbols are."""
    image = real_inputs[0]
    placeholder = image / "boot" / f"System.map-{RELEASE}"
    assert placeholder.stat().st_size < 200
    fake = tmp_path / "image"
    (fake / "lib" / "modules" / RELEASE).mkdir(parents=True)
    (fake / "boot").mkdir()
    os.symlink(placeholder, fake / "boot" / f"System.map-{RELEASE}")
    with pytest.raises(KlpkitError, match=f"placeholder.*linux-image-{RELEASE}-dbg"):
        build_from_debian(fake, None, db=tmp_path / "p.sqlite", progress=False)

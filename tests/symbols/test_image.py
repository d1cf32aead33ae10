"""vmlinux's symbols from the kernel image alone (klpkit.symbols.vmlinuz): synthetic images
in every layout and compression, the real Debian 6.1.0-47 image, and the oracle: the
database from the image equals the one from the -dbg package."""

import json
import os
import shutil
import struct
import time
from collections import defaultdict
from pathlib import Path

import pytest

from klpkit.cli import main
from klpkit.errors import KlpkitError
from klpkit.symbols import SymbolDB, build_from_debian, build_from_vmlinuz, rules
from klpkit.symbols.debian_image import find_debug_vmlinux
from klpkit.symbols.elf_objects import read_vmlinux
from klpkit.symbols.vmlinuz import (
    ImageError,
    Inflater,
    elf_layout,
    payload_of,
    read_image,
    read_vmlinuz,
)
from tests.conftest import require

from .kimage import BUILD_ID, RELEASE, bzimage, compress, make_vmlinux

DEBIAN = "6.1.0-47-amd64"
DEBIAN_612 = "6.12.117+deb12-amd64"  # the bookworm 6.12 line (issue 13)


def check_image(img, want) -> None:
    """``img`` (read_image's result) holds exactly what the synthetic ``want`` stored."""
    ks = img.kallsyms
    assert ks.entries == [s.letter + s.name for s in want.symbols]
    assert ks.addresses == [s.addr for s in want.symbols]
    for label, off in want.tables.items():
        assert ks.found[label] == off, label
    assert set(ks.found) == set(want.tables)
    assert img.build_id == BUILD_ID.hex() and img.release == RELEASE
    names = [s.name for s in want.symbols]
    if ks.seqs_raw is not None:
        assert ks.seqs_of_names == sorted(
            range(len(names)), key=lambda i: (names[i], ks.addresses[i], i)
        )
    got = {(e.name, e.export_type, e.namespace, e.crc) for e in img.exports}
    assert got == {
        (e.name, "EXPORT_SYMBOL_GPL" if e.gpl else "EXPORT_SYMBOL", e.namespace or None, e.crc)
        for e in want.exports
    }


@pytest.fixture(scope="module")
def synthetic():
    return make_vmlinux()


# --- layouts and compressions ------------------------------------------------------------
MAGIC = {"zstd": b"\x28\xb5\x2f\xfd", "lz4": b"\x02\x21\x4c\x18", "lzo": b"\x89LZO"}
TOOL = {"zstd": "zstd", "lz4": "lz4", "lzo": "lzop"}


@pytest.mark.parametrize("fmt", ["xz", "gzip", "bzip2", "lzma", "zstd", "lz4", "lzo"])
def test_every_payload_compression(synthetic, tmp_path, fmt):
    """Every format of the kernel's boot decompressors: the standard library's, and zstd
    (Debian's 6.12 images), lz4 and lzo through their tools -- or, without the tool, the
    one-line error that names the format and the command."""
    path = tmp_path / "vmlinuz"
    packed = compress(synthetic.elf, fmt)
    if packed is None:
        require(fmt != "zstd", "zstd command not installed (Debian's 6.12 images are zstd)")
        path.write_bytes(bzimage(synthetic.elf, payload=MAGIC[fmt] + b"\0" * 64))
        one_error(path, f"{fmt}-compressed: .* the '{TOOL[fmt]}' command is not installed")
        return
    path.write_bytes(bzimage(synthetic.elf, fmt))
    img = read_image(path)
    assert img.compression == fmt and img.declared == len(synthetic.elf)
    check_image(img, synthetic)


@pytest.mark.parametrize("order", ["6.1", "6.4"])
@pytest.mark.parametrize("variant", ["x86_64", "no-seqs", "relative", "addresses", "i386"])
def test_table_layouts(tmp_path, order, variant):
    """The v6.1 order and the v6.4+ order (scripts/kallsyms: "change the output order"),
    with --absolute-percpu (x86_64), plain base-relative offsets, absolute addresses
    (!KALLSYMS_BASE_RELATIVE), without kallsyms_seqs_of_names, and a 32-bit kernel."""
    opts = {
        "x86_64": {},
        "no-seqs": {"seqs": False},
        "relative": {"absolute_percpu": False, "percpu": False},
        "addresses": {"base_relative": False},
        "i386": {"ptr": 4, "absolute_percpu": False, "percpu": False},
    }[variant]
    want = make_vmlinux(order=order, **opts)
    path = tmp_path / "vmlinux"
    path.write_bytes(want.elf)  # an uncompressed, stripped vmlinux
    img = read_image(path)
    assert img.compression == "none"
    check_image(img, want)
    if opts.get("seqs") is False:
        assert img.kallsyms.seqs_raw is None


def test_two_byte_lengths_and_duplicates(synthetic, tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(bzimage(synthetic.elf, "gzip"))
    db = build_from_vmlinuz(path, db=tmp_path / "s.sqlite", progress=False)
    assert db.release == RELEASE and db.build_id == BUILD_ID.hex()
    (long,) = db.lookup("very_long_" + "n" * 200)  # > 127 token bytes: ULEB128 length
    assert (long.bind, long.type) == ("global", "func")
    dups = db.lookup("dup_helper")
    assert [(e.sympos, e.count, e.bind) for e in dups] == [
        (1, 3, "local"),
        (2, 3, "local"),
        (3, 3, "local"),
    ]
    assert db.lookup("weak_fn")[0].bind == "weak"
    # per-cpu symbols: kallsyms types them 'A' (--absolute-percpu), binding unknown
    (pcpu,) = db.lookup("static_pcpu")
    assert (pcpu.bind, pcpu.type) == ("unknown", "object")
    (e,) = db.lookup("func_1_y")
    assert (e.exported, e.export_type, e.namespace, e.crc) == (
        True,
        "EXPORT_SYMBOL_GPL",
        "MY_NS",
        0x33333333,
    )
    (d,) = db.lookup("__start___ksymtab")
    assert (d.bind, d.type) == ("global", "object")


def test_letters_give_binding_and_type():
    """rules.LETTER_FLAGS: the kernel's type letter decides (rules: why)."""
    f = rules.letter_flags
    assert f("T") == 1 | 2 << 4 and f("t") == 0 | 2 << 4  # global/local func
    assert f("W") == 2 | 2 << 4 and f("V") == 2 | 1 << 4  # weak func / object
    assert f("D") == 1 | 1 << 4 and f("b") == 0 | 1 << 4 and f("R") == 1 | 1 << 4
    assert f("A") == 15 | 1 << 4  # per-cpu: binding unknown


def test_cli_image_inputs(synthetic, tmp_path, capsys):
    image = tmp_path / "vmlinuz"
    image.write_bytes(bzimage(synthetic.elf, "xz"))
    assert (
        main(
            [
                "symbols",
                "build",
                "--vmlinuz",
                str(image),
                "--db",
                str(tmp_path / "a.sqlite"),
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["release"] == RELEASE and out["counts"]["objects"] == 1
    # --debian-image with a file is the same as --vmlinuz
    assert (
        main(["symbols", "build", "--debian-image", str(image), "--db", str(tmp_path / "b.sqlite")])
        == 0
    )
    assert SymbolDB.open(tmp_path / "a.sqlite") == SymbolDB.open(tmp_path / "b.sqlite")
    assert (
        main(
            [
                "symbols",
                "build",
                "--vmlinuz",
                str(image),
                "--release",
                "6.1.0-other",
                "--db",
                str(tmp_path / "c.sqlite"),
            ]
        )
        == 2
    )
    assert "is kernel 6.1.0-synthetic, not 6.1.0-other" in capsys.readouterr().err


def test_debian_root_reads_its_image(synthetic, tmp_path):
    """build_from_debian on an image tree uses boot/vmlinuz (no -dbg) and its modules."""
    root = tmp_path / "root"
    moddir = root / "lib" / "modules" / RELEASE / "kernel"
    moddir.mkdir(parents=True)
    (root / "boot").mkdir()
    (root / "boot" / f"vmlinuz-{RELEASE}").write_bytes(bzimage(synthetic.elf, "xz"))
    (root / "boot" / f"System.map-{RELEASE}").write_text(
        "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n"
    )
    db = build_from_debian(root, db=tmp_path / "d.sqlite", progress=False)
    assert db.objects() == ["vmlinux"] and db.meta["source"] == "debian"
    assert db.lookup("func_3_x")[0].exported
    (root / "boot" / f"vmlinuz-{RELEASE}").unlink()
    with pytest.raises(KlpkitError, match="placeholder.*no boot/vmlinuz.*pass --dbg"):
        build_from_debian(root, db=tmp_path / "e.sqlite", progress=False)


# --- errors: one line, the file named -------------------------------------------------------
def one_error(path, match: str):
    with pytest.raises(ImageError, match=match) as info:
        read_image(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    return text


def test_refusals(synthetic, tmp_path, monkeypatch):
    p = tmp_path / "img"
    p.write_bytes(b"MZ" + b"\0" * 4096)
    one_error(p, "not a kernel image: no x86 bzImage setup header")
    p.write_bytes(bzimage(synthetic.elf, protocol=0x0206))
    one_error(p, "boot protocol 2.06 has no payload fields")
    good = bzimage(synthetic.elf, "xz")
    p.write_bytes(good[:4000])
    one_error(p, "payload .* does not fit in the file")
    p.write_bytes(bzimage(synthetic.elf, payload=b"\x42" * 64))
    one_error(p, "in no compression format the kernel uses")
    xz = compress(synthetic.elf, "xz")
    size = struct.pack("<I", len(synthetic.elf))
    p.write_bytes(bzimage(synthetic.elf, payload=xz[: len(xz) // 2] + size))
    one_error(p, "the xz payload is (truncated|damaged)")
    damaged = bytearray(xz)
    damaged[len(xz) // 2] ^= 0xFF
    p.write_bytes(
        bzimage(synthetic.elf, payload=bytes(damaged) + struct.pack("<I", len(synthetic.elf)))
    )
    one_error(p, "the xz payload is damaged")
    p.write_bytes(bzimage(synthetic.elf, payload=xz + struct.pack("<I", 1000)))
    one_error(p, "decompresses to more than the 1000 bytes the image declares")
    p.write_bytes(bzimage(synthetic.elf, payload=xz + struct.pack("<I", 0x7FFFFFFF)))
    one_error(p, "declares a 2147483647-byte vmlinux")
    p.write_bytes(bzimage(b"not an ELF" * 100, "gzip"))
    one_error(p, "not an ELF vmlinux")
    # a kernel without kallsyms: no token table
    no_ks = bytearray(synthetic.elf)
    t = synthetic.tables["kallsyms_token_table"]
    no_ks[t:] = b"\0" * (len(no_ks) - t)
    p.write_bytes(bzimage(bytes(no_ks), "gzip"))
    one_error(p, "no kallsyms token table .*CONFIG_KALLSYMS")
    # zstd without the tool (and without a standard-library zstd): the format is named
    monkeypatch.setattr(shutil, "which", lambda _cmd: None)
    monkeypatch.setattr("klpkit.symbols.vmlinuz._stdlib_zstd", lambda: None)
    p.write_bytes(bzimage(synthetic.elf, payload=b"\x28\xb5\x2f\xfd" + b"\0" * 60))
    one_error(
        p,
        "zstd-compressed: Python's standard library cannot decompress zstd and the "
        "'zstd' command is not installed",
    )
    p.write_bytes(b"")
    one_error(p, "not a kernel image")
    with pytest.raises(KlpkitError, match="no such file"):
        read_image(tmp_path / "missing")


def test_damaged_tables(synthetic, tmp_path):
    """Damage that breaks the tables' shape is one error, never a wrong table."""
    p = tmp_path / "vmlinux"
    t = synthetic.tables

    def damaged(offset: int, value: bytes) -> Path:
        elf = bytearray(synthetic.elf)
        elf[offset : offset + len(value)] = value
        p.write_bytes(bytes(elf))
        return p

    # an empty token (two NULs in a row) or an index that misses a token
    one_error(damaged(t["kallsyms_token_table"] + 1, b"\0"), "no kallsyms token table")
    one_error(damaged(t["kallsyms_token_index"] + 2 * 9, b"\x01\x00"), "no kallsyms token table")
    # num_syms off by one, a marker wrong, a length byte wrong: no names stream fits
    n = struct.unpack_from("<I", synthetic.elf, t["kallsyms_num_syms"])[0]
    one_error(damaged(t["kallsyms_num_syms"], struct.pack("<I", n + 1)), "no kallsyms_names stream")
    one_error(damaged(t["kallsyms_markers"] + 4, b"\xff"), "no kallsyms_names stream")
    one_error(damaged(t["kallsyms_names"], b"\x7f"), "no kallsyms_names stream")
    # only code symbols: a kernel without KALLSYMS_ALL cannot be livepatched
    p.write_bytes(make_vmlinux(code_only=True, percpu=False).elf)
    with pytest.raises(ImageError, match="code symbols only.*CONFIG_KALLSYMS_ALL"):
        read_vmlinuz(p)


def test_inflater_stops_early(synthetic):
    """Decompression stops once the tables are out: a vmlinux's kallsyms are in .rodata,
    the rest of the payload is never inflated."""
    tail = synthetic.elf + os.urandom(4 << 20) * 3  # 12 MiB of incompressible data
    payload = payload_of(bzimage(tail, "gzip"))
    with Inflater(payload) as inf:
        lay = elf_layout(inf)
        from klpkit.symbols.vmlinuz import find_kallsyms

        ks = find_kallsyms(inf, lay)
        assert len(ks) == len(synthetic.symbols)
        assert len(inf.buf) < len(tail) and not inf.done


# --- the real Debian image ---------------------------------------------------------------------
@pytest.mark.slow
def test_real_image_tables(debian_image):
    """Debian 6.1.0-47-amd64: xz payload, v6.1 layout with kallsyms_seqs_of_names, absolute
    per-cpu offsets; decoded from the first 24 of 66 MB."""
    path = Path(debian_image) / "boot" / f"vmlinuz-{DEBIAN}"
    t = time.perf_counter()
    img = read_image(path, exports=False)
    seconds = time.perf_counter() - t
    ks = img.kallsyms
    assert (img.compression, img.release, img.machine) == ("xz", DEBIAN, 62)
    assert img.version.startswith(f"{DEBIAN} (debian-kernel@lists.debian.org)")
    assert len(ks) == 94105 and img.declared == 65905108
    assert img.decompressed < img.declared / 2, "decompression did not stop early"
    assert list(ks.found) == [
        "kallsyms_num_syms",
        "kallsyms_names",
        "kallsyms_markers",
        "kallsyms_token_table",
        "kallsyms_token_index",
        "kallsyms_offsets",
        "kallsyms_relative_base",
        "kallsyms_seqs_of_names",
    ]
    assert (
        ks.found["kallsyms_offsets"]
        < ks.found["kallsyms_relative_base"]
        < ks.found["kallsyms_num_syms"]
        < ks.found["kallsyms_names"]
    )  # v6.1 order
    assert ks.addresses == sorted(ks.addresses)
    assert ks.entries[:2] == ["Afixed_percpu_data", "A__per_cpu_start"]
    assert ks.address_of("startup_64") == 0xFFFFFFFF81000000
    # the name index (6.2's kallsyms_on_each_match_symbol) orders equal names as the
    # table does: sympos is the same by either walk (rules' module doc)
    names, seqs = ks.names, ks.seqs_of_names
    assert sorted(seqs) == list(range(len(ks)))
    assert [names[i] for i in seqs] == sorted(names)
    by_name = defaultdict(list)
    for i in seqs:
        by_name[names[i]].append(i)
    assert all(v == sorted(v) for v in by_name.values())
    assert sum(len(v) > 1 for v in by_name.values()) == 1120
    print(
        f"\nimage decode: {seconds:.2f} s ({img.decompressed >> 20} of "
        f"{img.declared >> 20} MiB inflated)"
    )


@pytest.fixture(scope="module")
def debian_612_image():
    """The bookworm 6.12 line's image package (zstd vmlinuz, the v6.4+ table order)."""
    from klpkit import debian
    from tests.conftest import _ensure

    return _ensure(lambda: debian.ensure_image(DEBIAN_612), "Debian 6.12 kernel image")


@pytest.mark.slow
def test_real_612_image_tables(debian_612_image):
    """Debian 6.12.117+deb12-amd64: zstd payload (through the zstd command), the tables
    in the v6.4+ order (num_syms, names, markers, token table and index, then offsets,
    relative base, seqs_of_names), still --absolute-percpu; call-padding __pfx_ symbols."""
    require(shutil.which("zstd"), "zstd not installed (Debian's 6.12 images are zstd)")
    img = read_image(Path(debian_612_image) / "boot" / f"vmlinuz-{DEBIAN_612}")
    ks = img.kallsyms
    assert (img.compression, img.release) == ("zstd", DEBIAN_612)
    assert list(ks.found) == [
        "kallsyms_num_syms",
        "kallsyms_names",
        "kallsyms_markers",
        "kallsyms_token_table",
        "kallsyms_token_index",
        "kallsyms_offsets",
        "kallsyms_relative_base",
        "kallsyms_seqs_of_names",
    ]
    assert ks.found["kallsyms_token_index"] < ks.found["kallsyms_offsets"]  # v6.4+ order
    assert len(ks) > 150_000 and ks.addresses == sorted(ks.addresses)
    assert ks.entries[0] == "Afixed_percpu_data"
    assert "T__pfx_schedule" in ks.entries and "Tschedule" in ks.entries
    assert img.decompressed < img.declared and len(img.build_id) == 40
    exports = {e.name: e for e in img.exports}
    assert len(exports) > 10_000 and exports["_printk"].crc is not None


@pytest.mark.slow
def test_cli_debian_needs_no_dbg(debian_image, debian_symdb, tmp_path, monkeypatch, capsys):
    """``klpkit symbols build --debian REL``: the image package alone (any -dbg access
    fails here), exports from the installed headers' Module.symvers when there; the same
    database as the fixture's (image, exports from the objects)."""
    from klpkit import debian

    def no_dbg(*_a, **_k):
        raise AssertionError("the -dbg package was asked for")

    monkeypatch.setattr(debian, "ensure_dbg", no_dbg)
    monkeypatch.setattr(debian, "fetch_deb", no_dbg)  # (the image is cached already)
    out = tmp_path / "cli.sqlite"
    assert main(["symbols", "build", "--debian", DEBIAN, "--db", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["source"] == "debian" and summary["counts"]["objects"] == 4023
    assert summary["symvers"] == (
        str(debian.headers_symvers(DEBIAN)) if debian.headers_symvers(DEBIAN) else None
    )
    assert SymbolDB.open(out) == debian_symdb


# --- the oracle: the image equals the -dbg package ---------------------------------------------
@pytest.mark.slow
def test_oracle_image_equals_dbg(debian_image, debian_dbg, debian_symdb, tmp_path):
    """The only test that needs the 855 MB -dbg package.  For 6.1.0-47-amd64:

    * the database from the image alone (``debian_symdb``: kallsyms tables in
      boot/vmlinuz, exports from its __ksymtab and the modules) equals the database built
      with the -dbg vmlinux in every name, object, binding, type, export, CRC, namespace,
      sympos and the build id (``SymbolDB.__eq__``);
    * the decoded kallsyms equal the table klpkit derives from the -dbg vmlinux's ELF
      symbol table (rules.vmlinux_kallsyms): same names in the same order, same type
      letters (rules.vmlinux_letters: nm's letter + the per-cpu 'A'), same addresses;
    * the real System.map gives the same vmlinux records, and rules' fast table equals
      its one-symbol-at-a-time reference on the real vmlinux.
    """
    from .test_rules_speed_equivalence import same

    vmlinux, smap = find_debug_vmlinux(Path(debian_dbg), DEBIAN)
    dbg_db = build_from_debian(debian_image, debian_dbg, db=tmp_path / "dbg.sqlite", progress=False)
    assert dbg_db == debian_symdb
    assert any("/boot/vmlinuz-" in p for p in debian_symdb.sources)  # (the image was read)

    img = read_image(Path(debian_image) / "boot" / f"vmlinuz-{DEBIAN}")
    from klpkit.symbols.elf_objects import _scan_any

    with _scan_any(str(vmlinux)) as scan:
        table = rules.vmlinux_kallsyms(scan)
        letters = rules.vmlinux_letters(scan, table).decode()
        assert len(same(scan)) == 94105
    assert [row[0] for row in table] == img.kallsyms.names
    assert letters == img.kallsyms.types
    assert [row[3] for row in table] == img.kallsyms.addresses
    rec = read_vmlinux(vmlinux, derive_exports=True)
    assert sorted(rec[3]) == sorted(img.exports) and rec[1] == img.build_id

    # System.map (nm -n, + kallsyms' sort and per-cpu 'A') gives the same records
    from klpkit.symbols.system_map import system_map_record

    image = Path(debian_image) / "boot" / f"vmlinuz-{DEBIAN}"
    assert system_map_record(smap).records == read_vmlinuz(image)[0].records
    # every duplicated name: sympos 1..N is ascending address in the real System.map
    addrs = defaultdict(list)
    for line in Path(smap).read_text().splitlines():
        a, letter, name = line.split()[:3]
        if letter not in "Aa" and not rules.vmlinux_name_ignored(name):
            addrs[name].append(int(a, 16))
    dups = {n: sorted(a) for n, a in addrs.items() if len(a) > 1}
    assert len(dups) == 1120
    at = defaultdict(list)
    for name, addr in zip(img.kallsyms.names, img.kallsyms.addresses, strict=True):
        at[name].append(addr)
    for name in ["__func__.0", "_rs.1", "cpu_has_perm"] + sorted(dups)[:200]:
        if name not in dups:
            continue
        entries = debian_symdb.lookup(name, "vmlinux")
        assert [e.sympos for e in entries] == list(range(1, len(dups[name]) + 1))
        assert at[name] == dups[name]


def test_cli_vmlinuz_with_modules(synthetic, tools, tmp_path, capsys):
    """``--vmlinuz FILE --modules-dir DIR``: an installed kernel's /boot/vmlinuz and
    /lib/modules/<release> (modules.dep gives the dependencies)."""
    from .conftest import compile_module

    image = tmp_path / "vmlinuz"
    image.write_bytes(bzimage(synthetic.elf, "gzip"))
    mods = tmp_path / "modules"
    (mods / "kernel").mkdir(parents=True)
    compile_module(mods / "kernel", "plain", ["int plain_fn(void) { return 0; }\n"])
    compile_module(mods / "kernel", "user", ["int user_fn(void) { return 1; }\n"])
    (mods / "modules.dep").write_text("kernel/user.ko: kernel/plain.ko\nkernel/plain.ko:\n")
    db = tmp_path / "m.sqlite"
    assert (
        main(
            [
                "symbols",
                "build",
                "--vmlinuz",
                str(image),
                "--modules-dir",
                str(mods),
                "--db",
                str(db),
            ]
        )
        == 0
    )
    built = SymbolDB.open(db)
    assert built.objects() == ["vmlinux", "plain", "user"]
    assert built.module_depends("user") == ["plain"]
    assert built.lookup("user_fn")[0].object == "user"
    capsys.readouterr()
    assert (
        main(
            [
                "symbols",
                "build",
                "--tree",
                str(tmp_path),
                "--modules-dir",
                str(mods),
                "--db",
                str(tmp_path / "n.sqlite"),
            ]
        )
        == 2
    )
    assert "--modules-dir goes with --vmlinuz" in capsys.readouterr().err

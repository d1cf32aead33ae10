"""Compressed modules (``.ko.xz``: Debian 6.12, CONFIG_MODULE_COMPRESS_XZ; ``.ko.zst``,
``.ko.gz``): every reader of the ELF layer decompresses them in memory, the writer stays
uncompressed, and a damaged compressed file is one ElfError line naming the file, never
a traceback, a hang or an unbounded allocation."""

import gzip
import lzma
import random
import re
import shutil
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from klpkit.elf import ElfFile
from klpkit.elf import compressed as Z
from klpkit.elf.fast import open_scan, read_symbols
from klpkit.errors import ElfError

from .conftest import compile_object, require
from .test_malformed import exercise


def xz(data: bytes) -> bytes:
    """As scripts/Makefile.modinst makes a .ko.xz: xz --check=crc32 --lzma2=dict=1MiB."""
    return lzma.compress(
        data,
        format=lzma.FORMAT_XZ,
        check=lzma.CHECK_CRC32,
        filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}],
    )


def zst(data: bytes) -> bytes:
    require(shutil.which("zstd"), "zstd not installed (scripts/setup.sh)")
    return subprocess.run(
        ["zstd", "-q", "-c", "-T1"], input=data, capture_output=True, check=True
    ).stdout


COMPRESSORS = {".xz": xz, ".gz": lambda d: gzip.compress(d, mtime=0), ".zst": zst}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return compile_object(tmp_path_factory.mktemp("z"), "x86_64")


@pytest.fixture(params=sorted(COMPRESSORS))
def packed(request, sample, tmp_path):
    """(suffix, path of the compressed sample, plain path)."""
    suffix = request.param
    plain = tmp_path / "m.ko"
    plain.write_bytes(sample)
    path = tmp_path / f"m.ko{suffix}"
    path.write_bytes(COMPRESSORS[suffix](sample))
    return suffix, path, plain


def test_readers_see_through_compression(packed, sample):
    suffix, path, plain = packed
    elf = ElfFile.read(path)
    assert elf.compression == Z.SUFFIXES[suffix]
    assert ElfFile.read(plain).compression is None
    assert elf.to_bytes() == sample  # a no-op write: the plain bytes
    assert [s.name for s in elf.sections] == [s.name for s in ElfFile.read(plain).sections]
    # the fast scanner, on the path and on the compressed bytes
    with open_scan(path) as scan, open_scan(plain) as ref:
        assert scan.compression == Z.SUFFIXES[suffix] and ref.compression is None
        assert scan.names == ref.names and scan.sh_names == ref.sh_names
        assert scan.section_data(".text") == ref.section_data(".text")
    assert read_symbols(path.read_bytes(), str(path)).names == read_symbols(plain).names
    # told by the magic, not the name: compressed bytes under a plain name are read too
    odd = path.with_name("odd.ko")
    odd.write_bytes(path.read_bytes())
    assert ElfFile.read(odd).compression == Z.SUFFIXES[suffix]


def test_writing_stays_uncompressed(packed, sample, tmp_path):
    _suffix, path, _plain = packed
    before = path.read_bytes()
    elf = ElfFile.read(path)
    with pytest.raises(ElfError, match=r"writes modules uncompressed: name the output m\.ko"):
        elf.write(path)
    assert path.read_bytes() == before
    elf.write(tmp_path / "out.ko")
    assert (tmp_path / "out.ko").read_bytes() == sample


def test_concatenated_streams_and_padding(sample):
    """xz and gzip allow several streams/members in one file (and xz NUL padding)."""
    half = len(sample) // 2
    joined = xz(sample[:half]) + b"\0" * 8 + xz(sample[half:])
    assert Z.decompress(joined, "xz") == sample
    assert (
        Z.decompress(gzip.compress(sample[:half]) + gzip.compress(sample[half:]), "gzip") == sample
    )


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_damage_is_one_line(suffix, sample, tmp_path):
    data = COMPRESSORS[suffix](sample)
    fmt = Z.SUFFIXES[suffix]
    cases = {
        "truncated": (data[: len(data) // 2], f"(truncated {fmt} data|damaged {fmt} data)"),
        "garbage after": (data + b"not a stream", f"damaged {fmt} data"),
        "flipped": (
            data[:40] + bytes([data[40] ^ 0xFF]) + data[41:],
            f"damaged {fmt} data|truncated {fmt} data|bad magic|not an ELF",
        ),
        "magic only": (data[:6], f"(truncated|damaged) {fmt} data"),
    }
    for what, (bad, message) in cases.items():
        path = tmp_path / f"bad-{what.replace(' ', '-')}.ko{suffix}"
        path.write_bytes(bad)
        for read in (
            ElfFile.read,
            lambda p: open_scan(p).close(),
            lambda p: open_scan(p.read_bytes(), str(p)).close(),
        ):
            with pytest.raises(ElfError) as e:
                read(path)
            text = str(e.value)
            assert text.startswith(f"{path}: ") and "\n" not in text, (what, text)
            assert e.value.path == str(path)
            assert re.search(message, text), (what, text)


def test_named_compressed_but_is_not(tmp_path, sample):
    bad = tmp_path / "m.ko.xz"
    bad.write_bytes(b"hello, not a module at all")
    with pytest.raises(
        ElfError,
        match=r"m\.ko\.xz: not xz-compressed \(bad magic\) although "
        r"named \.xz, and not ELF either",
    ):
        ElfFile.read(bad)
    with pytest.raises(ElfError, match="not xz-compressed"):
        open_scan(bad)
    # plain ELF under a compressed name is still an ELF file (the content decides)
    bad.write_bytes(sample)
    assert ElfFile.read(bad).compression is None


def test_inflation_is_bounded(sample):
    """A bomb (a small file that inflates to gigabytes) stops at the limit."""
    bomb = xz(b"\0" * (4 << 20))
    with pytest.raises(ElfError, match=r"xz data inflates past 1 MiB: not a kernel module"):
        Z.decompress(bomb, "xz", "bomb.ko.xz", limit=1 << 20)
    with pytest.raises(ElfError, match=r"gzip data inflates past 1 MiB"):
        Z.decompress(gzip.compress(b"\0" * (4 << 20)), "gzip", limit=1 << 20)
    if shutil.which("zstd"):
        with pytest.raises(ElfError, match=r"zstd data inflates past 1 MiB"):
            Z.decompress(zst(b"\0" * (4 << 20)), "zstd", limit=1 << 20)
    assert Z.decompress(xz(sample), "xz", limit=len(sample)) == sample


def test_zstd_without_the_tool(monkeypatch, sample):
    monkeypatch.setattr(Z, "_stdlib_zstd", lambda: None)
    monkeypatch.setattr(Z.shutil, "which", lambda _name: None)
    with pytest.raises(
        ElfError,
        match=r"m\.ko\.zst: zstd-compressed, and Python 3.11 cannot "
        r"read zstd: install the zstd command",
    ):
        Z.decompress(b"\x28\xb5\x2f\xfd" + b"\0" * 16, "zstd", "m.ko.zst")


def test_read_many_keeps_order_and_reports_errors_as_values(tmp_path, sample):
    paths = []
    for i in range(40):
        p = tmp_path / (f"m{i}.ko.xz" if i % 3 else f"m{i}.ko")
        p.write_bytes(xz(sample) if i % 3 else sample)
        paths.append(str(p))
    (tmp_path / "m7.ko.xz").write_bytes(b"\xfd7zXZ\0broken")
    got = list(Z.read_many(paths, workers=2, ahead=4))
    assert [p for p, _d in got] == paths
    for i, (_p, data) in enumerate(got):
        if i == 7:
            assert isinstance(data, ElfError) and "damaged xz data" in str(data)
        else:
            assert data == (sample if i % 3 else b"")  # plain .ko files are not read here
    assert list(Z.read_many(paths[:1], workers=1)) == [(paths[0], b"")]
    # stopping early leaves no thread behind that would still fill memory
    it = Z.read_many(paths, workers=2, ahead=4)
    next(it)
    it.close()


def test_cli_inspect_reads_ko_xz(tmp_path, sample):
    path = tmp_path / "m.ko.xz"
    path.write_bytes(xz(sample))
    ok = subprocess.run(
        [sys.executable, "-m", "klpkit.cli", "inspect", str(path)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"{path} (xz-compressed): ELF64 little-endian x86_64 REL")
    path.write_bytes(xz(sample)[:-20])
    bad = subprocess.run(
        [sys.executable, "-m", "klpkit.cli", "inspect", str(path)], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert str(path) in bad.stderr and "xz data" in bad.stderr


def test_random_damage_of_compressed_modules(sample):
    """Bit flips and cuts anywhere in a .ko.xz / .ko.gz: ElfError or a readable object,
    through every reader (exercise(): the model, the writer, the fast scanner)."""
    rng = random.Random(612)
    for compress in (xz, COMPRESSORS[".gz"]):
        packed = compress(sample)
        for _ in range(300):
            bad = bytearray(packed)
            for _ in range(rng.randint(1, 3)):
                pos = rng.randrange(len(bad))
                bad[pos] ^= 1 << rng.randrange(8)
            exercise(bytes(bad[: rng.choice((len(bad), rng.randrange(len(bad) + 1)))]))


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.data())
def test_hypothesis_compressed_overwrites(sample, data):
    packed = bytearray(xz(sample))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(packed) - 1))
        chunk = data.draw(st.binary(min_size=1, max_size=8))
        packed[pos : pos + len(chunk)] = chunk
    exercise(bytes(packed[: data.draw(st.integers(0, len(packed)))]))

"""Damaged kernel images: every defect ends in one ImageError (an InputError) naming the
file, or in a table that still has the kallsyms shape -- never a traceback, a hang or an
unbounded allocation (mutations of a synthetic bzImage, its payload and its vmlinux;
the style of tests/elf/test_malformed.py)."""

import random
import struct
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from klpkit.errors import InputError
from klpkit.symbols.vmlinuz import ImageError, read_image

from .kimage import bzimage, make_vmlinux

NAME = "fuzz.img"
SLOW = 5.0  # seconds: a case taking longer is a hang in the making


@pytest.fixture(scope="module")
def vmlinux():
    return make_vmlinux()


@pytest.fixture(scope="module")
def images(vmlinux):
    return {fmt: bzimage(vmlinux.elf, fmt) for fmt in ("xz", "gzip", "bzip2")}


def exercise(data: bytes) -> None:
    """Read the image as the database builder does; only ImageError may escape, one line
    naming the file; a result is a well-formed table."""
    t = time.perf_counter()
    try:
        img = read_image(NAME, data=data)
    except ImageError as e:
        assert isinstance(e, InputError)
        assert str(e).startswith(f"{NAME}: ") and "\n" not in str(e), str(e)
    else:
        ks = img.kallsyms
        assert ks.entries and all(len(e) > 1 and e[0].isalpha() for e in ks.entries)
        assert ks.addresses is None or len(ks.addresses) == len(ks.entries)
        assert isinstance(img.exports, list)
    assert time.perf_counter() - t < SLOW


def test_truncations(vmlinux, images):
    elf = vmlinux.elf
    for cut in list(range(0, 200)) + list(range(200, len(elf), 61)):
        exercise(elf[:cut])
    xz = images["xz"]
    for cut in list(range(0, 0x300, 7)) + list(range(0x300, len(xz), 37)):
        exercise(xz[:cut])


def test_setup_header_fields_bogus(images):
    img = images["gzip"]
    for off, fmt in [(0x1F1, "B"), (0x206, "H"), (0x20E, "H"), (0x248, "I"), (0x24C, "I")]:
        for value in (0, 1, 3, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF):
            try:
                patched = bytearray(img)
                struct.pack_into("<" + fmt, patched, off, value)
            except struct.error:
                continue
            exercise(bytes(patched))


def test_wrong_magic_everywhere(vmlinux, images):
    for img in (images["xz"], vmlinux.elf):
        for off in (0, 1, 4, 5, 0x202, 0x203):
            patched = bytearray(img)
            patched[off] ^= 0x55
            exercise(bytes(patched))


def test_declared_size_bogus(images):
    """The 4 bytes after the compressed data (size_append) lie: too small, too large."""
    for img in images.values():
        end = struct.unpack_from("<II", img, 0x248)
        tail = 5 * 512 + end[0] + end[1] - 4
        for value in (0, 1, 4096, 0x7FFFFFF, 0xFFFFFFFF):
            patched = bytearray(img)
            struct.pack_into("<I", patched, tail, value)
            exercise(bytes(patched))


def test_payload_bit_flips(images):
    rng = random.Random(13)
    for img in images.values():
        start = 5 * 512 + struct.unpack_from("<I", img, 0x248)[0]
        for _ in range(60):
            patched = bytearray(img)
            for _ in range(rng.randint(1, 3)):
                pos = rng.randrange(start, len(img) - 36)
                patched[pos] ^= 1 << rng.randrange(8)
            exercise(bytes(patched))


def test_table_bit_flips(vmlinux):
    """Flips inside the kallsyms tables and the export table of the vmlinux itself."""
    lo = min(vmlinux.tables.values())
    rng = random.Random(7)
    for _ in range(1500):
        patched = bytearray(vmlinux.elf)
        for _ in range(rng.randint(1, 3)):
            pos = (
                rng.randrange(lo, len(patched))
                if rng.random() < 0.8
                else rng.randrange(len(patched))
            )
            patched[pos] ^= 1 << rng.randrange(8)
        exercise(bytes(patched))


def test_damaged_token_table_and_index(vmlinux):
    """Every byte of the token table and index overwritten with NUL, 0xff or a letter."""
    t, x = vmlinux.tables["kallsyms_token_table"], vmlinux.tables["kallsyms_token_index"]
    for pos in list(range(t, x + 512, 3)):
        for value in (0, 0xFF, ord("q")):
            patched = bytearray(vmlinux.elf)
            patched[pos] = value
            exercise(bytes(patched))


def test_every_table_field_bogus(vmlinux):
    """num_syms, the first length bytes, markers, offsets, base: extreme values."""
    t = vmlinux.tables
    spots = [
        (t["kallsyms_num_syms"], "I"),
        (t["kallsyms_names"], "B"),
        (t["kallsyms_names"] + 1, "B"),
        (t["kallsyms_markers"], "I"),
        (t["kallsyms_markers"] + 4, "I"),
        (t["kallsyms_offsets"], "i"),
        (t["kallsyms_offsets"] + 8, "i"),
        (t["kallsyms_relative_base"], "Q"),
        (t["kallsyms_seqs_of_names"], "I"),
    ]
    for off, fmt in spots:
        for value in (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0xFFFFFF, 0x7FFFFFFF, -1, 2**40):
            try:
                patched = bytearray(vmlinux.elf)
                struct.pack_into("<" + fmt, patched, off, value)
            except struct.error:
                continue
            exercise(bytes(patched))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.data())
def test_hypothesis_overwrites(vmlinux, data):
    patched = bytearray(vmlinux.elf)
    lo = min(vmlinux.tables.values())
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(lo - 64, len(patched) - 1))
        chunk = data.draw(st.binary(min_size=1, max_size=8))
        patched[pos : pos + len(chunk)] = chunk
    exercise(bytes(patched[: data.draw(st.integers(0, len(patched)))]))


def test_cli_reports_one_line_and_exit_2(tmp_path, images):
    bad = tmp_path / "vmlinuz"
    bad.write_bytes(images["xz"][:5000])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "klpkit.cli",
            "symbols",
            "build",
            "--vmlinuz",
            str(bad),
            "--db",
            str(tmp_path / "x.sqlite"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr
    assert not (tmp_path / "x.sqlite").exists()

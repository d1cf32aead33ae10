"""The symbol database of Debian's 6.12 line (6.12.117+deb12-amd64, 6.12.117-1~deb12u1),
from the image package alone: vmlinux from the kallsyms tables of the zstd ``vmlinuz``, the
4,230 modules from their ``.ko.xz`` files, exports from the headers' Module.symvers.
What differs from 6.1 is asserted with the kernel fact behind it."""

from __future__ import annotations

import json

import pytest

from klpkit import debian
from klpkit.symbols import build_from_debian
from klpkit.symbols.symvers import read_symvers

from .db612 import RELEASE, headers_612, image_612, open_db_612

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    db = open_db_612(tmp_path_factory)
    yield db
    db.close()


def test_whole_612_kernel(db):
    assert db.release == RELEASE
    meta = db.meta
    counts = json.loads(meta["counts"])
    assert counts["objects"] == 1 + 4230 and counts["skipped"] == 0
    assert meta["source"] == "debian"
    assert meta["symvers"] == str(debian.headers_symvers(RELEASE))
    assert str(debian.modules_dir(RELEASE)) in db.sources
    # the upload, not derivable from the release (looked up from the cached package)
    assert debian.package_version(RELEASE) == "6.12.117-1~deb12u1"
    assert db.module_depends("sr_mod") == ["scsi_mod", "cdrom", "scsi_common"]


def test_call_padding_prefix_symbols(db):
    """CONFIG_CALL_PADDING (x86, v6.2+; Debian 6.12 has it, 6.1 has not): 16 bytes of
    padding before each function carry a ``__pfx_<function>`` symbol, in kallsyms too.
    Each one comes right before its function in kernel (address) order; only the syscall
    entry aliases (``__ia32_sys_*``/``__x64_sys_*`` at one address) interleave."""
    names = [n for n, _f in db.symbols_of("vmlinux")]
    last = {n: i for i, n in enumerate(names)}  # (names repeat: init_once 8 times)
    pfx = [i for i, n in enumerate(names) if n.startswith("__pfx_")]
    assert len(pfx) > 50_000
    assert all(last.get(names[i][6:], -1) > i for i in pfx)
    adjacent = sum(names[i + 1] == names[i][6:] for i in pfx)
    assert adjacent / len(pfx) > 0.99
    (entry,) = db.lookup("__pfx_cmdline_proc_show")
    assert (entry.object, entry.bind, entry.type) == ("vmlinux", "local", "func")
    # modules have them too (objtool --prefix=16 on each object)
    assert [e.object for e in db.lookup("__pfx_cdrom_check_events")] == ["cdrom"]
    assert sum(n.startswith("__pfx_") for n, _f in db.symbols_of("cdrom")) > 40


def test_cdrom_check_events_exported_by_cdrom(db):
    assert db.exporter("cdrom_check_events") == "cdrom"
    obj, etype, namespace, crc = db.export("cdrom_check_events")
    assert (obj, etype, namespace) == ("cdrom", "EXPORT_SYMBOL", None) and crc is not None
    (entry,) = db.lookup("cdrom_check_events")
    assert (entry.object, entry.bind, entry.type, entry.sympos) == ("cdrom", "global", "func", 1)


def test_static_sympos(db):
    """Names the livepatch core must tell apart by position (klp_find_object_symbol: the
    n-th of equal names in kallsyms order, v6.2+ through kallsyms_on_each_match_symbol)."""
    debug = [(e.object, e.sympos, e.bind) for e in db.lookup("debug", "vmlinux")]
    assert debug == [("vmlinux", 1, "local"), ("vmlinux", 2, "local")]
    assert [(e.sympos, e.bind) for e in db.lookup("debug", "cdrom")] == [(1, "local")]
    init_once = db.lookup("init_once", "vmlinux")
    assert [e.sympos for e in init_once] == list(range(1, 9))
    assert {(e.bind, e.type) for e in init_once} == {("local", "func")}
    (threads,) = db.lookup("max_threads")
    assert (threads.object, threads.bind, threads.type) == ("vmlinux", "local", "object")


def test_exports_from_the_image_equal_module_symvers(tmp_path):
    """Without the headers, exports come from the objects themselves (vmlinux's ksymtab in
    the image, each .ko.xz's __ksymtab sections): the same 26,765 rows, CRCs and namespaces
    included, as the headers' Module.symvers."""
    image = image_612()
    headers = headers_612()
    built = build_from_debian(image, None, None, db=tmp_path / "image-only.sqlite", progress=False)
    rows = {(name, obj, t, ns, crc) for obj, name, t, ns, crc in built.export_rows()}
    built.close()
    expected = {
        (e.name, e.object, e.export_type, e.namespace, e.crc)
        for e in read_symvers(headers / "Module.symvers").values()
    }
    assert len(expected) == 26_765
    assert rows == expected

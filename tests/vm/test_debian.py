"""klpkit.debian without the network: tiny fake packages built with dpkg-deb in a temp cache."""

import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from klpkit import debian
from tests.conftest import require

REL = "0.0.1-test-amd64"


def make_deb(tmp_path: Path, package: str, files: dict[str, bytes]) -> Path:
    require(shutil.which("dpkg-deb"), "dpkg-deb not installed")
    root = tmp_path / f"pkg-{package}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0-1\nArchitecture: amd64\nMaintainer: t <t@example.org>\n"
        "Description: test\n")
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    out = tmp_path / f"{package}_1.0-1_amd64.deb"
    subprocess.run(["dpkg-deb", "-Zgzip", "--root-owner-group", "--build", str(root), str(out)],
                   check=True, capture_output=True)
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("KLPKIT_CACHE", str(root))
    (root / "debs").mkdir(parents=True)
    return root


def test_cache_root_follows_env(cache):
    assert debian.cache_root() == cache


def test_ensure_image_unpacks_a_cached_deb_atomically(tmp_path, cache, monkeypatch):
    deb = make_deb(tmp_path, f"linux-image-{REL}-unsigned", {
        f"boot/vmlinuz-{REL}": b"kernel", f"lib/modules/{REL}/kernel/drivers/cdrom/cdrom.ko": b"ko"})
    shutil.copy(deb, cache / "debs")
    monkeypatch.setattr(debian, "_apt_download", lambda *a: pytest.fail("must reuse the cached .deb"))
    (cache / REL).mkdir()
    (cache / REL / ".image-stale").mkdir()  # left by an interrupted run
    image = debian.ensure_image(REL)
    assert image == cache / REL / "image"
    assert debian.vmlinuz(REL).read_bytes() == b"kernel"
    assert debian.find_module("cdrom", REL).name == "cdrom.ko"
    assert debian.modules_dir(REL) == image / "lib" / "modules" / REL
    assert sorted(p.name for p in (cache / REL).iterdir()) == ["image"]
    assert debian.ensure_image(REL) == image  # second call: cached


def test_concurrent_callers_unpack_once(tmp_path, cache, monkeypatch):
    shutil.copy(make_deb(tmp_path, f"linux-image-{REL}-unsigned", {f"boot/vmlinuz-{REL}": b"k"}), cache / "debs")
    calls = []
    real = debian._install_tree
    monkeypatch.setattr(debian, "_install_tree", lambda *a: calls.append(1) or real(*a))
    threads = [threading.Thread(target=debian.ensure_image, args=(REL,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1


def test_failed_unpack_leaves_no_tree(tmp_path, cache):
    # a package without the kernel: ensure_image refuses it and leaves nothing behind
    shutil.copy(make_deb(tmp_path, f"linux-image-{REL}-unsigned", {"boot/other": b"x"}), cache / "debs")
    with pytest.raises(debian.DebianError, match=f"no boot/vmlinuz-{REL}"):
        debian.ensure_image(REL)
    assert list((cache / REL).iterdir()) == []


def test_ensure_dbg_extracts_only_vmlinux_and_system_map(tmp_path, cache):
    deb = make_deb(tmp_path, f"linux-image-{REL}-dbg", {
        f"usr/lib/debug/boot/System.map-{REL}": b"ffffffff81000000 T _text\n",
        f"usr/lib/debug/boot/vmlinux-{REL}": b"\x7fELF",
        f"usr/lib/debug/lib/modules/{REL}/kernel/big.ko": b"x" * 1000})
    shutil.copy(deb, cache / "debs")
    root = debian.ensure_dbg(REL)
    assert debian.vmlinux(REL).read_bytes() == b"\x7fELF"
    assert debian.system_map(REL).read_text().startswith("ffffffff81000000")
    assert not (root / "usr/lib/debug/lib").exists()


def test_download_failure_is_one_actionable_line(cache, monkeypatch):
    class Failed:
        returncode = 100
        stderr = "E: Unable to locate package linux-image-x-unsigned\n"
    monkeypatch.setattr(debian, "_run", lambda *a, **k: Failed())
    with pytest.raises(debian.DebianError) as e:
        debian.ensure_image("x")
    assert "\n" not in str(e.value) and "Unable to locate package" in str(e.value)
    assert [p.name for p in (cache / "debs").iterdir()] == []  # no partial download kept


def test_headers_missing_says_what_to_run():
    with pytest.raises(debian.DebianError, match="scripts/setup.sh"):
        debian.ensure_headers("0.0.0-nonexistent")

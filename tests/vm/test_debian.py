"""klpkit.debian without the network: tiny fake packages built with dpkg-deb in a temp cache."""

import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from klpkit import debian
from tests.conftest import require

REL = "0.0.1-test-amd64"


def make_deb(tmp_path: Path, package: str, files: dict[str, bytes], version: str = "1.0-1") -> Path:
    require(shutil.which("dpkg-deb"), "dpkg-deb not installed")
    root = tmp_path / f"pkg-{package}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@example.org>\n"
        "Description: test\n"
    )
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    out = tmp_path / f"{package}_{version}_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "-Zgzip", "--root-owner-group", "--build", str(root), str(out)],
        check=True,
        capture_output=True,
    )
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
    deb = make_deb(
        tmp_path,
        f"linux-image-{REL}-unsigned",
        {
            f"boot/vmlinuz-{REL}": b"kernel",
            f"lib/modules/{REL}/kernel/drivers/cdrom/cdrom.ko": b"ko",
        },
    )
    shutil.copy(deb, cache / "debs")
    monkeypatch.setattr(
        debian, "_apt_download", lambda *a: pytest.fail("must reuse the cached .deb")
    )
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
    shutil.copy(
        make_deb(tmp_path, f"linux-image-{REL}-unsigned", {f"boot/vmlinuz-{REL}": b"k"}),
        cache / "debs",
    )
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
    shutil.copy(
        make_deb(tmp_path, f"linux-image-{REL}-unsigned", {"boot/other": b"x"}), cache / "debs"
    )
    with pytest.raises(debian.DebianError, match=f"no boot/vmlinuz-{REL}"):
        debian.ensure_image(REL)
    assert list((cache / REL).iterdir()) == []


def test_ensure_dbg_extracts_only_vmlinux_and_system_map(tmp_path, cache):
    deb = make_deb(
        tmp_path,
        f"linux-image-{REL}-dbg",
        {
            f"usr/lib/debug/boot/System.map-{REL}": b"ffffffff81000000 T _text\n",
            f"usr/lib/debug/boot/vmlinux-{REL}": b"\x7fELF",
            f"usr/lib/debug/lib/modules/{REL}/kernel/big.ko": b"x" * 1000,
        },
    )
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


# --- a second kernel line: 6.12's layout (release with '+', version with '~', .ko.xz) --------

REL_612 = "0.0.2+deb12-amd64"  # the shape of 6.12.117+deb12-amd64
VERSION_612 = "0.0.2-1~deb12u1"  # ... and of its version, 6.12.117-1~deb12u1


@pytest.fixture
def image_612(tmp_path, cache):
    mods = f"lib/modules/{REL_612}/kernel"
    deb = make_deb(
        tmp_path,
        f"linux-image-{REL_612}-unsigned",
        {
            f"boot/vmlinuz-{REL_612}": b"kernel",
            f"{mods}/drivers/cdrom/cdrom.ko.xz": b"xz",
            f"{mods}/drivers/scsi/sr_mod.ko.xz": b"xz",
            f"{mods}/sound/snd-foo.ko.xz": b"xz",
        },
        version=VERSION_612,
    )
    shutil.copy(deb, cache / "debs")
    return debian.ensure_image(REL_612)


def test_612_layout_finds_ko_xz_by_bare_name(image_612):
    mods = debian.modules_dir(REL_612)
    assert debian.find_module("cdrom", REL_612) == mods / "kernel/drivers/cdrom/cdrom.ko.xz"
    assert debian.find_module("cdrom.ko", REL_612).name == "cdrom.ko.xz"
    assert debian.find_module("cdrom.ko.xz", REL_612).name == "cdrom.ko.xz"
    assert debian.find_module("sr-mod", REL_612).name == "sr_mod.ko.xz"
    assert debian.find_module("snd_foo", mods=mods).name == "snd-foo.ko.xz"
    with pytest.raises(
        debian.DebianError,
        match=r"no module nope\.ko \(nor nope\.ko\.xz, "
        r"\.ko\.zst, \.ko\.gz\) under",
    ):
        debian.find_module("nope", REL_612)
    # a plain .ko next to a compressed one wins (kmod's order)
    (mods / "kernel" / "extra").mkdir()
    (mods / "kernel" / "extra" / "cdrom.ko").write_bytes(b"ko")
    assert debian.find_module("cdrom", REL_612).name == "cdrom.ko"


def test_package_version_is_recorded_when_unpacked(image_612, monkeypatch):
    assert (image_612 / ".klpkit-version").read_text() == VERSION_612 + "\n"
    monkeypatch.setattr(debian, "_versions", {})
    monkeypatch.setattr(debian, "_apt_version", lambda p: pytest.fail("must not ask apt"))
    assert debian.package_version(REL_612) == VERSION_612


def test_package_version_of_an_older_tree_comes_from_the_cached_deb(image_612, monkeypatch):
    (image_612 / ".klpkit-version").unlink()  # unpacked before versions were kept
    monkeypatch.setattr(debian, "_versions", {})
    monkeypatch.setattr(debian, "_apt_version", lambda p: pytest.fail("must not ask apt"))
    assert debian.package_version(REL_612) == VERSION_612
    assert (image_612 / ".klpkit-version").read_text() == VERSION_612 + "\n"  # cached


def test_package_version_from_apt_when_nothing_is_cached(cache, monkeypatch):
    class Policy:
        returncode = 0
        stderr = ""

        def __init__(self, installed, candidate):
            self.stdout = (
                f"linux-image-{REL_612}-unsigned:\n  Installed: {installed}\n"
                f"  Candidate: {candidate}\n  Version table:\n     {candidate} 500\n"
            )

    asked = []
    monkeypatch.setattr(debian, "_versions", {})
    monkeypatch.setattr(
        debian, "_run", lambda cmd, *a, **k: asked.append(cmd) or Policy("(none)", VERSION_612)
    )
    assert debian.package_version(REL_612) == VERSION_612
    assert asked == [["apt-cache", "policy", f"linux-image-{REL_612}-unsigned"]]
    assert debian.package_version(REL_612) == VERSION_612 and len(asked) == 1  # memoised
    monkeypatch.setattr(debian, "_versions", {})
    monkeypatch.setattr(debian, "_run", lambda *a, **k: Policy("(none)", "(none)"))
    with pytest.raises(debian.DebianError, match="apt knows no version of linux-image-"):
        debian.package_version(REL_612)


def test_the_two_kernel_lines():
    assert debian.RELEASES == ("6.1.0-47-amd64", "6.12.117+deb12-amd64")
    assert debian.image_package(debian.RELEASE_612) == "linux-image-6.12.117+deb12-amd64-unsigned"
    assert [debian.module_stem(n) for n in ("cdrom", "cdrom.ko", "cdrom.ko.xz", "a.ko.zst")] == [
        "cdrom",
        "cdrom",
        "cdrom",
        "a",
    ]

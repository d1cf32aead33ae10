"""Fetch and cache the Debian kernel packages klpkit proves livepatches against.

Why Debian packages: they are a real, signed-but-not-enforcing distribution kernel
with CONFIG_LIVEPATCH=y and MODVERSIONS, available to anyone with apt, so a test or
a ``klpkit vm`` run is reproducible on any Debian-like machine without building a
kernel.  Everything lands under one cache root (``$KLPKIT_CACHE`` or
``~/.cache/klpkit``)::

    <cache>/debs/<package>_<version>_amd64.deb     downloads, kept for reuse
    <cache>/<release>/image/                        linux-image-<release>-unsigned, unpacked
    <cache>/<release>/image/.klpkit-version         the Debian version it was unpacked from
    <cache>/<release>/dbg/usr/lib/debug/boot/       vmlinux + System.map from the -dbg package
                                                    (only when asked for: symbols come from
                                                    the image's own kallsyms tables)

Each tree is unpacked into a temporary directory and renamed into place, so an
interrupted run never leaves a half tree that a later run would trust; an
``fcntl`` lock per artefact keeps parallel pytest workers from racing.

Two kernel lines of Debian 12 (bookworm) are proven: its own 6.1 (:data:`DEFAULT_RELEASE`,
modules installed as plain ``.ko``) and the 6.12 line it carries in bookworm-security
(:data:`RELEASE_612`; modules installed as ``.ko.xz``, ``CONFIG_MODULE_COMPRESS_XZ=y``,
and a zstd-compressed ``vmlinuz``).  Everything here takes the release string; the
package *version* is not part of it (``6.12.117+deb12-amd64`` is packaged as
``6.12.117-1~deb12u1``), so :func:`package_version` looks it up.
"""

import contextlib
import fcntl
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from klpkit.errors import KlpkitError
from klpkit.fileio import write_atomic

DEFAULT_RELEASE = "6.1.0-47-amd64"
DEFAULT_VERSION = "6.1.170-3"
#: The newest bookworm kernel of the 6.12 line: xz-compressed modules, zstd
#: vmlinuz, CONFIG_CALL_PADDING (``__pfx_`` symbols), CONFIG_X86_KERNEL_IBT.
RELEASE_612 = "6.12.117+deb12-amd64"
#: The kernels klpkit is proven against, oldest line first.
RELEASES = (DEFAULT_RELEASE, RELEASE_612)
ARCH = "amd64"
#: The file names a kernel installs a module under: plain, or compressed as
#: CONFIG_MODULE_COMPRESS_{XZ,ZSTD,GZIP} make it (scripts/Makefile.modinst); kmod's order.
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
_VERSION_FILE = ".klpkit-version"


class DebianError(KlpkitError):
    """A Debian package could not be fetched or unpacked."""


def cache_root() -> Path:
    """The cache root: ``$KLPKIT_CACHE`` if set, else ``~/.cache/klpkit``."""
    env = os.environ.get("KLPKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "klpkit"


def debs_dir() -> Path:
    """Where downloaded ``.deb`` files are kept (reused by every later run)."""
    return cache_root() / "debs"


def release_dir(release: str = DEFAULT_RELEASE) -> Path:
    return cache_root() / release


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """Hold an exclusive lock named ``name`` under the cache root.

    Why a lock file and not just atomic renames: two workers would otherwise both
    download the same 855 MB package; the loser of the lock waits and then finds
    the winner's result.
    """
    locks = cache_root() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a tool, turning "not installed" into an actionable error."""
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise DebianError(
            f"{cmd[0]} not found; klpkit needs a Debian-like system with apt and dpkg"
        ) from None


def find_deb(package: str, version: str | None = None) -> Path | None:
    """A cached ``.deb`` of ``package``: of ``version`` if given, else any (the newest name
    sorts last).  Architecture-independent packages (``_all.deb``: linux-source-6.1) count too.
    """
    ver = version.replace(":", "%3a") if version else "*"  # dpkg's file names escape epochs
    found = sorted(
        p for arch in (ARCH, "all") for p in debs_dir().glob(f"{package}_{ver}_{arch}.deb")
    )
    return found[-1] if found else None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("E:", "dpkg-deb: error"))]
    return (errors or lines or ["no output"])[-1]


def _apt_download(package: str, dest: Path) -> subprocess.CompletedProcess:
    # The sandbox option silences apt's "_apt cannot access" warning when run as root.
    return _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package], cwd=dest)


def fetch_deb(package: str, version: str | None = None) -> Path:
    """Return the cached ``.deb`` of ``package`` (pinned to ``version`` if given: apt's
    ``package=version``), downloading it with apt if needed.

    The download goes to a temporary directory first: ``apt-get download`` writes
    straight to the final name, and a partial file must never look cached.  When
    the download fails (typically: package lists never fetched in this container)
    ``apt-get update`` runs once and the download is retried.
    """
    with _locked(f"deb-{package}"):
        cached = find_deb(package, version)
        if cached:
            return cached
        debs_dir().mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=debs_dir()))
        if version:
            package = f"{package}={version}"
        try:
            result = _apt_download(package, tmp)
            if result.returncode != 0:
                update = _run(["apt-get", "update", "-qq"])
                if update.returncode != 0:
                    raise DebianError(
                        f"apt-get download {package} failed ({_last_line(result.stderr)}) and "
                        f"apt-get update failed ({_last_line(update.stderr)}); run it as root or with network"
                    )
                result = _apt_download(package, tmp)
            if result.returncode != 0:
                raise DebianError(f"apt-get download {package} failed: {_last_line(result.stderr)}")
            debs = list(tmp.glob("*.deb"))
            if len(debs) != 1:
                raise DebianError(f"apt-get download {package} produced no .deb in {tmp}")
            final = debs_dir() / debs[0].name
            os.replace(debs[0], final)
            return final
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _install_tree(target: Path, fill) -> Path:
    """Create ``target`` atomically: ``fill(tmpdir)`` populates a sibling temp dir, then rename.

    Leftover temp dirs from interrupted runs are removed first (the caller holds
    the lock, so nobody else is filling them).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists():
        shutil.rmtree(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fill(tmp)
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the tree from other users
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def image_package(release: str = DEFAULT_RELEASE) -> str:
    """The image package of ``release``: ``linux-image-<release>-unsigned`` (the signed
    one differs only by the signature on vmlinuz, which qemu does not check)."""
    return f"linux-image-{release}-unsigned"


def ensure_image(release: str = DEFAULT_RELEASE) -> Path:
    """The unpacked ``linux-image-<release>-unsigned`` tree (fetched on first use).

    Contains ``boot/vmlinuz-<release>`` and ``lib/modules/<release>/kernel/**.ko`` (6.1)
    or ``**.ko.xz`` (6.12), and ``.klpkit-version``: the package version it came from.
    """
    target = release_dir(release) / "image"
    marker = target / "boot" / f"vmlinuz-{release}"
    with _locked(f"image-{release}"):
        if marker.is_file():
            return target
        deb = fetch_deb(image_package(release))

        def fill(tmp: Path) -> None:
            result = _run(["dpkg-deb", "-x", str(deb), str(tmp)])
            if result.returncode != 0:
                raise DebianError(f"dpkg-deb -x failed: {_last_line(result.stderr)}", path=deb)
            if not (tmp / "boot" / f"vmlinuz-{release}").is_file():
                raise DebianError(f"package has no boot/vmlinuz-{release}", path=deb)
            version = deb_field(deb, "Version")
            if version:
                (tmp / _VERSION_FILE).write_text(version + "\n")

        return _install_tree(target, fill)


def deb_field(deb: Path, field: str) -> str | None:
    """One control field of a ``.deb`` (``dpkg-deb -f``), or None when it cannot be read."""
    result = _run(["dpkg-deb", "-f", str(deb), field])
    value = result.stdout.strip()
    return value if result.returncode == 0 and value else None


_versions: dict[str, str] = {}


def package_version(release: str = DEFAULT_RELEASE) -> str:
    """The Debian version of ``release``'s image package (``6.12.117+deb12-amd64`` ->
    ``6.12.117-1~deb12u1``; ``6.1.0-47-amd64`` -> ``6.1.170-3``).

    Why looked up: the release string is the ABI name, the version is the upload
    (Debian's 6.12 backport to bookworm adds ``-1~deb12u1``), and nothing maps one to the
    other.  Asked in order: what the unpacked image recorded, the cached ``.deb``
    (``dpkg-deb -f``), then apt (``apt-cache policy``: the installed, else the candidate
    version, which ``apt-get download`` would fetch).  A version read from a package is
    cached in the unpacked image (``.klpkit-version``)."""
    if release in _versions:
        return _versions[release]
    image = release_dir(release) / "image"
    recorded = image / _VERSION_FILE
    version = None
    with contextlib.suppress(OSError):
        version = recorded.read_text().strip() or None
    if version is None:
        deb = find_deb(image_package(release))
        version = deb_field(deb, "Version") if deb else None
        if version and (image / "boot" / f"vmlinuz-{release}").is_file():
            with contextlib.suppress(OSError, KlpkitError):
                write_atomic(recorded, (version + "\n").encode())
    if version is None:
        version = _apt_version(image_package(release))
    _versions[release] = version
    return version


def _apt_version(package: str) -> str:
    result = _run(["apt-cache", "policy", package])
    fields = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key in ("Installed", "Candidate") and key not in fields:
            fields[key] = value.strip()
    for key in ("Installed", "Candidate"):
        value = fields.get(key)
        if value and value != "(none)":
            return value
    raise DebianError(
        f"apt knows no version of {package} (not cached either; run apt-get "
        "update, or check the release name)"
    )


def _dbg_members(release: str) -> list[str]:
    # Verified with `dpkg-deb -c`: both files sit under usr/lib/debug/boot/.
    return [f"usr/lib/debug/boot/vmlinux-{release}", f"usr/lib/debug/boot/System.map-{release}"]


def _extract_members(deb: Path, members: list[str], dest: Path) -> None:
    """Stream ``deb``'s data tarball and extract only ``members``.

    Why streaming through Python's tarfile: the -dbg package is ~855 MB of mostly
    module debug info; reading stops as soon as the wanted files (near the start)
    are out, instead of decompressing the whole archive.
    """
    wanted = set(members)
    proc = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for info in tar:
                name = info.name.removeprefix("./")
                if name in wanted and info.isfile():
                    info.name = name
                    tar.extract(info, dest, filter="data")
                    wanted.discard(name)
                    if not wanted:
                        break
    except tarfile.TarError as e:
        raise DebianError(f"cannot read package data: {e}", path=deb) from None
    finally:
        proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    if wanted:
        raise DebianError(f"package lacks {', '.join(sorted(wanted))}", path=deb)


def ensure_dbg(release: str = DEFAULT_RELEASE) -> Path:
    """The ``linux-image-<release>-dbg`` extract: a root holding only
    ``usr/lib/debug/boot/vmlinux-<release>`` (unstripped, with DWARF) and
    ``usr/lib/debug/boot/System.map-<release>`` (the real one; the image
    package's System.map is a placeholder).  Use :func:`vmlinux` and
    :func:`system_map` for the file paths.
    """
    target = release_dir(release) / "dbg"
    members = _dbg_members(release)
    with _locked(f"dbg-{release}"):
        if all((target / m).is_file() for m in members):
            return target
        deb = fetch_deb(f"linux-image-{release}-dbg")
        return _install_tree(target, lambda tmp: _extract_members(deb, members, tmp))


def ensure_headers(release: str = DEFAULT_RELEASE) -> Path:
    """The installed kernel headers (for building test modules): ``/usr/src/linux-headers-<release>``."""
    path = Path("/usr/src") / f"linux-headers-{release}"
    if not (path / "Makefile").is_file():
        raise DebianError(
            f"kernel headers missing: {path} (run `bash scripts/setup.sh` or `klpkit setup --install`)"
        )
    return path


def headers_symvers(release: str = DEFAULT_RELEASE) -> Path | None:
    """The installed headers package's ``Module.symvers`` (every export of the kernel with
    its CRC and namespace), or None when ``linux-headers-<release>`` is not installed.

    Why optional: a symbol database needs only the image package (vmlinux's kallsyms and
    export tables are in ``boot/vmlinuz-<release>``); the file, when there, is the
    kernel build's own record of the exports and spares reading them from 4,000 modules.
    """
    path = Path("/usr/src") / f"linux-headers-{release}" / "Module.symvers"
    return path if path.is_file() else None


def modules_dir(release: str = DEFAULT_RELEASE) -> Path:
    """``lib/modules/<release>`` of the unpacked image (fetching it on first use)."""
    return ensure_image(release) / "lib" / "modules" / release


def vmlinuz(release: str = DEFAULT_RELEASE) -> Path:
    """The bootable compressed kernel of the unpacked image (fetching it on first use)."""
    return ensure_image(release) / "boot" / f"vmlinuz-{release}"


def vmlinux(release: str = DEFAULT_RELEASE) -> Path:
    """The unstripped vmlinux from the -dbg package (fetching it on first use)."""
    return ensure_dbg(release) / _dbg_members(release)[0]


def system_map(release: str = DEFAULT_RELEASE) -> Path:
    """The real System.map from the -dbg package (fetching it on first use)."""
    return ensure_dbg(release) / _dbg_members(release)[1]


def module_stem(name: str) -> str:
    """``cdrom``, ``cdrom.ko`` or ``cdrom.ko.xz`` -> ``cdrom``."""
    for suffix in MODULE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_module(name: str, release: str = DEFAULT_RELEASE, mods: Path | None = None) -> Path:
    """The image's module file of ``name``: ``<name>.ko`` on 6.1, ``<name>.ko.xz`` on 6.12
    (any of :data:`MODULE_SUFFIXES`; ``-`` and ``_`` are interchangeable, as for modprobe).

    One walk of the tree (4,000 files), not one per spelling and suffix; when a name
    exists twice the plain ``.ko`` wins, then the first path in sorted order."""
    root = mods if mods is not None else modules_dir(release)
    stem = module_stem(name)
    spellings = {stem, stem.replace("-", "_"), stem.replace("_", "-")}
    wanted = {s + suffix: rank for rank, suffix in enumerate(MODULE_SUFFIXES) for s in spellings}
    hits = []
    for dirpath, _dirs, files in os.walk(root):
        hits += [(wanted[f], os.path.join(dirpath, f)) for f in files if f in wanted]
    if hits:
        return Path(min(hits)[1])
    raise DebianError(f"no module {stem}.ko (nor {stem}.ko.xz, .ko.zst, .ko.gz) under {root}")

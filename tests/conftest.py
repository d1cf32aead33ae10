"""Fixtures shared by every test package.

Sections (append yours at the end of the file, under its own heading):
  - prerequisites: ``require()``, the CI rule
  - Debian kernel data: ``debian_image``, ``debian_dbg``, ``debian_headers``
  - module builds: ``build_module``
  - the real kernel's symbol database and the shared test livepatches: ``debian_symdb``,
    ``lp_modules``
"""

import contextlib
import fcntl
import os
import re
import shutil
from pathlib import Path

import pytest

from klpkit import debian
from klpkit.errors import KlpkitError

# --- prerequisites ---------------------------------------------------------------------------

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(autouse=True)
def _tables_unwrapped(monkeypatch):
    """Tables wrap to ``$COLUMNS`` (klpkit.output.table_width); a test's expectations must
    not depend on the terminal it runs in, so every test starts without it (tests of the
    wrapping set it themselves)."""
    monkeypatch.delenv("COLUMNS", raising=False)


def require(cond, why: str) -> None:
    """Skip the test when ``cond`` is false -- but fail it under ``CI=true``.

    Why: a CI run that silently skips the real-kernel tests would report green
    while proving nothing; locally, a missing qemu should not block unit work.
    """
    if cond:
        return
    if CI:
        pytest.fail(f"missing prerequisite (CI=true forbids skipping): {why}", pytrace=False)
    pytest.skip(why)


def require_tools(*tools: str) -> None:
    """``require`` that each command is on PATH."""
    for tool in tools:
        require(shutil.which(tool), f"{tool} not installed (run `klpkit setup --install`)")


def _ensure(fn, what: str):
    """Run a debian.ensure_* function; a failure becomes a skip (or a CI failure)."""
    try:
        return fn()
    except KlpkitError as e:
        require(False, f"{what}: {e}")


# --- Debian kernel data ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def debian_image():
    """The unpacked linux-image-<release>-unsigned tree (boot/vmlinuz-*, lib/modules/*)."""
    return _ensure(debian.ensure_image, "Debian kernel image")


@pytest.fixture(scope="session")
def debian_dbg():
    """Root of the -dbg extract: usr/lib/debug/boot/{vmlinux,System.map}-<release>.

    Only the symbol database's oracle (tests/symbols/test_image.py) asks for it: the
    database every test uses reads vmlinux's symbols from the image (``debian_symdb``)."""
    return _ensure(debian.ensure_dbg, "Debian kernel debug package")


@pytest.fixture(scope="session")
def debian_headers():
    """/usr/src/linux-headers-<release>, for building test modules."""
    return _ensure(debian.ensure_headers, "Debian kernel headers")


# --- module builds ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def build_module(debian_headers):
    """``build_module(tmp_dir, sources, kbuild) -> Path`` (see tests/kbuild.py), headers checked."""
    require_tools("make", "gcc")
    from tests.kbuild import build_module as build

    return build


# --- the real kernel's symbol database and the shared test livepatches -----------------------


@contextlib.contextmanager
def _run_lock(tmp_path_factory, name: str):
    """A lock shared by every xdist worker of this run (their basetemps share a parent)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # popen-gwN/.. is this run's own directory
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield root
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def debian_symdb(debian_image, tmp_path_factory):
    """The Debian 6.1.0-47 symbol database from the image package alone: vmlinux from the
    kallsyms tables in boot/vmlinuz (no -dbg download; equal to the -dbg build, see
    tests/symbols/test_image.py) + all 4,022 modules, exports read from the objects.

    Built once per test run: the first xdist worker builds it, the others open it.
    """
    from klpkit.symbols import SymbolDB, build_from_debian

    with _run_lock(tmp_path_factory, "debian-symbols") as root:
        path = root / f"{debian.DEFAULT_RELEASE}.sqlite"
        if path.exists():
            db = SymbolDB.open(path)
        else:
            db = build_from_debian(debian_image, db=path, progress=False)
    yield db
    db.close()


@pytest.fixture(scope="session")
def lp_modules(debian_headers, tmp_path_factory) -> dict:
    """The test livepatch modules (tests/convert/lp_sources.py and examples/cdrom),
    built in one Kbuild run against the Debian headers: {name: path}."""
    require_tools("make", "gcc")
    from tests.convert.lp_sources import LP_AMBIG, LP_ANNOT, LP_POLICY
    from tests.kbuild import build_modules

    tmp = tmp_path_factory.mktemp("lp-modules")
    example = Path(__file__).resolve().parents[1] / "examples" / "cdrom" / "lp_cdrom.c"
    sources = {
        "lp_policy.c": LP_POLICY,
        "lp_ambig.c": LP_AMBIG,
        "lp_annot.c": LP_ANNOT,
        "lp_cdrom.c": example.read_text(),
    }
    kbuild = "obj-m := " + " ".join(n.replace(".c", ".o") for n in sources) + "\n"
    return {k.stem: k for k in build_modules(tmp, sources, kbuild)}


# --- vm boot times ---------------------------------------------------------------------------

VM_BOOT_PROPERTY = "klpkit_vm_boot"  # user_properties entry: (name, boot-to-poweroff s, ok)


def pytest_terminal_summary(terminalreporter):
    """One line per qemu boot a test recorded (tests/e2e), also under pytest-xdist: the
    entries come with the reports, not from a worker's memory."""
    boots = [
        value
        for reports in terminalreporter.stats.values()
        for rep in reports
        for key, value in getattr(rep, "user_properties", ())
        if key == VM_BOOT_PROPERTY
    ]
    if not boots:
        return
    tr = terminalreporter
    tr.section("klpkit vm boots (boot-to-poweroff)")
    for name, seconds, ok in boots:
        shown = f"{seconds:8.2f}" if seconds is not None else "       -"
        tr.line(f"{name:32} {shown} s  {'ok' if ok else 'NOT OK'}")
    tr.line(f"{'total':32} {sum(s or 0 for _n, s, _o in boots):8.2f} s")


# --- klpkit build: the release's source tree and the corpus of patches ------------------------

BUILD_PATCHES = Path(__file__).resolve().parent / "build" / "patches"
EXAMPLE_PATCHES = Path(__file__).resolve().parents[1] / "examples" / "patches"


@pytest.fixture(scope="session")
def source_tree(debian_headers):
    """The prepared source tree of the Debian release (downloaded and prepared on first use,
    ~2 min; cached under the klpkit cache)."""
    require_tools("make", "gcc-12", "flex", "bison")
    from klpkit.build.source import SourceTree

    return _ensure(SourceTree.prepare, "kernel source tree")


@pytest.fixture(scope="session")
def built_patches(source_tree, debian_symdb, tmp_path_factory) -> dict:
    """Every patch of tests/build/patches and examples/patches built once per test run
    (shared by the xdist workers): ``{name: {"rc", "report", "error", "output"}}``."""
    import json

    from klpkit.build.pipeline import Builder, BuildOptions, BuildRefused

    with _run_lock(tmp_path_factory, "klpkit-build-corpus") as root:
        out = root / "built-patches"
        index = out / "index.json"
        if index.exists():
            return json.loads(index.read_text())
        out.mkdir(exist_ok=True)
        results = {}
        for patch in sorted([*BUILD_PATCHES.glob("*.patch"), *EXAMPLE_PATCHES.glob("*.patch")]):
            name = patch.stem
            ko = out / f"livepatch-{name}.ko"
            # a header patch names the files to rebuild in its subject: X-klpkit-source: F.c
            sources = re.findall(r"X-klpkit-source: (\S+?)\)?$", patch.read_text(), re.M)
            opts = BuildOptions(
                [str(patch)],
                debian.DEFAULT_RELEASE,
                str(ko),
                symbols=str(debian_symdb.path),
                sources=sources,
            )
            try:
                rep = Builder(opts).run()
                results[name] = {"rc": 0, "report": rep.to_json(), "output": str(ko)}
            except BuildRefused as e:
                results[name] = {
                    "rc": 1,
                    "error": str(e),
                    "reasons": e.reasons,
                    "report": e.report.to_json() if e.report else None,
                }
            except KlpkitError as e:
                results[name] = {"rc": e.exit_code, "error": str(e)}
        index.write_text(json.dumps(results, default=str))
        return results

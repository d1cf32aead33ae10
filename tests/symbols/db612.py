"""The symbol database of Debian's 6.12 line, shared by the tests that need it
(tests/symbols/test_real_612.py, tests/e2e/test_612.py): built once per test run with
``klpkit symbols build --debian 6.12.117+deb12-amd64`` (the image package alone; exports
from the installed headers' Module.symvers), the first xdist worker builds, the others
open it."""

from __future__ import annotations

import shutil

from klpkit import debian
from tests.conftest import _ensure, _run_lock, require

RELEASE = debian.RELEASE_612


def image_612():
    """The unpacked linux-image-6.12.117+deb12-amd64-unsigned (a skip, or a CI failure,
    when it cannot be fetched)."""
    return _ensure(lambda: debian.ensure_image(RELEASE), "Debian 6.12 kernel image")


def headers_612():
    return _ensure(
        lambda: debian.ensure_headers(RELEASE), "Debian 6.12 kernel headers (bash scripts/setup.sh)"
    )


def open_db_612(tmp_path_factory):
    """The database (a :class:`klpkit.symbols.SymbolDB`), built by the CLI on first use."""
    from klpkit.cli import main
    from klpkit.symbols import SymbolDB

    image_612()
    require(shutil.which("zstd"), "zstd not installed: 6.12's vmlinuz is zstd (scripts/setup.sh)")
    headers_612()  # its Module.symvers is what `symbols build --debian` prefers
    with _run_lock(tmp_path_factory, "debian-612-symbols") as root:
        path = root / f"{RELEASE}.sqlite"
        if not path.exists():
            rc = main(["symbols", "build", "--debian", RELEASE, "--db", str(path)])
            assert rc == 0 and path.exists()
        return SymbolDB.open(path)

"""Build out-of-tree kernel modules for tests against the installed Debian headers.

Test modules are built from source on every run (no committed .ko files), the way
a livepatch author builds them: plain Kbuild, with ``KBUILD_MODPOST_WARN=1`` so
modpost accepts references to unexported symbols (a livepatch has them until it
is converted).
"""

import subprocess
from pathlib import Path

from klpkit.debian import DEFAULT_RELEASE, ensure_headers


class BuildError(AssertionError):
    """make failed; the message carries the tail of its output so the test report shows why."""


def build_modules(
    tmp_dir, sources: dict[str, str], kbuild: str, release: str = DEFAULT_RELEASE
) -> list[Path]:
    """Write ``sources`` (name -> text) and ``kbuild`` into ``tmp_dir``, run Kbuild, return the .ko files."""
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    for name, text in sources.items():
        (tmp_dir / name).write_text(text)
    (tmp_dir / "Kbuild").write_text(kbuild)
    cmd = [
        "make",
        "-s",
        "-C",
        str(ensure_headers(release)),
        f"M={tmp_dir.resolve()}",
        "KBUILD_MODPOST_WARN=1",
        "modules",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-20:])
        raise BuildError(f"module build failed in {tmp_dir}:\n{tail}")
    return sorted(tmp_dir.glob("*.ko"))


def build_module(
    tmp_dir, sources: dict[str, str], kbuild: str, release: str = DEFAULT_RELEASE
) -> Path:
    """Like :func:`build_modules` for a Kbuild that makes exactly one module; returns its .ko."""
    kos = build_modules(tmp_dir, sources, kbuild, release)
    if len(kos) != 1:
        raise BuildError(f"expected one module in {tmp_dir}, got {[k.name for k in kos]}")
    return kos[0]


def sources_from_dir(src_dir) -> tuple[dict[str, str], str]:
    """(sources, kbuild) of a module directory in the repository (``*.c``, ``*.h`` and ``Kbuild``)."""
    src_dir = Path(src_dir)
    sources = {p.name: p.read_text() for p in sorted(src_dir.iterdir()) if p.suffix in (".c", ".h")}
    return sources, (src_dir / "Kbuild").read_text()


def build_module_dir(src_dir, tmp_dir, release: str = DEFAULT_RELEASE) -> Path:
    """Build the single module whose sources are in ``src_dir`` inside ``tmp_dir``."""
    sources, kbuild = sources_from_dir(src_dir)
    return build_module(tmp_dir, sources, kbuild, release)

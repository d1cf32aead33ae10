"""The README's set-up command on a stock Debian bookworm: Debian's own python3 refuses a
system-wide pip install (PEP 668), so scripts/setup.sh installs klpkit into the project's
virtual environment.  Run in a scratch copy of the repository with Debian's python3
first on PATH, then ``klpkit --version`` from the venv."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DEBIAN_PYTHON = Path("/usr/bin/python3")


def _tracked_files() -> list[str]:
    r = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True
    )
    if r.returncode:
        pytest.fail(f"git ls-files failed: {r.stderr}")
    return [f for f in r.stdout.splitlines() if (REPO / f).is_file()]


def test_setup_with_debians_python_installs_into_a_venv(tmp_path):
    require(DEBIAN_PYTHON.exists(), "Debian's /usr/bin/python3")
    require(
        Path("/usr/lib/python3.11/EXTERNALLY-MANAGED").exists()
        or Path("/usr/lib/python3/dist-packages").is_dir(),
        "a Debian python3",
    )
    copy = tmp_path / "klpkit"
    for rel in _tracked_files():
        dst = copy / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dst)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin:/usr/sbin:/sbin:" + env.get("PATH", "")
    r = subprocess.run(
        ["bash", "scripts/setup.sh"], cwd=copy, env=env, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stderr[-2000:]
    venv_python = copy / ".venv" / "bin" / "python"
    version = subprocess.run(
        [str(venv_python), "-c", "import sys; print(sys.base_prefix)"],
        capture_output=True,
        text=True,
    )
    assert version.stdout.strip() == "/usr", version  # the venv is Debian's python's
    r = subprocess.run(
        [str(copy / ".venv" / "bin" / "klpkit"), "--version"], capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.startswith("klpkit "), (r.stdout, r.stderr)
    # and the venv's klpkit is the scratch copy's (an editable install of it)
    r = subprocess.run(
        [str(venv_python), "-c", "import klpkit; print(klpkit.__file__)"],
        capture_output=True,
        text=True,
    )
    assert r.stdout.strip().startswith(str(copy)), r.stdout

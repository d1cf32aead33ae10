"""Fixtures for the check tests.

The real Debian symbol database and the seed's cdrom livepatch come from the convert
tests' session fixtures (``debian_symdb``, ``lp_modules``): reused, not rebuilt here.
``good_cdrom`` is that livepatch converted with the klpkit.convert API; ``cc`` is the
convert tests' compiler of C snippets.
"""

from pathlib import Path

import pytest

from tests.convert.conftest import Compiler


@pytest.fixture
def cc(tmp_path) -> Compiler:
    return Compiler(tmp_path)


@pytest.fixture(scope="session")
def good_cdrom(lp_modules, debian_symdb, tmp_path_factory) -> Path:  # noqa: F811
    from klpkit.convert import convert_file

    out = tmp_path_factory.mktemp("check") / "lp_cdrom.ko"
    plan, result, _elf = convert_file(lp_modules["lp_cdrom"], out, debian_symdb)
    assert plan.ok, plan.errors
    assert result is not None and out.is_file()
    return out

"""Fixtures for the fuzz tests: the corpus the mutators start from, made from the
session's own test livepatches (tests/conftest.py ``lp_modules``, the issue 12 modules of
tests/convert/lp_issue12.py), Debian's cdrom.ko and the Debian symbol database."""

import json

import pytest

from klpkit import debian
from tests.conftest import _run_lock, require_tools
from tests.convert.lp_issue12 import build_issue12
from tests.fuzz.corpus import Corpus, build_corpus


@pytest.fixture(scope="session")
def fuzz_corpus(debian_image, debian_headers, debian_symdb, lp_modules, tmp_path_factory):
    require_tools("readelf", "eu-elflint", "strip", "make", "gcc")
    # the issue 12 modules: built once per run, shared with the convert/check/deps tests
    modules = {**lp_modules, **build_issue12(tmp_path_factory)}
    cdrom = debian.find_module("cdrom")
    # made once per test run: the first xdist worker makes it, the others read it
    with _run_lock(tmp_path_factory, "fuzz-corpus") as root:
        made = root / "fuzz-corpus" / "corpus.json"
        if made.is_file():
            return Corpus.from_json(json.loads(made.read_text()))
        return build_corpus(root / "fuzz-corpus", debian_symdb.path, cdrom, modules)

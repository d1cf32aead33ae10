"""Fast tests of the check API: findings, kernel-message matching, the rules table,
and the command line's exit codes and JSON (the real-module ones are slow)."""

from __future__ import annotations

import json

import pytest

from klpkit.check import RULES, Finding, Place, Severity, Stage, parse_kernel_version
from klpkit.check.klp_rules import rela_object
from klpkit.check.rules import nonzero_message
from klpkit.cli import main


def test_matches_dmesg_lines_with_runtime_values():
    f = Finding(
        Severity.ERROR,
        "elf.reloc-nonzero",
        Place(".text", 0x37),
        "x",
        nonzero_message((6, 1)).replace("type %d", "type 2", 1),
        Stage.RELOCATIONS,
    )
    assert f.matches(
        "[    7.123456] module: x86/modules: Skipping invalid relocation target, "
        "existing value is nonzero for type 2, loc 00000000ba0302e9, "
        "val ffffffffa03e293c"
    )
    assert not f.matches(
        "module: x86/modules: Skipping invalid relocation target, existing "
        "value is nonzero for type 1, loc 0, val 0"
    )
    two = Finding(
        Severity.ERROR,
        "undef.crc",
        Place(),
        "x",
        "m: disagrees about version of symbol s\nm: Unknown symbol s (err -22)",
    )
    assert two.kernel_lines == [
        "m: disagrees about version of symbol s",
        "m: Unknown symbol s (err -22)",
    ]
    assert two.matches("[ 1.0] m: Unknown symbol s (err -22)")
    assert not Finding(Severity.NOTE, "klp.sym.resolved", Place(), "x").matches("anything")


def test_nonzero_message_by_version():
    assert "Skipping invalid relocation target" in nonzero_message((6, 1))
    assert nonzero_message((6, 5)).startswith("module: x86/modules: Invalid relocation")
    assert "sec %u, idx %u" in nonzero_message((6, 19))


@pytest.mark.parametrize(
    "text, want",
    [("6.1", (6, 1)), ("6.1.0-47-amd64", (6, 1)), ((5, 4), (5, 4)), ("6.10-rc1", (6, 10))],
)
def test_parse_kernel_version(text, want):
    assert parse_kernel_version(text) == want


def test_rules_table_records_versions():
    assert RULES["klp.rela.vmlinux-in-module"].since == (5, 8)
    assert RULES["klp.rela.vmlinux-in-module"].applies((6, 1))
    assert not RULES["klp.rela.vmlinux-in-module"].applies((5, 4))
    assert RULES["klp.rela.reload"].until == (6, 3)
    assert RULES["undef.namespace"].since == (5, 4)
    for r in RULES.values():
        assert r.id and r.summary and r.stage in Stage
        assert r.as_dict()["since"]


@pytest.mark.parametrize(
    "name, obj",
    [
        (".klp.rela.vmlinux..text", "vmlinux"),
        (".klp.rela.cdrom.text", "cdrom"),
        (".klp.rela..text", None),
        (".klp.rela.", None),
        (".rela.text", None),
        (".klp.rela." + "a" * 60, "a" * 55),
    ],
)
def test_rela_object_is_the_kernels_sscanf(name, obj):
    assert rela_object(name) == obj


def test_cli_rules_and_bad_input(tmp_path, capsys):
    assert main(["check", "--rules", "--json", "x.ko"]) == 0
    assert {r["id"] for r in json.loads(capsys.readouterr().out)} == set(RULES)
    assert main(["check", str(tmp_path / "missing.ko"), "--symbols", "x"]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_on_real_modules(good_cdrom, lp_modules, debian_symdb, capsys):
    db = str(debian_symdb.path)
    assert main(["check", str(good_cdrom), "--symbols", db, "--kernel-version", "6.1"]) == 0
    out = capsys.readouterr().out
    assert "loads and resolves" in out and "klp.rela.reload" in out
    assert main(["check", str(lp_modules["lp_cdrom"]), "--symbols", db, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "refused"
    assert doc["first_error"]["kernel_message"] == "lp_cdrom: Unknown symbol debug (err -2)"
    assert all(
        {"severity", "rule", "place", "message", "kernel_message"} <= set(f)
        for f in doc["findings"]
    )

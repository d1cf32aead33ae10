"""The kernel's livepatch rules (klpkit.kernel.klp, klpkit.kernel.kver), each at the
kernel versions where it changes: fast, no kernel data."""

from __future__ import annotations

import pytest

from klpkit.check import parse_kernel_version as check_parse
from klpkit.errors import InputError
from klpkit.kernel import klp
from klpkit.kernel.kver import DEFAULT_KERNEL_VERSION, kernel_version, parse_kernel_version
from klpkit.symbols.db import SymbolEntry


def test_kernel_version_is_parsed_once():
    assert check_parse is parse_kernel_version
    assert kernel_version(None, None, "5.10.0-28-amd64") == (5, 10)
    assert kernel_version("5.4", "6.1.0-47-amd64") == (5, 4)
    assert kernel_version(None, "garbage", None) == DEFAULT_KERNEL_VERSION == (6, 1)
    with pytest.raises(InputError):
        kernel_version("garbage")


@pytest.mark.parametrize(
    "gate, objects, kver, registers, when",
    [
        # since 5.8 the module loader applies vmlinux-gated sections, whatever the objects
        ("vmlinux", ["cdrom"], (6, 1), True, klp.When.LOAD),
        ("vmlinux", ["cdrom"], (5, 8), True, klp.When.LOAD),
        ("vmlinux", [], (6, 1), False, klp.When.LOAD),
        ("vmlinux", None, (6, 1), True, klp.When.LOAD),
        # before, only for a vmlinux klp_object
        ("vmlinux", ["cdrom"], (5, 7), True, klp.When.NEVER),
        ("vmlinux", ["vmlinux", "cdrom"], (5, 7), True, klp.When.ENABLE),
        # module gates: only objects the klp_patch lists, only for a registered patch
        ("cdrom", ["cdrom"], (6, 1), True, klp.When.OBJECT),
        ("sr_mod", ["cdrom"], (6, 1), True, klp.When.NEVER),
        ("cdrom", ["cdrom"], (6, 1), False, klp.When.NEVER),
        ("cdrom", None, (6, 1), True, klp.When.UNKNOWN),
    ],
)
def test_when_applied(gate, objects, kver, registers, when):
    app = klp.when_applied(gate, objects, kver, registers)
    assert app.when is when
    assert app.by and app.reason
    assert app.applied is (when not in (klp.When.NEVER, klp.When.UNKNOWN))


def test_gate_problems_by_version():
    refused = klp.gate_problem("cdrom", "vmlinux", "saved_command_line", (6, 1))
    assert refused.rule == "klp.rela.vmlinux-in-module" and refused.gravity is klp.Gravity.REFUSED
    assert refused.kernel_message == (
        "livepatch: invalid access to vmlinux symbol "
        "'saved_command_line' from module-specific livepatch "
        "relocation section"
    )
    assert klp.gate_problem("cdrom", "vmlinux", "x", (5, 7)) is None
    risk = klp.gate_problem("vmlinux", "cdrom", "debug", (6, 1))
    assert risk.rule == "klp.rela.module-in-vmlinux" and risk.gravity is klp.Gravity.RISK
    assert klp.gate_problem("cdrom", "cdrom", "debug", (6, 1)) is None
    assert klp.gate_problem("vmlinux", "vmlinux", "x", (6, 1)) is None


def test_gate_for_vmlinux_and_dependencies():
    assert klp.gate_for_vmlinux(["cdrom"], (6, 1)) == "vmlinux"
    assert klp.gate_for_vmlinux(["cdrom"], (5, 7)) == "cdrom"  # allowed then, and applied
    assert klp.gate_for_vmlinux(["vmlinux", "cdrom"], (5, 7)) == "vmlinux"
    assert klp.gate_for_vmlinux([], (5, 7)) is None
    assert klp.dependency_problem("sr_mod", "cdrom", ["cdrom", "scsi_mod"]) is None
    assert klp.dependency_problem("cdrom", "cdrom", []) is None
    assert "not a dependency of 'cdrom'" in klp.dependency_problem("cdrom", "sr_mod", [])


def test_registers_patch():
    assert klp.registers_patch(["_printk", "klp_enable_patch"])
    assert klp.registers_patch(["klp_register_patch"])  # before 5.1
    assert not klp.registers_patch(["klp_shadow_get", "_printk"])


def test_site_problems():
    assert klp.site_problem(".text", True, True, "cdrom", (6, 1)) is None
    assert klp.site_problem(".rodata", True, True, "cdrom", (6, 1)) is None
    assert klp.site_problem("__jump_table", True, True, "vmlinux", (6, 1)) is None
    assert klp.site_problem("__jump_table", True, True, "vmlinux", (5, 7)).startswith(
        "special section: jump_label_add_module()"
    )
    assert klp.site_problem("__jump_table", True, True, "cdrom", (6, 1)).startswith(
        "special section"
    )
    assert klp.site_problem(".init.text", True, True, "cdrom", (6, 1)) == klp.REASON_INIT
    assert klp.site_problem(".init.text", True, True, "vmlinux", (6, 1)) is None
    assert klp.site_problem(".note", False, True, "vmlinux", (6, 1)) == klp.REASON_NOALLOC
    assert klp.site_problem(".text", True, False, "vmlinux", (6, 1)) == klp.REASON_REL


def _entries(n):
    return [
        SymbolEntry("vmlinux", "f", "local", "func", False, None, None, i, n, None)
        for i in range(1, n + 1)
    ]


@pytest.mark.parametrize(
    "count, pos, found, message",
    [
        (0, 0, klp.Found.NOT_FOUND, "livepatch: symbol 'f' not found in symbol table"),
        (1, 0, klp.Found.RESOLVED, None),
        (1, 1, klp.Found.RESOLVED, None),
        (
            3,
            0,
            klp.Found.AMBIGUOUS,
            "livepatch: unresolvable ambiguity for symbol 'f' in object '(null)'",
        ),
        (3, 3, klp.Found.RESOLVED, None),
        (
            3,
            4,
            klp.Found.POSITION,
            "livepatch: symbol position 4 for symbol 'f' in object 'vmlinux' not found",
        ),
    ],
)
def test_find_object_symbol(count, pos, found, message):
    res = klp.find_object_symbol(_entries(count), pos)
    assert res.found is found and res.count == count
    assert klp.resolution_message(res, "vmlinux", "f", pos) == message
    if res.ok:
        assert res.entry.sympos == max(pos, 1)


def test_installed_set_rules():
    """klp_is_patch_compatible(), atomic replace and the func_stack, on names."""
    f = ("vmlinux", "cmdline_proc_show", 1)
    g = ("cdrom", "cdrom_ioctl_media_changed", 1)
    v1 = klp.Installed("lp_v1", ((1, 1),), True, frozenset({f}))
    v2 = klp.Installed("lp_v2", ((1, 2),), True, frozenset({g}))
    plain = klp.Installed("lp_plain", (), False, frozenset({f, g}))
    assert klp.state_problem(v2, [v1]) is None
    assert "older than lp_v2's version 2" in klp.state_problem(v1, [v2])
    # a cumulative patch must carry every installed state; a plain one need not
    assert "does not handle it" in klp.state_problem(klp.Installed("lp_cum", (), True), [v1])
    assert klp.state_problem(plain, [v1]) is None
    assert klp.install(v2, [plain, v1]) == [v2]
    assert klp.install(plain, [v1]) == [v1, plain]
    assert klp.reverted(v2, [plain, v1]) == {"lp_plain": [f], "lp_v1": [f]}
    assert klp.reverted(plain, [v1]) == {}
    assert klp.stacked_under(plain, [v1, v2]) == {"lp_v1": [f], "lp_v2": [g]}

"""Boot the real Debian kernel under qemu and prove livepatch behaviour (``-m vm``).

Each test prints its boot-to-poweroff time to the terminal (even without ``-s``),
so a slow runner is visible in the CI log.
"""

import json
import shutil
from pathlib import Path

import pytest

from klpkit import cli, debian
from klpkit.vm import Step, VmSpec, run_vm
from klpkit.vm.initramfs import is_static_elf
from tests.conftest import _ensure, require
from tests.kbuild import build_module_dir

pytestmark = pytest.mark.vm

MODULES = Path(__file__).parent / "modules"
MARKER = "KLPE2E-CMDLINE-PATCHED"


@pytest.fixture(scope="module")
def vm_ready(debian_image):
    """qemu, a static busybox and the Debian kernel image: what every boot needs."""
    require(
        shutil.which("qemu-system-x86_64"),
        "qemu-system-x86_64 not installed (klpkit setup --install)",
    )
    bb = Path("/bin/busybox")
    require(bb.is_file() and is_static_elf(bb.read_bytes()), "static /bin/busybox (busybox-static)")
    return debian_image


@pytest.fixture(scope="module")
def lp_cmdline(build_module, tmp_path_factory):
    return build_module_dir(MODULES / "lp_cmdline", tmp_path_factory.mktemp("lp_cmdline"))


@pytest.fixture(scope="module")
def lp_unexported(build_module, tmp_path_factory):
    return build_module_dir(MODULES / "lp_unexported", tmp_path_factory.mktemp("lp_unexported"))


@pytest.fixture
def report(capsys, request):
    """Print one summary line per boot straight to the terminal."""

    def emit(result):
        with capsys.disabled():
            print(
                f"\n[vm] {request.node.name}: boot-to-poweroff {result.boot_seconds} s, "
                f"ok={result.ok}, failure={result.failure.kind if result.failure else None}"
            )

    return emit


def test_livepatch_lifecycle(vm_ready, lp_cmdline, report):
    spec = VmSpec(
        steps=[
            Step("run", "cat /proc/cmdline"),
            Step("insmod", str(lp_cmdline)),
            Step("wait-transition", "lp_cmdline"),
            Step("run", "cat /proc/cmdline"),
            Step("disable", "lp_cmdline"),
            Step("rmmod", "lp_cmdline"),
            Step("run", "cat /proc/cmdline"),
        ]
    )
    result = run_vm(spec)
    report(result)
    assert result.ok, json.dumps(result.to_json()["failure"], indent=1)
    before, insmod, wait, patched, disable, rmmod, after = result.steps
    assert MARKER not in before.output[0]
    assert insmod.livepatch["lp_cmdline"]["enabled"] == 1
    assert wait.livepatch == {"lp_cmdline": {"enabled": 1, "transition": 0}}
    assert patched.output == [MARKER]
    assert any("'lp_cmdline': patching complete" in line for line in insmod.dmesg + wait.dmesg)
    assert disable.livepatch == {} and any("unpatching complete" in line for line in disable.dmesg)
    assert not any(m.startswith("lp_cmdline ") for m in rmmod.modules)
    assert after.output == before.output
    assert result.boot_seconds > 0 and result.guest_uptime > 0
    assert result.warnings == []


def test_unexported_symbol_is_rejected(vm_ready, lp_unexported, report):
    """An unconverted livepatch that references a non-exported symbol must not load,
    and the result must say so with the kernel's own line."""
    spec = VmSpec(
        steps=[Step("insmod", str(lp_unexported)), Step("run", "cat /proc/cmdline")],
        keep_going=True,
    )
    result = run_vm(spec)
    report(result)
    assert not result.ok
    assert result.failure.kind == "module-rejected" and result.failure.step == 0
    assert any(
        "lp_unexported: Unknown symbol saved_command_line (err -2)" in line
        for line in result.failure.lines
    )
    assert any("Unknown symbol saved_command_line" in line for line in result.steps[0].dmesg)
    # one load attempt (busybox's insmod would retry with init_module: every line twice)
    unknown = [ln for ln in result.steps[0].dmesg if "Unknown symbol saved_command_line" in ln]
    assert len(unknown) == 1, result.steps[0].dmesg
    assert result.steps[0].status == "rejected" and result.steps[0].livepatch == {}
    assert MARKER not in result.steps[1].output[0] and "KLPE2E" not in result.steps[1].output[0]


def test_kernel_panic_is_classified(vm_ready, report):
    spec = VmSpec(steps=[Step("run", "echo c > /proc/sysrq-trigger"), Step("run", "echo never")])
    result = run_vm(spec)
    report(result)
    assert result.failure.kind == "panic" and result.failure.step == 0
    assert any("sysrq triggered crash" in line for line in result.failure.lines)
    assert result.steps[1].status == "skipped"


def test_boot_timeout_is_reported_with_console_tail(vm_ready, report):
    result = run_vm(VmSpec(steps=[Step("run", "true")], boot_timeout=0.5))
    report(result)
    assert result.failure.kind == "timeout"
    assert "while booting" in result.failure.message
    assert result.boot_seconds < 30


@pytest.mark.parametrize("release", [debian.DEFAULT_RELEASE, debian.RELEASE_612])
def test_cli_script_json(vm_ready, release, tmp_path, capsys):
    """``klpkit vm --release R --script``: the module built against R's headers, R's
    kernel booted (6.12: its modules are .ko.xz, its vmlinuz zstd)."""
    _ensure(lambda: debian.ensure_image(release), f"Debian kernel image {release}")
    _ensure(lambda: debian.ensure_headers(release), f"Debian kernel headers {release}")
    lp = build_module_dir(MODULES / "lp_cmdline", tmp_path / "build", release)
    script = tmp_path / "steps.txt"
    shutil.copy(lp, tmp_path / "lp.ko")
    script.write_text(
        "# relative paths are relative to the script\n"
        "insmod lp.ko\nwait-transition\nrun cat /proc/cmdline\n"
        "! rmmod lp_cmdline\ndisable lp_cmdline\nrmmod lp_cmdline\n"
    )
    rc = cli.main(["vm", "--release", release, "--script", str(script), "--json"])
    doc = json.loads(capsys.readouterr().out)
    with capsys.disabled():
        print(f"\n[vm] test_cli_script_json[{release}]: boot-to-poweroff {doc['boot_seconds']} s")
    assert rc == 0, doc["failure"]
    assert doc["kernel"]["release"] == release
    steps = doc["steps"]
    assert steps[2]["output"] == [MARKER]
    # a loaded, enabled livepatch cannot be removed: rmmod fails as expected
    assert steps[3]["status"] == "failed" and steps[3]["passed"]
    assert doc["livepatch"] == {}

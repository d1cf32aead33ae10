"""Fast tests of klpkit vm (no qemu): initramfs, /init generation, step parsing, and
result parsing from console transcripts recorded from real boots of the Debian kernel
(tests/vm/data/*.console; regenerate with run_vm(...).console if the protocol changes)."""

import gzip
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from klpkit import cli
from klpkit.commands import setup as setup_cmd
from klpkit.commands import vm as vm_cmd
from klpkit.errors import InputError
from klpkit.vm import Step, parse_console, parse_script, parse_step
from klpkit.vm.guest import LIB_SH, init_script, step_command
from klpkit.vm.initramfs import build_initramfs, is_static_elf, read_newc
from klpkit.vm.result import classify, crash_block
from tests.conftest import require

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parents[2]

OK_STEPS = [
    Step("run", "cat /proc/cmdline"),
    Step("insmod", "/tmp/vmt/lp_cmdline.ko"),
    Step("wait-transition"),
    Step("run", "cat /proc/cmdline"),
    Step("disable", "lp_cmdline"),
    Step("rmmod", "lp_cmdline"),
]
REJECTED_STEPS = [Step("insmod", "/tmp/vmt2/lp_unexported.ko"), Step("run", "cat /proc/cmdline")]
PANIC_STEPS = [
    Step("run", "echo about to crash"),
    Step("run", "echo c > /proc/sysrq-trigger"),
    Step("run", "echo never"),
]


def transcript(name: str) -> list[str]:
    return (DATA / f"{name}.console").read_text().splitlines()


@pytest.fixture(scope="module")
def busybox():
    bb = Path("/bin/busybox")
    require(bb.is_file() and is_static_elf(bb.read_bytes()), "static /bin/busybox (busybox-static)")
    return bb


# --- steps -------------------------------------------------------------------------------------


def test_parse_step_kinds_and_expectations():
    assert parse_step("insmod a.ko x=1") == Step("insmod", "a.ko", "x=1")
    assert parse_step("! insmod bad.ko timeout=5") == Step(
        "insmod", "bad.ko", expect="fail", timeout=5
    )
    assert parse_step("?rmmod lp").expect == "any"
    # run keeps the shell command verbatim, quotes and all
    assert parse_step("run echo 'a  b' | tr a c").args == ("echo 'a  b' | tr a c",)
    assert parse_step("wait-transition").args == ()
    assert parse_step("wait-transition lp").args == ("lp",)


@pytest.mark.parametrize(
    "line",
    ["frobnicate x", "rmmod", "rmmod a b", "disable", "dmesg x", "insmod a.ko timeout=soon", "run"],
)
def test_parse_step_rejects_bad_lines(line):
    with pytest.raises(InputError):
        parse_step(line)


def test_parse_script_skips_comments_and_names_the_line():
    steps = parse_script("# setup\n\ninsmod a.ko\n  # indented comment\nrun true\n")
    assert [s.kind for s in steps] == ["insmod", "run"]
    with pytest.raises(InputError, match="s.txt:2"):
        parse_script("run true\nbogus\n", name="s.txt")


def test_describe_round_trips():
    for step in [
        Step("insmod", "a b.ko", "p=1"),
        Step("run", "echo 'x'"),
        Step("rmmod", "m", expect="fail"),
        Step("disable", "lp", expect="any"),
        Step("kallsyms"),
    ]:
        again = parse_step(step.describe())
        assert (again.kind, again.args, again.expect) == (step.kind, step.args, step.expect)


# --- guest side ----------------------------------------------------------------------------------


def test_init_script_runs_steps_in_order_with_quoting():
    steps = [
        Step("insmod", "x.ko"),
        Step("run", "echo 'hi there'; exit 0"),
        Step("disable", "lp"),
        Step("rmmod", "x", expect="fail"),
    ]
    cmds = [step_command(steps[0], ("/lib/modules/x.ko",))] + [step_command(s) for s in steps[1:]]
    init = init_script(steps, cmds)
    assert init.startswith("#!/bin/sh\n")
    calls = [line for line in init.splitlines() if line.startswith("klp_step ")]
    assert calls == [
        "klp_step 0 ok 60 insmod /lib/modules/x.ko",
        "klp_step 1 ok 60 sh -c 'echo '\"'\"'hi there'\"'\"'; exit 0'",
        "klp_step 2 ok 70 sh /klp/lib.sh klp_disable 60 lp",
        "klp_step 3 fail 60 rmmod x",
    ]
    assert init.rstrip().endswith("klp_finish")
    assert "mount -t proc proc /proc" in init and "klp_keep_going=0" in init


def test_guest_shell_code_parses():
    """Syntax-check /init and the helper library with the host's POSIX sh and with busybox sh."""
    init = init_script([Step("run", "true")], [step_command(Step("run", "true"))])
    shells = [["sh", "-n"]] + (
        [["/bin/busybox", "sh", "-n"]] if Path("/bin/busybox").exists() else []
    )
    for shell in shells:
        for text in (init, LIB_SH):
            r = subprocess.run([*shell, "/dev/stdin"], input=text, capture_output=True, text=True)
            assert r.returncode == 0, (shell, r.stderr)


def test_initramfs_contents(busybox, tmp_path):
    ko = tmp_path / "m.ko"
    ko.write_bytes(b"\x7fELF fake module")
    init = "#!/bin/sh\necho hi\n"
    image = build_initramfs(
        init,
        {"/lib/modules/m.ko": ko, "/test/prog": b"x", "/etc/a/b.txt": b"b"},
        busybox=busybox,
        executables=frozenset({"/test/prog"}),
    )
    entries = read_newc(gzip.decompress(image))
    assert entries["init"].data == init.encode() and entries["init"].mode & 0o111
    assert (
        stat.S_ISREG(entries["bin/busybox"].mode)
        and entries["bin/busybox"].data == busybox.read_bytes()
    )
    assert stat.S_ISLNK(entries["bin/sh"].mode) and entries["bin/sh"].data == b"busybox"
    assert stat.S_ISCHR(entries["dev/console"].mode) and entries["dev/console"].rdev == (5, 1)
    assert entries["lib/modules/m.ko"].data == ko.read_bytes()
    assert entries["test/prog"].mode & 0o111 and not entries["etc/a/b.txt"].mode & 0o111
    assert stat.S_ISDIR(entries["etc/a"].mode)
    for d in ("proc", "sys", "tmp", "dev"):
        assert stat.S_ISDIR(entries[d].mode)
    # reproducible: same input, same bytes
    assert image == build_initramfs(
        init,
        {"/lib/modules/m.ko": ko, "/test/prog": b"x", "/etc/a/b.txt": b"b"},
        busybox=busybox,
        executables=frozenset({"/test/prog"}),
    )


def test_initramfs_is_readable_by_cpio(busybox, tmp_path):
    require(shutil.which("cpio"), "cpio not installed")
    raw = gzip.decompress(build_initramfs("#!/bin/sh\n", {}, busybox=busybox))
    r = subprocess.run(["cpio", "-itv"], input=raw, capture_output=True)
    assert r.returncode == 0, r.stderr
    listing = r.stdout.decode()
    assert "init" in listing and "bin/sh -> busybox" in listing


def test_static_check(busybox):
    assert is_static_elf(busybox.read_bytes())
    assert not is_static_elf(Path("/bin/sh").resolve().read_bytes())
    assert not is_static_elf(b"#!/bin/sh\n")


# --- host side: parsing recorded transcripts -------------------------------------------------


def test_parse_successful_livepatch_run():
    r = parse_console(transcript("ok"), OK_STEPS)
    r.failure = classify(r)
    assert r.ok and r.booted and r.done
    assert [s.status for s in r.steps] == ["ok"] * 6
    assert r.steps[0].output == ["console=ttyS0 panic=-1 quiet"]
    assert r.steps[3].output == ["KLPE2E-CMDLINE-PATCHED"]
    assert r.steps[1].livepatch == {"lp_cmdline": {"enabled": 1, "transition": 0}}
    assert any("patching complete" in line for line in r.steps[1].dmesg)
    assert r.steps[1].modules[0].startswith("lp_cmdline ")
    assert r.steps[4].livepatch == {} and r.steps[5].modules == []
    assert r.livepatch == {}
    assert r.init_uptime and r.guest_uptime > r.init_uptime
    assert any("Linux version 6.1.0-47-amd64" in line for line in r.dmesg)
    doc = json.loads(json.dumps(r.to_json()))
    assert doc["ok"] and doc["steps"][3]["output"] == ["KLPE2E-CMDLINE-PATCHED"]


def test_rejected_module_reports_the_dmesg_line():
    r = parse_console(transcript("rejected"), REJECTED_STEPS)
    r.failure = classify(r)
    assert not r.ok
    assert r.steps[0].status == "rejected" and r.steps[0].exit_status != 0
    assert r.failure.kind == "module-rejected" and r.failure.step == 0
    assert "can't insert" in r.failure.message
    assert any("Unknown symbol saved_command_line (err -2)" in line for line in r.failure.lines)
    # keep-going: the next step still ran, on the unpatched kernel
    assert r.steps[1].output == ["console=ttyS0 panic=-1 quiet"]


def test_expected_rejection_is_ok():
    steps = [Step("insmod", "/tmp/vmt2/lp_unexported.ko", expect="fail"), REJECTED_STEPS[1]]
    r = parse_console(transcript("rejected"), steps)
    r.failure = classify(r)
    assert r.ok and r.failure is None
    assert r.steps[0].status == "rejected" and r.steps[0].passed
    assert any("Unknown symbol saved_command_line" in line for line in r.steps[0].diagnosis)


def test_panic_transcript():
    r = parse_console(transcript("panic"), PANIC_STEPS)
    r.failure = classify(r, qemu_rc=0)
    assert not r.ok and not r.done
    assert r.failure.kind == "panic" and r.failure.step == 1
    assert "during step 1 (run echo c > /proc/sysrq-trigger)" in r.failure.message
    assert "Kernel panic - not syncing: sysrq triggered crash" in r.failure.lines[0]
    assert any("sysrq_handle_crash" in line for line in r.failure.lines)
    assert [s.status for s in r.steps] == ["ok", "incomplete", "skipped"]


def test_timeout_transcript_reports_the_last_lines():
    lines = transcript("ok")
    cut = next(i for i, line in enumerate(lines) if "KLPVM:2:begin" in line) + 1
    r = parse_console(lines[:cut], OK_STEPS)
    r.failure = classify(r, timed_out="in step 2 (wait-transition)", qemu_rc=-9)
    assert r.failure.kind == "timeout" and r.failure.step == 2
    assert r.failure.lines == lines[:cut][-30:]
    assert r.steps[2].status == "incomplete" and r.steps[3].status == "skipped"


def test_no_boot_and_qemu_errors():
    r = parse_console([], [Step("run", "true")])
    f = classify(
        r, qemu_rc=1, qemu_stderr="qemu-system-x86_64: -cdrom /nope: Could not open '/nope'\n"
    )
    assert f.kind == "qemu-error" and "Could not open" in f.message
    assert classify(r, qemu_rc=0).kind == "no-boot"


def test_markers_found_after_kernel_noise_and_guest_text_is_not_a_crash():
    lines = [
        "junk\x1b[2JKLPVM:boot:1.0",
        "KLPVM:0:begin:1.0",
        "KLPVM:0:rc:0:1.1",
        "KLPVM:0:out:BUG: this is just program output",
        "[ 1.1] random kernel line KLPVM:0:end",
        "KLPVM:done:1.2",
    ]
    r = parse_console(lines, [Step("run", "echo")])
    assert r.booted and r.done and r.steps[0].status == "ok"
    assert crash_block(r.console) == [] and classify(r) is None


def test_unexpected_success_and_stuck_transition():
    lines = [
        "KLPVM:boot:1",
        "KLPVM:0:begin:1",
        "KLPVM:0:rc:0:1",
        "KLPVM:0:end",
        "KLPVM:1:begin:1",
        "KLPVM:1:rc:3:61",
        "KLPVM:1:out:transition stuck: lp",
        "KLPVM:1:out:task 57 worker patch_state=0",
        "KLPVM:1:end",
        "KLPVM:done:62",
    ]
    steps = [Step("rmmod", "x", expect="fail"), Step("wait-transition")]
    r = parse_console(lines, steps)
    assert classify(r).kind == "unexpected-success"
    r = parse_console(lines, [Step("rmmod", "x"), Step("wait-transition")])
    f = classify(r)
    assert f.kind == "transition-stuck" and f.step == 1
    assert "task 57 worker patch_state=0" in f.lines


# --- CLI plumbing --------------------------------------------------------------------------------


def test_cli_keeps_step_order_and_splits_qemu_args(tmp_path):
    script = tmp_path / "steps.txt"
    (tmp_path / "lp.ko").write_bytes(b"")
    script.write_text("insmod lp.ko\nwait-transition\n")
    args = cli.build_parser().parse_args(
        [
            "vm",
            "--run",
            "uname -r",
            "--script",
            str(script),
            "--load",
            "cdrom",
            "--step",
            "! rmmod lp",
            "--qemu-arg",
            "-cdrom /dev/null",
            "--qemu-arg=-snapshot",
            "--step-timeout",
            "9",
        ]
    )
    spec = vm_cmd.spec_from_args(args)
    assert [s.describe() for s in spec.steps] == [
        "run uname -r",
        f"insmod {tmp_path / 'lp.ko'}",
        "wait-transition",
        "insmod cdrom",
        "! rmmod lp",
    ]
    assert all(s.timeout == 9 for s in spec.steps)
    assert spec.qemu_args == ["-cdrom", "/dev/null", "-snapshot"]


def test_cli_bad_input_exits_2(capsys):
    assert cli.main(["vm"]) == 2
    assert "no steps" in capsys.readouterr().err
    assert cli.main(["vm", "--step", "frobnicate"]) == 2
    assert cli.main(["vm", "--vmlinuz", "/nonexistent/vmlinuz", "--run", "true"]) == 2
    assert "kernel image not found" in capsys.readouterr().err


def test_setup_package_list_matches_setup_sh():
    """klpkit setup --install must install exactly what scripts/setup.sh installs."""
    text = (REPO / "scripts" / "setup.sh").read_text()
    block = text.split("pkgs=(", 1)[1].split("\n)", 1)[0]
    names = [w for line in block.splitlines() for w in line.split("#", 1)[0].split()]
    names = [n.strip('"').replace("$REL", "R") for n in names]
    assert names == setup_cmd.packages("R")


def test_setup_reports_every_prerequisite(capsys):
    rc = cli.main(["setup", "--json"])
    doc = json.loads(capsys.readouterr().out)
    names = {c["name"] for c in doc["checks"]}
    assert {
        "qemu-system-x86_64",
        "/bin/busybox (static)",
        "cpio",
        "eu-elflint",
        "readelf",
        "kernel headers",
        "gcc -m32",
    } <= names
    assert rc == (0 if doc["ok"] else 1)


def test_big_output_arrives_gzip_base64_encoded():
    import base64

    text = "".join(f"ffffffff8100{i:04x} T sym_{i}\n" for i in range(5000))
    b64 = base64.encodebytes(gzip.compress(text.encode())).decode().splitlines()
    lines = ["KLPVM:boot:1", "KLPVM:0:begin:1", "KLPVM:0:rc:0:2"]
    lines += [f"KLPVM:0:gz:{chunk}" for chunk in b64] + ["KLPVM:0:end", "KLPVM:done:3"]
    r = parse_console(lines, [Step("kallsyms")])
    assert r.steps[0].output == text.splitlines()
    # a transcript cut short still yields what could be decoded, never an exception
    r = parse_console(lines[: 3 + len(b64) // 2], [Step("kallsyms")])
    assert r.steps[0].status == "incomplete"


def test_guest_side_step_timeout():
    lines = [
        "KLPVM:boot:1",
        "KLPVM:0:begin:1.0",
        "KLPVM:0:rc:143:6.1",
        "KLPVM:0:end",
        "KLPVM:done:7",
    ]
    r = parse_console(lines, [Step("run", "sleep 100", timeout=5)])
    assert r.steps[0].status == "timeout"
    assert classify(r).kind == "step-timeout"


@pytest.mark.parametrize("ci", [True, False])
def test_require_fails_under_ci_and_skips_locally(monkeypatch, ci):
    import tests.conftest as conftest

    monkeypatch.setattr(conftest, "CI", ci)
    conftest.require(True, "present")
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected):
        conftest.require(False, "qemu missing")


def test_guest_loader_is_a_static_binary_used_by_insmod_steps():
    from klpkit.vm import guest
    from klpkit.vm.initramfs import is_static_elf
    from klpkit.vm.loader import GUEST_PATH, guest_loader

    loader = guest_loader()
    assert loader is not None and is_static_elf(loader.read_bytes())
    assert guest_loader() == loader  # cached
    cmd = guest.step_command(Step("insmod", "/lib/modules/x.ko", "a=1"), insmod=GUEST_PATH)
    assert cmd == [GUEST_PATH, "/lib/modules/x.ko", "a=1"]


# --- compressed modules (Debian 6.12: .ko.xz) -----------------------------------------------


def test_module_name_of_compressed_files():
    from klpkit.vm.result import module_name

    assert module_name("/lib/modules/cdrom.ko.xz") == "cdrom"
    assert module_name("/lib/modules/snd-foo.ko.zst") == "snd_foo"
    assert module_name("/lib/modules/lp.ko") == "lp"


def test_bare_name_resolves_to_ko_xz_and_keeps_its_suffix(tmp_path):
    """`insmod cdrom` on 6.12 packs cdrom.ko.xz as it is: the guest loader passes
    MODULE_INIT_COMPRESSED_FILE for the .xz name and the kernel decompresses it."""
    from klpkit.vm import VmSpec
    from klpkit.vm.loader import SOURCE
    from klpkit.vm.run import Plan

    mods = tmp_path / "lib" / "modules" / "0.0.2+deb12-amd64"
    (mods / "kernel" / "drivers" / "cdrom").mkdir(parents=True)
    (mods / "kernel" / "drivers" / "cdrom" / "cdrom.ko.xz").write_bytes(b"\xfd7zXZ\0")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    plan = Plan(
        VmSpec(
            steps=[Step("insmod", "cdrom"), Step("rmmod", "cdrom")],
            vmlinuz=kernel,
            modules_dir=mods,
        )
    )
    assert plan.files["/lib/modules/cdrom.ko.xz"] == mods / "kernel/drivers/cdrom/cdrom.ko.xz"
    assert plan.commands[0][-1] == "/lib/modules/cdrom.ko.xz"
    assert 'ends_with(argv[1], ".xz")' in SOURCE and "MODULE_INIT_COMPRESSED_FILE 4" in SOURCE


def test_rejected_ko_xz_is_diagnosed_by_its_module_name():
    lines = [
        "KLPVM:boot:1",
        "KLPVM:0:begin:1.0",
        "insmod: can't insert '/lib/modules/sr_mod.ko.xz': unknown symbol in module",
        "KLPVM:0:rc:1:1.1",
        "KLPVM:0:dmesg:[    5.88] sr_mod: Unknown symbol cdrom_open (err -2)",
        "KLPVM:0:dmesg:[    5.89] unrelated: line",
        "KLPVM:0:end",
        "KLPVM:done:3",
    ]
    r = parse_console(lines, [Step("insmod", "/lib/modules/sr_mod.ko.xz")])
    assert r.steps[0].status == "rejected"
    assert any("sr_mod: Unknown symbol cdrom_open" in ln for ln in r.steps[0].diagnosis)
    assert not any("unrelated" in ln for ln in r.steps[0].diagnosis)

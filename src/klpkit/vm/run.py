"""Boot a kernel under qemu with a generated initramfs and collect a :class:`VmResult`.

The host watches the console while the guest runs: every stage (boot, each
step, the final report) has its own deadline, so a hung guest is killed and
reported with the step it hung in rather than waiting for one global timeout.
"""

import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from klpkit import debian
from klpkit.errors import InputError, KlpkitError
from klpkit.vm import guest
from klpkit.vm.initramfs import build_initramfs, is_static_elf
from klpkit.vm.loader import GUEST_PATH, guest_loader
from klpkit.vm.result import MARKER, VmResult, classify, module_name, parse_console
from klpkit.vm.spec import Step, VmSpec

QEMU = "qemu-system-x86_64"
HOST_GRACE = 30.0  # beyond a step's guest-side timeout before the host gives up
IDLE_TIMEOUT = 60.0  # max silence while the guest reports (between steps, final dmesg)
#: no_timer_check: under TCG on a loaded host the early IO-APIC timer test of check_timer()
#: can miss its ticks, and the kernel panics ("IO-APIC + timer doesn't work!") before
#: anything ran; the guest's timer works, the test is skipped.
CMDLINE = "console=ttyS0 panic=-1 quiet no_timer_check"


class VmError(KlpkitError):
    """The VM could not be started (missing qemu, kernel, or input files)."""


class Plan:
    """A spec resolved against the host: kernel file, guest files, guest commands."""

    def __init__(self, spec: VmSpec):
        self.spec = spec
        self.kernel, self.release, self.mods = _resolve_kernel(spec)
        self.files: dict[str, Path | bytes] = {}
        self.executables: set[str] = set()
        for path in spec.modules:
            self._add_module(Path(path))
        for path in spec.programs:
            self._add_program(Path(path))
        for gpath, content in spec.files.items():
            self.files["/" + gpath.lstrip("/")] = content
        # one load attempt per insmod step (busybox's insmod retries a refused module)
        loader = guest_loader()
        insmod = "insmod"
        if loader is not None:
            self.files[GUEST_PATH] = loader
            self.executables.add(GUEST_PATH)
            insmod = GUEST_PATH
        self.commands = [
            guest.step_command(s, self._guest_args(s), insmod=insmod) for s in spec.steps
        ]
        self.files[guest.LIB_PATH] = guest.LIB_SH.encode()
        self.init = guest.init_script(spec.steps, self.commands, spec.keep_going)

    def _add_module(self, host: Path) -> str:
        gpath = f"/lib/modules/{host.name}"
        previous = self.files.get(gpath)
        if previous is not None and (
            isinstance(previous, bytes) or previous.resolve() != host.resolve()
        ):
            shown = previous if isinstance(previous, Path) else "generated content"
            raise InputError(f"two different modules named {host.name} ({shown} and {host})")
        if not host.is_file():
            raise InputError("module not found", path=host)
        self.files[gpath] = host
        return gpath

    def _add_program(self, host: Path) -> None:
        try:
            static = is_static_elf(host.read_bytes())
        except OSError as e:
            raise InputError(f"cannot read program: {e.strerror}", path=host) from None
        if not static:
            raise InputError(
                "test program is not a static executable (build it with gcc -static)", path=host
            )
        gpath = f"/test/{host.name}"
        self.files[gpath] = host
        self.executables.add(gpath)

    def _module_on_host(self, arg: str) -> Path | None:
        """Where an insmod argument lives on the host: a file, or a module of the kernel image."""
        candidates = [Path(arg)]
        if self.spec.base_dir is not None and not Path(arg).is_absolute():
            candidates.insert(0, Path(self.spec.base_dir) / arg)
        for c in candidates:
            if c.is_file():
                return c
        if "/" not in arg and self.mods is not None:
            try:
                return debian.find_module(arg, mods=self.mods)
            except debian.DebianError:
                return None
        return None

    def _guest_args(self, step: Step) -> tuple[str, ...] | None:
        if step.kind != "insmod":
            return None
        arg, params = step.args[0], step.args[1:]
        if "/" + arg.lstrip("/") in self.files:
            return ("/" + arg.lstrip("/"), *params)
        host = self._module_on_host(arg)
        if host is None:
            where = f" or in {self.mods}" if self.mods else ""
            raise InputError(f"insmod: module {arg!r} not found on the host{where}")
        return (self._add_module(host), *params)


def _resolve_kernel(spec: VmSpec) -> tuple[Path, str, Path | None]:
    """(vmlinuz, release label, modules dir or None) for the spec."""
    if spec.vmlinuz is not None:
        kernel = Path(spec.vmlinuz)
        if not kernel.is_file():
            raise InputError("kernel image not found", path=kernel)
        mods = Path(spec.modules_dir) if spec.modules_dir else None
        if mods is not None and not mods.is_dir():
            raise InputError("modules directory not found", path=mods)
        return kernel, spec.release or kernel.name.removeprefix("vmlinuz-"), mods
    release = spec.release or debian.DEFAULT_RELEASE
    mods = Path(spec.modules_dir) if spec.modules_dir else debian.modules_dir(release)
    return debian.vmlinuz(release), release, mods


def qemu_command(spec: VmSpec, kernel: Path, initrd: Path) -> list[str]:
    """The qemu command line: TCG by default (nested KVM is broken on the CI machines)."""
    if shutil.which(QEMU) is None:
        raise VmError(f"{QEMU} not found; install qemu-system-x86 (klpkit setup --install)")
    accel = ["-accel", "kvm", "-cpu", "host"] if spec.kvm else ["-accel", "tcg"]
    append = f"{CMDLINE} {spec.append}".strip()
    return [
        QEMU,
        *accel,
        "-smp",
        "1",
        "-m",
        spec.memory,
        "-nographic",
        "-no-reboot",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        append,
        *spec.qemu_args,
    ]


class _Watchdog:
    """Tracks which stage the guest is in from its marker lines and when it is overdue."""

    def __init__(self, spec: VmSpec):
        self.steps = spec.steps
        self.stage = "while booting"
        self.deadline = time.monotonic() + spec.boot_timeout
        self.in_command = False

    def saw(self, line: str) -> None:
        now = time.monotonic()
        m = MARKER.search(line)
        tag, rest = (m["tag"], m["rest"]) if m else ("", "")
        sub = rest.partition(":")[0]
        if tag.isdigit() and sub == "begin" and int(tag) < len(self.steps):
            step = self.steps[int(tag)]
            self.in_command = True
            self.stage = f"in step {tag} ({step.describe()})"
            self.deadline = now + guest.guest_timeout(step) + HOST_GRACE
        elif tag.isdigit() and sub == "rc":
            self.in_command = False
            self.stage = f"reporting step {tag}"
        elif tag == "done":
            self.stage = "powering off"
        elif m and tag == "boot":
            self.stage = "before the first step"
        if not self.in_command and (m or self.stage != "while booting"):
            self.deadline = now + IDLE_TIMEOUT

    def overdue(self) -> bool:
        return time.monotonic() > self.deadline


def _reader(stream, lines: queue.Queue) -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
    lines.put(None)


def _drive(cmd: list[str], spec: VmSpec, log=None) -> tuple[list[str], str | None, int, str, float]:
    """Run qemu, feeding console lines to the watchdog; kill it when a stage is overdue."""
    watchdog = _Watchdog(spec)
    console: list[str] = []
    with tempfile.TemporaryFile() as err:
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
            )
        except OSError as e:
            raise VmError(f"cannot start {cmd[0]}: {e.strerror}") from None
        lines: queue.Queue = queue.Queue()
        reader = threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True)
        reader.start()
        timed_out = None
        try:
            while True:
                try:
                    line = lines.get(timeout=0.25)
                except queue.Empty:
                    line = ""
                if line is None:
                    break
                if line:
                    console.append(line)
                    watchdog.saw(line)
                    if log:
                        log(line)
                if timed_out is None and watchdog.overdue():
                    timed_out = watchdog.stage
                    proc.kill()
        finally:
            if proc.poll() is None:
                proc.kill()
            rc = proc.wait()
            reader.join(timeout=5)
            if not reader.is_alive() and proc.stdout is not None:
                proc.stdout.close()  # the reader saw EOF: nobody reads it any more
        elapsed = time.monotonic() - start
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    return console, timed_out, rc, stderr, elapsed


def run_vm(spec: VmSpec, *, log=None, keep_initrd: Path | None = None) -> VmResult:
    """Boot ``spec``'s kernel, run its steps in order, and return the parsed result.

    ``log`` (optional) receives every console line as it arrives, e.g. ``print``
    for live output.  Raises :class:`VmError`/``InputError`` only for problems on
    the host (missing qemu, kernel or files); everything that goes wrong in the
    guest is reported in the result.
    """
    plan = Plan(spec)
    initrd_bytes = build_initramfs(plan.init, plan.files, executables=frozenset(plan.executables))
    with tempfile.TemporaryDirectory(prefix="klpkit-vm-") as tmp:
        initrd = Path(tmp) / "initrd.gz"
        initrd.write_bytes(initrd_bytes)
        if keep_initrd is not None:
            shutil.copyfile(initrd, keep_initrd)
        cmd = qemu_command(spec, plan.kernel, initrd)
        console, timed_out, rc, stderr, elapsed = _drive(cmd, spec, log)
    result = parse_console(console, spec.steps, plan.commands)
    result.boot_seconds = round(elapsed, 2)
    result.kernel = {"release": plan.release, "vmlinuz": str(plan.kernel)}
    result.qemu = {"command": cmd, "exit_status": rc, "stderr": stderr.strip().splitlines()[-20:]}
    result.failure = classify(result, timed_out=timed_out, qemu_rc=rc, qemu_stderr=stderr)
    return result


def modules_in(result: VmResult) -> set[str]:
    """Names of the modules listed in /proc/modules after the last step that ran."""
    ran = [s for s in result.steps if s.modules]
    return {line.split()[0] for line in ran[-1].modules} if ran else set()


__all__ = ["Plan", "VmError", "module_name", "modules_in", "qemu_command", "run_vm"]

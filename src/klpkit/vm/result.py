"""The host side of the protocol: turn a serial-console transcript into a result.

Parsing is a pure function of the console lines (plus how qemu ended), so every
failure classification is unit-testable from a canned transcript.  Classification
uses the guest's own lines: the oops/panic block for a crash, the insmod error
and the matching kernel log lines for a rejected module, the stuck tasks for a
transition that does not finish, the last console lines for a hang.
"""

import base64
import binascii
import re
import zlib
from dataclasses import dataclass, field

from klpkit import debian
from klpkit.vm.guest import MARK, STUCK_STATUS
from klpkit.vm.spec import Step

MARKER = re.compile(MARK + r":(?P<tag>[^:\s]+):?(?P<rest>.*)$")
PANIC = re.compile(r"Kernel panic - not syncing")
OOPS_START = re.compile(
    r"BUG: |Oops: |general protection fault|kernel BUG at|Kernel panic - not syncing|"
    r"unable to handle page fault|stack-protector: "
)
WARNING = re.compile(r"WARNING: CPU: \d+ PID: \d+ at ")
TAIL_LINES = 30
TIMEOUT_STATUSES = (124, 137, 143)  # busybox timeout: child killed by TERM or KILL


@dataclass
class StepResult:
    """What one step did in the guest.

    ``status`` classifies the outcome independently of the expectation: ``ok``,
    ``failed``, ``rejected`` (insmod refused the module), ``stuck`` (a livepatch
    transition did not finish), ``timeout``, ``incomplete`` (the guest died or hung
    during the step) or ``skipped``.  ``passed`` applies the step's expectation.
    """

    index: int
    step: Step
    command: list[str]
    status: str = "skipped"
    exit_status: int | None = None
    seconds: float | None = None
    output: list[str] = field(default_factory=list)
    dmesg: list[str] = field(default_factory=list)
    livepatch: dict[str, dict[str, int | None]] = field(default_factory=dict)
    modules: list[str] = field(default_factory=list)
    diagnosis: list[str] = field(default_factory=list)
    _start: float | None = None
    _gz: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        if self.status in ("skipped", "incomplete") or self.exit_status is None:
            return False
        if self.step.expect == "any":
            return True
        return (self.exit_status == 0) == (self.step.expect == "ok")

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "step": self.step.describe(),
            "kind": self.step.kind,
            "args": list(self.step.args),
            "expect": self.step.expect,
            "command": self.command,
            "status": self.status,
            "passed": self.passed,
            "exit_status": self.exit_status,
            "seconds": self.seconds,
            "output": self.output,
            "dmesg": self.dmesg,
            "livepatch": self.livepatch,
            "modules": self.modules,
            "diagnosis": self.diagnosis,
        }


@dataclass
class Failure:
    """Why a run is not ok: ``kind`` is one of ``panic``, ``oops``, ``timeout``,
    ``no-boot``, ``qemu-error``, ``module-rejected``, ``transition-stuck``,
    ``step-timeout``, ``step-failed``, ``unexpected-success``."""

    kind: str
    message: str
    step: int | None = None
    lines: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"kind": self.kind, "step": self.step, "message": self.message, "lines": self.lines}


@dataclass
class VmResult:
    """The outcome of one boot: per-step results, final state, and the first failure."""

    steps: list[StepResult]
    console: list[str] = field(default_factory=list)
    dmesg: list[str] = field(default_factory=list)
    booted: bool = False
    done: bool = False
    boot_seconds: float | None = None  # host wall clock, qemu start to exit
    init_uptime: float | None = None  # guest uptime when /init started
    guest_uptime: float | None = None  # guest uptime at power-off
    failure: Failure | None = None
    warnings: list[str] = field(default_factory=list)
    kernel: dict[str, str] = field(default_factory=dict)
    qemu: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.done and self.failure is None and all(s.passed for s in self.steps)

    @property
    def livepatch(self) -> dict[str, dict[str, int | None]]:
        """Livepatch sysfs state after the last step that ran."""
        ran = [s for s in self.steps if s.status not in ("skipped", "incomplete")]
        return ran[-1].livepatch if ran else {}

    def step(self, index: int) -> StepResult:
        return self.steps[index]

    def console_tail(self, n: int = TAIL_LINES) -> list[str]:
        return self.console[-n:]

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "kernel": self.kernel,
            "boot_seconds": self.boot_seconds,
            "init_uptime": self.init_uptime,
            "guest_uptime": self.guest_uptime,
            "booted": self.booted,
            "done": self.done,
            "failure": self.failure.to_json() if self.failure else None,
            "steps": [s.to_json() for s in self.steps],
            "livepatch": self.livepatch,
            "kernel_warnings": self.warnings,
            "dmesg": self.dmesg,
            "console_tail": self.console_tail(),
            "qemu": self.qemu,
        }


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _apply_step_line(sr: StepResult, tag: str, rest: str) -> None:
    """Record one ``KLPVM:<i>:<tag>:<rest>`` line in the step's result."""
    if tag == "begin":
        sr.status, sr._start = "incomplete", _float(rest)
    elif tag == "rc":
        status, _, up = rest.partition(":")
        sr.exit_status = _int(status)
        end = _float(up)
        if end is not None and sr._start is not None:
            sr.seconds = round(end - sr._start, 3)
    elif tag == "out":
        sr.output.append(rest)
    elif tag == "gz":
        sr._gz.append(rest.strip())
    elif tag == "dmesg":
        sr.dmesg.append(rest)
    elif tag == "lp":
        name, _, state = rest.partition(":")
        enabled, _, transition = state.partition(":")
        sr.livepatch[name] = {"enabled": _int(enabled), "transition": _int(transition)}
    elif tag == "mod":
        sr.modules.append(rest)
    elif tag == "end":
        sr.status = _classify_step(sr)
    elif tag == "skipped":
        sr.status = "skipped"


def _gunzip_lines(chunks: list[str]) -> list[str]:
    """Decode a step's gzip+base64 output; a transcript cut short keeps what was decodable."""
    try:
        data = base64.b64decode("".join(chunks))
        text = zlib.decompressobj(wbits=31).decompress(data).decode("utf-8", "replace")
    except (binascii.Error, zlib.error) as e:
        return [f"<klpkit: compressed output unreadable: {e}>"]
    return text.splitlines()


def _classify_step(sr: StepResult) -> str:
    rc = sr.exit_status
    if rc is None:
        return "incomplete"
    if rc == 0:
        return "ok"
    if rc in TIMEOUT_STATUSES and sr.seconds is not None and sr.seconds >= sr.step.timeout - 1:
        return "timeout"
    if sr.step.kind == "insmod":
        return "rejected"
    if sr.step.kind in ("wait-transition", "disable") and rc == STUCK_STATUS:
        return "stuck"
    return "failed"


def module_name(path: str) -> str:
    """The kernel's name for a module file: basename without ``.ko`` (or ``.ko.xz``,
    ``.ko.zst``, ``.ko.gz``: Debian's 6.12 modules are ``.ko.xz``), ``-`` as ``_``."""
    return debian.module_stem(path.rsplit("/", 1)[-1]).replace("-", "_")


def _diagnose(sr: StepResult) -> list[str]:
    """The lines that explain a step's outcome, taken from the guest's own output."""
    if sr.status == "rejected":
        name = module_name(sr.step.args[0])
        related = [line for line in sr.dmesg if name in line.replace("-", "_")]
        return sr.output + (related or sr.dmesg)
    if sr.status in ("stuck", "timeout", "failed"):
        return sr.output[-TAIL_LINES:] + sr.dmesg[-TAIL_LINES:]
    return []


def kernel_lines(lines: list[str]) -> list[str]:
    """Console lines that are not protocol lines (guest output may say "BUG: " too)."""
    return [line for line in lines if MARK + ":" not in line]


def crash_block(lines: list[str], limit: int = 120) -> list[str]:
    """The oops/panic lines: from the first crash marker to the panic's end line
    (or, for an oops the kernel survived, to the end of its trace)."""
    kernel = kernel_lines(lines)
    start = next((i for i, line in enumerate(kernel) if OOPS_START.search(line)), None)
    if start is None:
        return []
    rest = kernel[start : start + limit]
    for end_marker in ("---[ end Kernel panic", "---[ end trace"):
        end = next((i for i, line in enumerate(rest) if end_marker in line), None)
        if end is not None:
            return rest[: end + 1]
    return rest


def parse_console(
    lines: list[str], steps: list[Step], commands: list[list[str]] | None = None
) -> VmResult:
    """Build a :class:`VmResult` from console lines (protocol: see :mod:`klpkit.vm.guest`).

    The failure is not classified here for host-side events (timeouts, qemu
    errors); :func:`classify` does that with the extra facts.
    """
    commands = commands or [[] for _ in steps]
    result = VmResult(
        steps=[StepResult(i, s, c) for i, (s, c) in enumerate(zip(steps, commands, strict=True))]
    )
    for raw in lines:
        line = raw.rstrip("\r\n")
        result.console.append(line)
        m = MARKER.search(line)
        if not m:
            continue
        tag, rest = m["tag"], m["rest"]
        if tag == "boot":
            result.booted, result.init_uptime = True, _float(rest)
        elif tag == "done":
            result.done, result.guest_uptime = True, _float(rest)
        elif tag == "dmesg":
            result.dmesg.append(rest)
        elif tag.isdigit() and int(tag) < len(result.steps):
            sub, _, payload = rest.partition(":")
            _apply_step_line(result.steps[int(tag)], sub, payload)
    for sr in result.steps:
        if sr._gz:
            sr.output += _gunzip_lines(sr._gz)
        sr.diagnosis = _diagnose(sr)
    result.warnings = [line for line in result.dmesg if WARNING.search(line)]
    return result


def in_flight(result: VmResult) -> StepResult | None:
    """The step the guest was in when the transcript ends, if any."""
    return next((s for s in result.steps if s.status == "incomplete"), None)


def classify(
    result: VmResult,
    *,
    timed_out: str | None = None,
    qemu_rc: int | None = None,
    qemu_stderr: str = "",
) -> Failure | None:
    """The first reason the run is not ok, or None.

    Order matters: a crash explains everything after it, a host timeout explains
    a missing end, and only a run that reached its end is judged step by step.
    """
    current = in_flight(result)
    at = current.index if current else None
    where = f" during step {at} ({current.step.describe()})" if current else ""
    crash = crash_block(result.console)
    if any(PANIC.search(line) for line in kernel_lines(result.console)):
        return Failure("panic", f"kernel panic{where}", at, crash)
    if crash:
        return Failure("oops", f"kernel oops{where}", at, crash)
    if timed_out:
        return Failure("timeout", f"guest timed out {timed_out}{where}", at, result.console_tail())
    if not result.done:
        if not result.booted:
            err = [line for line in qemu_stderr.splitlines() if line.strip()]
            if qemu_rc not in (0, None) and err:
                return Failure(
                    "qemu-error",
                    f"qemu exited with status {qemu_rc}: {err[-1]}",
                    None,
                    err[-TAIL_LINES:],
                )
            return Failure("no-boot", "the guest never reached /init", None, result.console_tail())
        return Failure(
            "qemu-error",
            f"the guest stopped before powering off{where} (qemu status {qemu_rc})",
            at,
            result.console_tail(),
        )
    for sr in result.steps:
        if sr.passed or sr.status == "skipped":
            continue
        desc = sr.step.describe()
        if sr.exit_status == 0 and sr.step.expect == "fail":
            return Failure(
                "unexpected-success",
                f"step {sr.index} ({desc}) succeeded but was expected to fail",
                sr.index,
                sr.output,
            )
        kind = {
            "rejected": "module-rejected",
            "stuck": "transition-stuck",
            "timeout": "step-timeout",
        }.get(sr.status, "step-failed")
        first = sr.output[0] if sr.output else f"exit status {sr.exit_status}"
        return Failure(kind, f"step {sr.index} ({desc}): {first}", sr.index, sr.diagnosis)
    return None

"""``klpkit vm``: boot a kernel under qemu and run an ordered list of steps in the guest.

Steps come from ``--load``, ``--run``, ``--step`` and ``--script`` in the order
given on the command line.  Exit status: 0 when every step did what it was
expected to do, 1 otherwise, 2 for bad input.
"""

import argparse
import shlex
import sys
from pathlib import Path

from klpkit import debian
from klpkit.errors import InputError
from klpkit.output import print_json, print_table
from klpkit.vm import Step, VmSpec, parse_step, run_vm
from klpkit.vm.result import VmResult

MAX_SHOWN_LINES = 20


class _AddStep(argparse.Action):
    """Append ``(option, value)`` to one shared list, so the steps keep the command line's order."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, self.dest, None) or [])
        items.append((self.const, values))
        setattr(namespace, self.dest, items)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "vm",
        help="boot a kernel under qemu and run steps (insmod, livepatch checks) in the guest",
        description="Boot a kernel under qemu and run an ordered list of steps in the guest.",
        epilog="Step lines (--step, --script): [!|?] KIND ARGS [timeout=S] with KIND one of insmod PATH "
        "[PARAMS], rmmod NAME, run SHELL-CMD, wait-transition [PATCH], disable PATCH, dmesg, kallsyms. "
        "'!' expects failure, '?' accepts either outcome. Qemu options that start with '-' need "
        "--qemu-arg=-cdrom or --qemu-arg '-cdrom FILE' (split like a shell would).",
    )
    kernel = p.add_argument_group("kernel")
    kernel.add_argument(
        "--release",
        default=None,
        help=f"Debian kernel release to fetch and boot (default {debian.DEFAULT_RELEASE})",
    )
    kernel.add_argument(
        "--vmlinuz", type=Path, help="boot this kernel image instead of a Debian release"
    )
    kernel.add_argument(
        "--modules-dir", type=Path, help="where bare module names (insmod cdrom) are looked up"
    )
    steps = p.add_argument_group("steps (run in the order given)")
    steps.add_argument(
        "--load",
        dest="steps",
        action=_AddStep,
        const="load",
        metavar="MODULE",
        help="insmod a .ko file, or a module of the kernel image by name",
    )
    steps.add_argument(
        "--run",
        dest="steps",
        action=_AddStep,
        const="run",
        metavar="CMD",
        help="run a shell command in the guest",
    )
    steps.add_argument(
        "--step",
        dest="steps",
        action=_AddStep,
        const="step",
        metavar="LINE",
        help="any step, as a script line (e.g. 'wait-transition', 'disable lp', '! insmod bad.ko')",
    )
    steps.add_argument(
        "--script",
        dest="steps",
        action=_AddStep,
        const="script",
        metavar="FILE",
        help="a file of steps, one per line; relative module paths are relative to it",
    )
    guest = p.add_argument_group("guest")
    guest.add_argument(
        "--pack",
        action="append",
        type=Path,
        default=[],
        metavar="KO",
        help="put a module into /lib/modules/ without loading it",
    )
    guest.add_argument(
        "--program",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="a static test program, installed as /test/NAME (on PATH)",
    )
    guest.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="HOST:GUEST",
        help="copy a host file into the guest",
    )
    guest.add_argument(
        "--keep-going", action="store_true", help="run the remaining steps after a failure"
    )
    guest.add_argument(
        "--step-timeout", type=float, help="timeout of every step without timeout= (seconds)"
    )
    q = p.add_argument_group("qemu")
    q.add_argument(
        "--qemu-arg", action="append", default=[], metavar="ARG", help="extra qemu arguments"
    )
    q.add_argument("--append", default="", help="extra kernel command line")
    q.add_argument("--memory", default="1G", help="guest memory (default 1G)")
    q.add_argument(
        "--kvm",
        action="store_true",
        help="use KVM instead of software emulation (opt-in: nested KVM is often broken)",
    )
    q.add_argument(
        "--boot-timeout", type=float, default=120.0, help="seconds until /init must start"
    )
    q.add_argument("--keep-initrd", type=Path, metavar="FILE", help="save the generated initramfs")
    out = p.add_argument_group("output")
    out.add_argument("--console", action="store_true", help="stream the guest console to stderr")
    out.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run, steps=[])


def _with_timeout(step: Step, line: str, timeout: float | None) -> Step:
    if timeout is None or (step.kind != "run" and "timeout=" in line):
        return step
    return Step(step.kind, *step.args, expect=step.expect, timeout=timeout)


def _read_script(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise InputError(f"cannot read script: {e.strerror}", path=path) from None


def build_steps(items: list[tuple[str, str]], timeout: float | None = None) -> list[Step]:
    """Steps from the ordered (option, value) list."""
    steps: list[Step] = []
    for option, value in items:
        if option == "load":
            steps.append(Step("insmod", value, timeout=timeout))
        elif option == "run":
            steps.append(Step("run", value, timeout=timeout))
        elif option == "step":
            steps.append(_with_timeout(parse_step(value, where="--step"), value, timeout))
        else:
            base = Path(value).resolve().parent
            for n, line in enumerate(_read_script(value).splitlines(), 1):
                if line.strip() and not line.lstrip().startswith("#"):
                    step = _relative_to(parse_step(line, where=f"{value}:{n}"), base)
                    steps.append(_with_timeout(step, line, timeout))
    if not steps:
        raise InputError("no steps: give --load, --run, --step or --script")
    return steps


def _relative_to(step: Step, base: Path) -> Step:
    """A script's relative module paths are relative to the script, not to the caller's cwd."""
    if (
        step.kind != "insmod"
        or Path(step.args[0]).is_absolute()
        or not (base / step.args[0]).is_file()
    ):
        return step
    return Step(
        "insmod", str(base / step.args[0]), *step.args[1:], expect=step.expect, timeout=step.timeout
    )


def _files(specs: list[str]) -> dict[str, Path | bytes]:
    files: dict[str, Path | bytes] = {}
    for spec in specs:
        host, sep, gpath = spec.rpartition(":")
        if not sep or not host or not gpath.startswith("/"):
            raise InputError(f"--file wants HOST:/GUEST/PATH, got {spec!r}")
        files[gpath] = Path(host)
    return files


def spec_from_args(args) -> VmSpec:
    if args.vmlinuz is None and args.modules_dir is not None and args.release is None:
        raise InputError("--modules-dir without --vmlinuz: give --release or --vmlinuz too")
    steps = build_steps(args.steps, args.step_timeout)
    qemu_args = [a for arg in args.qemu_arg for a in shlex.split(arg)]
    return VmSpec(
        steps=steps,
        release=args.release,
        vmlinuz=args.vmlinuz,
        modules_dir=args.modules_dir,
        modules=args.pack,
        programs=args.program,
        files=_files(args.file),
        qemu_args=qemu_args,
        append=args.append,
        memory=args.memory,
        kvm=args.kvm,
        boot_timeout=args.boot_timeout,
        keep_going=args.keep_going,
    )


def _shown(lines: list[str]) -> list[str]:
    if len(lines) <= MAX_SHOWN_LINES:
        return lines
    return lines[:MAX_SHOWN_LINES] + [f"... {len(lines) - MAX_SHOWN_LINES} more lines (see --json)"]


def print_result(result: VmResult, stream=None) -> None:
    """The readable report: steps table, each step's output, livepatch state, verdict."""
    stream = stream or sys.stdout
    rows = [
        (
            s.index,
            s.step.describe(),
            s.status,
            "" if s.exit_status is None else s.exit_status,
            "" if s.seconds is None else f"{s.seconds:.2f}",
            "-" if s.status == "skipped" else ("yes" if s.passed else "NO"),
        )
        for s in result.steps
    ]
    print_table(
        ["#", "step", "status", "exit", "secs", "as expected"],
        rows,
        title=f"klpkit vm: {result.kernel.get('release', '?')}",
        stream=stream,
    )
    for s in result.steps:
        lines = s.output if s.status != "rejected" else s.diagnosis
        if lines:
            stream.write(f"\n[{s.index}] {s.step.describe()}\n")
            stream.write("".join(f"  {line}\n" for line in _shown(lines)))
    if result.livepatch:
        stream.write("\n")
        print_table(
            ["livepatch", "enabled", "transition"],
            [(n, st["enabled"], st["transition"]) for n, st in result.livepatch.items()],
            stream=stream,
        )
    for w in result.warnings:
        stream.write(f"kernel warning: {w}\n")
    if result.failure:
        f = result.failure
        stream.write(f"\nFAILED ({f.kind}): {f.message}\n")
        stream.write("".join(f"  {line}\n" for line in f.lines[-40:]))
    verdict = "ok" if result.ok else "FAILED"
    stream.write(
        f"\n{verdict}: boot to power-off {result.boot_seconds} s (guest uptime {result.guest_uptime} s)\n"
    )


def run(args) -> int:
    spec = spec_from_args(args)
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.console else None
    result = run_vm(spec, log=log, keep_initrd=args.keep_initrd)
    if args.json:
        print_json(result.to_json())
    else:
        print_result(result)
    return 0 if result.ok else 1

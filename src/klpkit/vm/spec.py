"""What to run in the guest: steps and the VM specification.

A :class:`Step` is one action in the guest, run in order by the generated /init;
a :class:`VmSpec` says which kernel to boot, what to pack into the initramfs and
how to run qemu.  Steps can also be written one per line in a script file
(:func:`parse_script`), which is what ``klpkit vm --script`` reads.
"""

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from klpkit.errors import InputError

# kind -> (minimum args, maximum args or None, default timeout in seconds)
KINDS: dict[str, tuple[int, int | None, float]] = {
    "insmod": (1, None, 60.0),
    "rmmod": (1, 1, 60.0),
    "run": (1, 1, 60.0),
    "wait-transition": (0, 1, 60.0),
    "disable": (1, 1, 60.0),
    "dmesg": (0, 0, 30.0),
    "kallsyms": (0, 0, 120.0),
}
EXPECTS = ("ok", "fail", "any")


class Step:
    """One guest action.

    ``Step("insmod", "lp.ko", "param=1")``, ``Step("run", "cat /proc/cmdline")``,
    ``Step("wait-transition")``, ``Step("disable", "lp")``, ``Step("rmmod", "lp")``,
    ``Step("dmesg")``, ``Step("kallsyms")``.

    ``expect`` says what counts as success: ``"ok"`` (exit status 0, the default),
    ``"fail"`` (non-zero: a negative test, e.g. a module that must be rejected) or
    ``"any"``.  ``timeout`` bounds the action inside the guest; the host adds a
    grace period on top before declaring the guest hung.
    """

    __slots__ = ("kind", "args", "expect", "timeout")

    def __init__(self, kind: str, *args: str, expect: str = "ok", timeout: float | None = None):
        if kind not in KINDS:
            raise InputError(f"unknown step kind {kind!r} (known: {', '.join(KINDS)})")
        lo, hi, default_timeout = KINDS[kind]
        if len(args) < lo or (hi is not None and len(args) > hi):
            want = f"{lo}" if lo == hi else f"{lo}..{hi if hi is not None else 'n'}"
            raise InputError(f"step {kind!r} takes {want} argument(s), got {len(args)}")
        if expect not in EXPECTS:
            raise InputError(
                f"step expectation must be one of {', '.join(EXPECTS)}, got {expect!r}"
            )
        if timeout is not None and timeout <= 0:
            raise InputError(f"step timeout must be positive, got {timeout}")
        self.kind = kind
        self.args = tuple(str(a) for a in args)
        self.expect = expect
        self.timeout = float(timeout) if timeout is not None else default_timeout

    def describe(self) -> str:
        """The step as a script line (the inverse of :func:`parse_step`)."""
        prefix = {"ok": "", "fail": "! ", "any": "? "}[self.expect]
        if self.kind == "run":
            return f"{prefix}run {self.args[0]}"
        return prefix + " ".join([self.kind, *map(shlex.quote, self.args)])

    def __repr__(self) -> str:
        return f"Step({self.describe()!r}, timeout={self.timeout:g})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Step) and all(
            getattr(self, s) == getattr(other, s) for s in self.__slots__
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.args, self.expect, self.timeout))


def parse_step(line: str, where: str = "step") -> Step:
    """Parse one script line: ``[!|?] KIND ARGS [timeout=SECONDS]``.

    ``!`` expects the step to fail, ``?`` accepts either outcome.  For ``run`` the
    rest of the line is the shell command, verbatim (so quoting stays the user's).
    """
    text = line.strip()
    expect = "ok"
    if text[:1] in "!?" and text:
        expect = "fail" if text[0] == "!" else "any"
        text = text[1:].lstrip()
    kind, _, rest = text.partition(" ")
    rest = rest.strip()
    timeout = None
    if kind == "run":
        args = [rest] if rest else []
    else:
        try:
            args = shlex.split(rest)
        except ValueError as e:
            raise InputError(f"{where}: {e}") from None
        if args and args[-1].startswith("timeout="):
            timeout = _parse_timeout(args.pop()[len("timeout=") :], where)
    try:
        return Step(kind, *args, expect=expect, timeout=timeout)
    except InputError as e:
        raise InputError(f"{where}: {e.message}") from None


def _parse_timeout(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{where}: bad timeout {text!r}") from None


def parse_script(text: str, name: str = "script") -> list[Step]:
    """Parse a steps script: one step per line, ``#`` comments and blank lines ignored."""
    steps = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            steps.append(parse_step(line, where=f"{name}:{n}"))
    return steps


@dataclass
class VmSpec:
    """Everything needed for one boot.

    The kernel is either a Debian ``release`` (fetched and cached by
    :mod:`klpkit.debian`) or an explicit ``vmlinuz`` (+ optional ``modules_dir``
    to resolve bare module names such as ``insmod cdrom``).  Paths given to
    ``insmod`` steps that exist on the host are packed into the initramfs under
    ``/lib/modules/``; relative ones are looked up in ``base_dir`` first.
    """

    steps: list[Step] = field(default_factory=list)
    release: str | None = None
    vmlinuz: Path | None = None
    modules_dir: Path | None = None
    modules: list[Path] = field(default_factory=list)  # packed, not loaded
    programs: list[Path] = field(default_factory=list)  # static binaries -> /test/
    files: dict[str, Path | bytes] = field(default_factory=dict)  # guest path -> content
    qemu_args: list[str] = field(default_factory=list)
    append: str = ""
    memory: str = "1G"
    kvm: bool = False
    boot_timeout: float = 120.0
    keep_going: bool = False
    base_dir: Path | None = None

"""Run fuzz cases and judge them.

A run is one command line, in-process through ``klpkit.cli.main`` /
``klpkit.cli.klp_convert_main`` with stdout a *strict* UTF-8 text stream (what a real
``en_US.UTF-8`` locale or ``PYTHONIOENCODING=utf-8`` gives) and stderr UTF-8 with
backslash escapes (Python's own stderr policy), or -- for a sample -- through the real
console script in a process of its own, with a timeout and an address-space limit.

Acceptable outcomes:

``accepted``  exit 0 (an output, when the command writes one, exists and passes
              ``readelf -a -W`` and ``eu-elflint --gnu-ld`` with nothing beyond what the
              input had)
``findings``  exit 1 (check/deps errors, a conversion with errors: nothing written)
``refused``   exit 2 with one error line naming the file (or the option) at fault
``usage``     argparse's own refusal of a malformed option (exit 2, usage text)

Everything else is a failure: ``traceback``, ``hang``, ``blowup``, ``corrupt-output``,
``modified-input``, ``partial-output`` (an output left by a refused run),
``unnamed-message`` (the error line names no input), ``bad-exit``, ``over-input`` (an
output written over an input), ``stale-temp`` / ``temp-left`` (temp files left),
``missing-output`` and ``accepts-broken`` (check exits 0 on a file inspect refuses).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import resource
import signal
import stat
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from tests.fuzz.cases import Case, Group

OK_OUTCOMES = ("accepted", "findings", "refused", "usage")
FAILURES = (
    "traceback",
    "hang",
    "blowup",
    "corrupt-output",
    "modified-input",
    "partial-output",
    "unnamed-message",
    "bad-exit",
    "over-input",
    "stale-temp",
    "temp-left",
    "missing-output",
    "accepts-broken",
)
VENV_BIN = Path(sys.executable).parent
AS_LIMIT = 2 << 30  # bytes of address space for a real-CLI run
BENIGN = (
    # elflint does not know the livepatch ELF extensions the conversion adds
    re.compile(r"'\.klp\.rela\..*' contains unknown flag\(s\) 0x100000"),
    re.compile(r"symbol \d+ \(\.klp\.sym\..*\): invalid section index"),
)


@dataclass
class Result:
    klass: str
    command: str
    mode: str  # 'in-process' | 'cli'
    outcome: str
    rc: int | None = None
    detail: str = ""  # the traceback's last line, or the error line
    where: str = ""  # the klpkit source line that raised
    problems: list[str] = field(default_factory=list)  # every failure seen, first is outcome
    elf_checked: bool = False
    seconds: float = 0.0
    argv: list[str] = field(default_factory=list)  # the command line, program first
    what: str = ""  # the mutation

    @property
    def failed(self) -> bool:
        return self.outcome not in OK_OUTCOMES


class _Pipe(io.BytesIO):
    """What a command's stdout is in a pipeline: not seekable."""

    def seekable(self) -> bool:
        return False


class FuzzTimeout(BaseException):
    """Raised by the interval timer in a run that takes too long (a hang)."""


def _on_alarm(_signum, _frame):
    raise FuzzTimeout()


_SHA_CACHE: dict[tuple, str] = {}


def sha(path: str) -> str | None:
    """sha256 of a regular file's bytes (None for anything else).  Cached by the file's
    full stat identity (inode, size, mtime and ctime in ns): any write or replacement
    changes ctime, which no process can set back, so an unchanged identity is unchanged
    content and the hash is reused."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    hit = _SHA_CACHE.get(key)
    if hit is None:
        try:
            hit = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            return None
        if len(_SHA_CACHE) > 10000:
            _SHA_CACHE.clear()
        _SHA_CACHE[key] = hit
    return hit


def _temps(directories) -> set[str]:
    out = set()
    for d in directories:
        with contextlib.suppress(OSError):
            out |= {f"{d}/{n}" for n in os.listdir(d) if n.startswith(".") and ".tmp" in n}
    return out


def _where(tb) -> str:
    """The deepest frame of the traceback inside klpkit's sources."""
    spot = ""
    for frame in traceback.extract_tb(tb):
        if "/src/klpkit/" in frame.filename or "/site-packages/klpkit/" in frame.filename:
            name = frame.filename.split("/src/", 1)[-1]
            spot = (
                f"src/{name}:{frame.lineno} ({frame.name})" if "/src/" in frame.filename else name
            )
    return spot


class ElfOracle:
    """readelf/eu-elflint diagnostics of a file, normalised (indexes and numbers out),
    cached by content."""

    def __init__(self):
        self.cache: dict[str, frozenset[str]] = {}

    def diagnostics(self, path: str) -> frozenset[str]:
        digest = sha(path) or path
        if digest in self.cache:
            return self.cache[digest]
        plain = _decompressed(path)
        try:
            result = self._diagnose(plain or path)
        finally:
            if plain:
                os.unlink(plain)
        if len(self.cache) > 4096:
            self.cache.clear()
        self.cache[digest] = result
        return result

    def _diagnose(self, path: str) -> frozenset[str]:
        out = set()
        r = subprocess.run(
            ["readelf", "-a", "-W", path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=120,
        )  # fmt: skip
        for line in r.stderr.decode("utf-8", "replace").splitlines():
            out.add("readelf: " + _normal(line))
        if r.returncode:
            out.add(f"readelf: exit {r.returncode}")
        r = subprocess.run(
            ["eu-elflint", "--gnu-ld", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=120,
        )  # fmt: skip
        livepatch = _livepatch_symbols(path)
        for line in r.stdout.decode("utf-8", "replace").splitlines():
            if any(p.search(line) for p in BENIGN) or "No errors" in line:
                continue
            bad_index = re.search(r"symbol (\d+) \(.*\): invalid section index", line)
            if bad_index and int(bad_index.group(1)) in livepatch:
                continue  # SHN_LIVEPATCH, whether or not elflint could read the name
            out.add("elflint: " + _normal(line))
        return frozenset(out)

    def new_problems(self, output: str, reference: str) -> list[str]:
        return sorted(self.diagnostics(output) - self.diagnostics(reference))


def _livepatch_symbols(path: str) -> set[int]:
    """Indexes of the SHN_LIVEPATCH symbols of an ELF file (empty when unreadable)."""
    from tests.fuzz import elfmut

    try:
        elf = elfmut.Elf(Path(path).read_bytes())
        return {s.index for s in elf.symbols if s.shndx == elfmut.SHN_LIVEPATCH}
    except Exception:  # noqa: BLE001 - a mutant our own reader cannot walk
        return set()


def _decompressed(path: str) -> str | None:
    """A temp file with the ELF inside a .ko.xz/.ko.gz input (what klpkit read), or None
    for a plain file or a stream that does not decompress."""
    import gzip
    import lzma
    import tempfile

    with open(path, "rb") as f:
        head = f.read(6)
    try:
        if head.startswith(b"\xfd7zXZ\0"):
            data = lzma.decompress(Path(path).read_bytes())
        elif head.startswith(b"\x1f\x8b"):
            data = gzip.decompress(Path(path).read_bytes())
        else:
            return None
    except (lzma.LZMAError, OSError, EOFError):
        return None
    fd, tmp = tempfile.mkstemp(suffix=".ko")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return tmp


def _normal(line: str) -> str:
    # a converted relocation section is the .rela section its relocations came from: a
    # diagnostic the input has there and the output has in .klp.rela.<obj>.<sec> is the
    # input's own
    line = re.sub(r"'\.klp\.rela\.[^.']*\.([^']*)'", r"'.rela\1'", line)
    # and a .klp.sym.<obj>.<name>,<pos> symbol is the undefined <name> it replaced
    line = re.sub(r"\(\.klp\.sym\.rela\.[^.()]*\.[^.()]*\.([^,()]*)[,.]\d+\)", r"(\1)", line)
    line = re.sub(r"\(\.klp\.sym\.[^.,()]*\.([^,()]*),\d+\)", r"(\1)", line)
    line = re.sub(r"\[\s*\d+\]", "[N]", line)
    line = re.sub(r"0x[0-9a-fA-F]+", "0xN", line)
    return re.sub(r"\b\d+\b", "N", line).strip()


@dataclass
class Options:
    cli_rate: float = 0.01  # share of runs repeated through the real console script
    elf_rate: float = 1.0  # share of accepted outputs checked with readelf/eu-elflint
    timeout: float = 60.0  # seconds before an in-process run counts as a hang


class Runner:
    def __init__(self, options: Options, rng):
        self.options = options
        self.rng = rng
        self.oracle = ElfOracle()
        self._main = None
        self._klp_main = None
        signal.signal(signal.SIGALRM, _on_alarm)

    # --- in-process -------------------------------------------------------------------------
    def _entry(self, case: Case):
        if self._main is None:
            self._main, self._klp_main = entry_points()
        return self._klp_main if case.entry == "klp-convert" else self._main

    def run_group(self, group: Group) -> list[Result]:
        results = []
        results = self._run_cases(group)
        for r, case in results:
            r.argv, r.what = case.command_line, case.what
        return [r for r, _c in results]

    def _run_cases(self, group: Group) -> list:
        results = []
        inspect_refused = False
        for case in group.cases:
            if not case.cli_only:
                r = self.run_inprocess(case, group.workdir)
                if case.command == "inspect" and r.rc == 2:
                    inspect_refused = True
                mutant_checked = case.command == "check" and "--loaded" not in case.argv
                if mutant_checked and r.rc == 0 and inspect_refused:
                    r.problems.insert(0, "accepts-broken")
                    r.outcome = "accepts-broken"
                    r.detail = "check exit 0 on a module inspect refuses (exit 2)"
                results.append((r, case))
            if case.cli_only or case.force_cli or self.rng.random() < self.options.cli_rate:
                results.append((self.run_cli(case, group.workdir), case))
        return results

    def run_inprocess(self, case: Case, workdir: Path) -> Result:
        before = {p: sha(p) for p in case.inputs}
        temps = _temps(self._dirs(case, workdir))
        if case.pre_kill is not None:
            self._killed_run(case, workdir)
        out_existed = case.output is not None and os.path.lexists(case.output)
        stdout = io.TextIOWrapper(_Pipe(), encoding="utf-8", errors="strict", newline="\n")
        stderr = io.TextIOWrapper(
            _Pipe(), encoding="utf-8", errors="backslashreplace", newline="\n"
        )
        res = Result(case.klass, case.command, "in-process", "")
        cwd = os.getcwd()
        t = time.perf_counter()
        try:
            os.chdir(workdir)
            signal.setitimer(signal.ITIMER_REAL, case.timeout or self.options.timeout)
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                rc = self._entry(case)(list(case.argv))
            signal.setitimer(signal.ITIMER_REAL, 0)
            res.rc = rc
        except FuzzTimeout:
            res.problems.append("hang")
            res.detail = f"no exit after {case.timeout or self.options.timeout:.0f} s"
        except SystemExit as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            res.rc = e.code if isinstance(e.code, int) else 1
            res.detail = "SystemExit"
            if res.rc == 2:
                res.detail = "usage"
        except MemoryError as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            res.problems.append("blowup")
            res.where = _where(e.__traceback__)
            res.detail = "MemoryError"
        except BaseException as e:  # noqa: BLE001 - every escape is a finding
            signal.setitimer(signal.ITIMER_REAL, 0)
            res.problems.append("traceback")
            res.where = _where(e.__traceback__)
            res.detail = f"{type(e).__name__}: {e}"[:300]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            os.chdir(cwd)
        res.seconds = time.perf_counter() - t
        err = _text(stderr)
        self._judge(case, res, err, before, temps, out_existed, workdir)
        return res

    def _dirs(self, case: Case, workdir: Path) -> set[str]:
        dirs = {str(workdir)}
        for p in [*case.named, case.output or ""]:
            if p.startswith("/") and not p.startswith(("/proc", "/sys", "/dev")):
                dirs.add(os.path.dirname(p))
        return dirs

    # --- judging ----------------------------------------------------------------------------
    def _judge(self, case, res, err, before, temps, out_existed, workdir) -> None:
        after = {p: sha(p) for p in case.inputs}
        changed = [p for p in before if before[p] != after[p]]
        if changed:
            res.problems.append("modified-input")
            res.detail = res.detail or f"changed: {', '.join(changed)}"
        if res.rc is not None and not res.problems:
            self._judge_exit(case, res, err, out_existed)
        left = _temps(self._dirs(case, workdir)) - temps
        if case.pre_kill is not None and left:
            res.problems.append("stale-temp")
            res.detail = res.detail or f"temp file of the killed run kept: {sorted(left)[0]}"
        elif case.stale and os.path.exists(case.stale) and res.rc == 0:
            res.problems.append("stale-temp")
            res.detail = res.detail or f"stale temp file kept: {case.stale}"
        elif left:
            res.problems.append("temp-left")
            res.detail = res.detail or f"temp files left: {sorted(left)[:2]}"
        if res.problems:
            res.outcome = res.problems[0]
        res.detail, res.where = clean(res.detail), clean(res.where)
        if res.outcome in ("traceback", "hang", "blowup") and not res.detail:
            res.detail = err.strip().splitlines()[-1] if err.strip() else ""

    def _judge_exit(self, case: Case, res: Result, err: str, out_existed: bool) -> None:
        rc = res.rc
        lines = [ln for ln in err.splitlines() if ln.strip()]
        if "Traceback (most recent call last)" in err:
            res.problems.append("traceback")
            res.detail = lines[-1][:300] if lines else ""
            return
        if rc == 0:
            res.outcome = "accepted"
            if case.expect_refusal:
                res.problems.append("over-input")
                res.detail = "accepted an output that resolves to an input"
                return
            self._judge_output(case, res)
        elif rc == 1:
            res.outcome = "findings"
        elif rc == 2:
            self._judge_refusal(case, res, lines, err)
            if case.output and not out_existed and os.path.lexists(case.output):
                res.problems.append("partial-output")
                res.detail = f"refused but wrote {case.output}"
        else:
            res.problems.append("bad-exit")
            res.detail = f"exit {rc}: {lines[-1][:200] if lines else ''}"

    def _judge_refusal(self, case: Case, res: Result, lines: list[str], err: str) -> None:
        if res.detail == "usage" or "usage:" in err:
            res.outcome = "usage"
            res.detail = lines[-1][:200] if lines else ""
            return
        errors = [
            ln
            for ln in lines
            if ln.startswith(("klpkit: error:", "klp-convert: ")) and "warning:" not in ln
        ]
        res.outcome = "refused"
        res.detail = errors[-1][:300] if errors else (lines[-1][:300] if lines else "")
        files = [*case.named, *case.inputs, case.output or ""]
        if len(errors) != 1 or not _names_one(errors[0], files):
            res.problems.append("unnamed-message")

    def _judge_output(self, case: Case, res: Result) -> None:
        if not case.output or "--dry-run" in case.argv:
            return
        if not os.path.isfile(case.output):
            res.problems.append("missing-output")
            res.detail = f"exit 0 but no {case.output}"
            return
        if case.reference and self.rng.random() < self.options.elf_rate:
            res.elf_checked = True
            new = self.oracle.new_problems(case.output, case.reference)
            if new:
                res.problems.append("corrupt-output")
                res.detail = "; ".join(new)[:300]

    def _killed_run(self, case: Case, workdir: Path) -> None:
        exe = VENV_BIN / "klpkit"
        p = subprocess.Popen(
            [os.fsencode(exe), *(os.fsencode(a) for a in case.argv)], cwd=workdir,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(case.pre_kill or 0)
        p.kill()
        p.wait()

    # --- the real console script --------------------------------------------------------------
    def run_cli(self, case: Case, workdir: Path) -> Result:
        before = {p: sha(p) for p in case.inputs}
        temps = _temps(self._dirs(case, workdir))
        out_existed = case.output is not None and os.path.lexists(case.output)
        exe = VENV_BIN / ("klp-convert" if case.entry == "klp-convert" else "klpkit")
        env = dict(os.environ, PYTHONIOENCODING="utf-8:strict", LC_ALL="C.UTF-8")
        res = Result(case.klass, case.command, "cli", "")
        t = time.perf_counter()
        argv = [os.fsencode(a) for a in case.argv]
        try:
            p = subprocess.run(
                [os.fsencode(exe), *argv], cwd=workdir, env=env, capture_output=True,
                timeout=case.timeout or self.options.timeout, preexec_fn=_limit_memory,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
            res.rc = p.returncode
            err = p.stderr.decode("utf-8", "backslashreplace")
        except subprocess.TimeoutExpired:
            res.problems.append("hang")
            res.detail = f"no exit after {case.timeout or self.options.timeout:.0f} s"
            err = ""
        res.seconds = time.perf_counter() - t
        if "MemoryError" in err:
            res.problems.append("blowup")
            res.detail = "MemoryError"
        elif res.rc is not None and res.rc < 0:
            res.problems.append("blowup" if res.rc == -signal.SIGKILL else "bad-exit")
            res.detail = f"killed by signal {-res.rc}"
        self._judge(case, res, err, before, temps, out_existed, workdir)
        if res.outcome == "traceback":
            res.where = _where_text(err)
        return res


def entry_points():
    """``klpkit.cli.main`` and ``klp_convert_main``, with the argument parser built once
    per process rather than per run (building it imports and registers every command:
    ~10 ms a run; ``parse_args`` leaves it unchanged)."""
    import functools

    from klpkit import cli

    if not hasattr(cli.build_parser, "cache_info"):
        cli.build_parser = functools.lru_cache(maxsize=1)(cli.build_parser)
    return cli.main, cli.klp_convert_main


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    os.setsid()


def _where_text(err: str) -> str:
    spots = re.findall(r'File "([^"]*klpkit/[^"]*)", line (\d+), in (\S+)', err)
    if not spots:
        return ""
    f, line, fn = spots[-1]
    return f"src/klpkit/{f.split('klpkit/', 1)[1]}:{line} ({fn})"


def _text(stream: io.TextIOWrapper) -> str:
    with contextlib.suppress(Exception):
        stream.flush()
    raw = stream.buffer.getvalue()  # type: ignore[attr-defined]
    return raw.decode("utf-8", "backslashreplace")


def _names_one(line: str, named: list[str]) -> bool:
    for n in named:
        if not n:
            continue
        for p in {n, os.path.realpath(n), os.path.abspath(n)}:
            if any(v in line for v in _spellings(p)):
                return True
    return False


def _spellings(path: str) -> set[str]:
    """A path as an error line may show it: as is, with its non-UTF-8 bytes escaped as
    ``\\xNN`` (klpkit's own escaping) or as ``\\udcNN`` (Python's backslashreplace)."""
    raw = path.encode("utf-8", "surrogateescape")
    return {
        path,
        path.encode("utf-8", "backslashreplace").decode(),
        raw.decode("utf-8", "backslashreplace"),
        repr(path)[1:-1],
    }


def clean(text: str) -> str:
    """Text safe to print on any UTF-8 stream (lone surrogates escaped)."""
    return text.encode("utf-8", "backslashreplace").decode()

"""The kernel source tree of one Debian kernel release, prepared once and cached, and single
objects compiled with the distro kernel's exact flags.

Why a whole source tree: a livepatch is the difference between two compiles of the objects a
patch touches, and the unchanged parts must be byte-identical to what Debian shipped.  That
only holds when the object is compiled from the very source Debian built (``linux-source-X.Y``
pinned to the kernel's package version), with the kernel's ``.config``, the same gcc, and
kbuild's own per-directory flags.  Layout under the cache root::

    <cache>/<release>/source/                 unpacked atomically (temp dir + rename)
        VERSION                               the Debian version unpacked (part of the rename)
        linux-source-6.1/                     the tree: .config + modules_prepare done
        ready.json                            written last: the tree is prepared, and how

The tree is only ever written by ``make`` under one lock per release; a patched file is
compiled from a caller's work directory by replaying kbuild's saved command line, so a broken
patch or a Ctrl-C can never leave the cached tree dirty.
"""

import contextlib
import email.utils
import gzip
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

from klpkit import debian
from klpkit.debian import DEFAULT_RELEASE
from klpkit.errors import KlpkitError

# Function and data sections make each function diffable on its own; the flags change no
# code (same inlining, same sizes).  Every make gets them: a different KCFLAGS would make
# kbuild rebuild all prepare objects.
KCFLAGS = "-ffunction-sections -fdata-sections"

# Headers whose text reaches code (dump_stack, init/version): they must equal Debian's.
GENERATED_HEADERS = ("compile.h", "utsversion.h", "package.h", "utsrelease.h")

# Programs the preparation runs, checked up front for a clear message instead of a make error.
REQUIRED_TOOLS = ("make", "flex", "bison", "bc", "pahole", "perl", "ld", "tar", "xz", "dpkg-deb")
INSTALL_HINT = (
    "apt-get install flex bison bc dwarves libssl-dev libelf-dev (or bash scripts/setup.sh)"
)

# Bumped whenever the preparation recipe changes, so an older ready tree is prepared again.
MARKER_SCHEMA = 1
MARKER = "ready.json"

# Kconfig symbols computed from the toolchain: the only ones a compiler mismatch may change.
TOOLCHAIN_SYMBOL = re.compile(r"CONFIG_\w*_VERSION(_TEXT)?")


class SourceError(KlpkitError):
    """The kernel source cannot be prepared, or an object cannot be compiled from it."""


@dataclass(frozen=True)
class CompiledObject:
    source: str  # tree-relative .c path, e.g. "drivers/cdrom/cdrom.c"
    object: Path  # the compiled .o (objtool already run on it, exactly as kbuild does)
    seconds: float  # wall time of the compile (near zero when the object was already built)


# --- pure helpers: Debian metadata ----------------------------------------------------------


def parse_changelog_date(text: str) -> str:
    """The date of the newest entry of a Debian changelog: the trailer line
    `` -- Name <mail>  Fri, 08 May 2026 21:59:49 +0200`` (two spaces before the date, per
    Debian policy).  Debian's build uses it as the kernel's build timestamp."""
    for line in text.splitlines():
        m = re.match(r" -- .*?>  (\S.*\S)\s*$", line)
        if m:
            return m.group(1)
    raise SourceError("no ' -- Name <mail>  date' trailer line in the changelog")


def version_timestamp(distributor: str, version: str, date: str) -> str:
    """``KBUILD_BUILD_VERSION_TIMESTAMP`` as Debian sets it: ``Debian 6.1.170-3 (2026-05-08)``,
    the date in UTC.  It is the tail of ``UTS_VERSION`` (include/generated/utsversion.h)."""
    try:
        when = email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError):
        raise SourceError(f"cannot parse the changelog date {date!r}") from None
    return f"{distributor} {version} ({when.astimezone(UTC):%Y-%m-%d})"


def parse_kernelvariables(text: str) -> dict[str, str]:
    """The ``[override] NAME = value`` assignments of the headers' ``.kernelvariables``
    (Debian's record of ARCH, KERNELRELEASE and CC for this kernel)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"\s*(?:override\s+)?([A-Za-z_]\w*)\s*:?=\s*(.*?)\s*$", line)
        if m:
            found.setdefault(m.group(1), m.group(2))
    return found


def make_value_word(value: str) -> str:
    """The literal part of a make value: ``$(if $(X),$(CCACHE)) $(CROSS_COMPILE)gcc-12`` ->
    ``gcc-12``.  Debian's CC adds ccache and a cross prefix only when asked to; a native
    build uses the bare compiler."""
    while True:
        stripped = re.sub(r"\$\([^()]*\)", "", value)
        if stripped == value:
            break
        value = stripped
    words = value.split()
    if len(words) != 1:
        raise SourceError(f"cannot tell the compiler from the make value {value!r}")
    return words[0]


def parse_config(text: str) -> dict[str, str]:
    """Kconfig symbols of a ``.config``: ``CONFIG_X=v`` -> v, ``# CONFIG_X is not set`` -> n."""
    symbols: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"(CONFIG_\w+)=(.*)$", line) or re.match(r"# (CONFIG_\w+) is not set$", line)
        if m:
            symbols[m.group(1)] = m.group(2) if m.lastindex == 2 else "n"
    return symbols


def config_string(config: dict[str, str], name: str) -> str | None:
    """A Kconfig string symbol's text (unquoted, ``\\"`` and ``\\\\`` unescaped)."""
    raw = config.get(name)
    if raw is None or not (raw.startswith('"') and raw.endswith('"')):
        return None
    return re.sub(r"\\(.)", r"\1", raw[1:-1])


def config_diff(old: dict[str, str], new: dict[str, str], *, ignore_toolchain: bool) -> list[str]:
    """``CONFIG_X: old -> new`` for every symbol that differs; with ``ignore_toolchain`` the
    compiler/assembler/linker/pahole version symbols a different toolchain changes are left
    out (they describe the toolchain, not the kernel)."""
    changes = []
    for name in sorted(old.keys() | new.keys()):
        if ignore_toolchain and TOOLCHAIN_SYMBOL.fullmatch(name):
            continue
        before, after = old.get(name, "(absent)"), new.get(name, "(absent)")
        if before != after:
            changes.append(f"{name}: {before} -> {after}")
    return changes


def compiler_mismatch(expected: str, actual: str, cc: str) -> str | None:
    """Why ``cc`` cannot build objects for this kernel, or None.  Kconfig's
    ``CONFIG_CC_VERSION_TEXT`` is the first line of ``$(CC) --version``; a different compiler
    (even another Debian revision of gcc-12) may emit different code."""
    if expected.strip() == actual.strip():
        return None
    return (
        f"compiler mismatch: the kernel was built with {expected.strip()!r} but {cc} here "
        f"is {actual.strip()!r}; its objects would not match the shipped kernel "
        f"(allow_compiler_mismatch to build anyway)"
    )


# --- pure helpers: make output and kbuild's saved commands ----------------------------------


_MAKE_FAILED = re.compile(r"make(\[\d+\])?: \*\*\* (\[(?P<where>[^\]]*)\] )?Error \d+")
_NOISE = re.compile(
    r"make(\[\d+\])?: (\*\*\* Waiting|(Entering|Leaving) directory)|^\s*\d* \||^\s*\|"
)
_PRIMARY = re.compile(
    r"error:|Error:|fatal|not found|No such file|No rule to make|"
    r"cannot|command not found|\*\*\* "
)


def condense_errors(output: str, *, strip: str | None = None) -> str:
    """Make's or gcc's error output as one line: the first real error (the cause; later ones
    are mostly consequences), where make failed, and how many errors followed.  ``strip``
    (a work directory prefix) is removed so paths read as tree paths."""
    if strip:
        output = output.replace(strip.rstrip("/") + "/", "")
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    failed = [m.group("where") for m in map(_MAKE_FAILED.search, lines) if m and m.group("where")]
    useful = [line for line in lines if not _MAKE_FAILED.search(line) and not _NOISE.search(line)]
    primary = [line for line in useful if _PRIMARY.search(line)]
    chosen = primary or useful or lines or ["no output"]
    text = chosen[0]
    if len(primary) > 1:
        text += f" (and {len(primary) - 1} more)"
    if failed:
        text += f" [make: {failed[0]}]"
    return text if len(text) <= 400 else text[:397] + "..."


def _unescape_make(text: str) -> str:
    """Undo kbuild's escaping of a saved command (Kbuild.include ``make-cmd``): ``$`` was
    written as ``$$`` and ``#`` as ``$(pound)`` so make can read the .cmd file back."""
    return re.sub(r"\$(\$|\(pound\))", lambda m: "$" if m.group(1) == "$" else "#", text)


@dataclass(frozen=True)
class KbuildCommand:
    """The command kbuild ran for one object: the compiler argv, then the post-processing
    (objtool) argvs that followed it after ``;`` in the same shell line."""

    target: str
    compile: list[str]
    post: list[list[str]]


def parse_cmd_file(text: str, target: str) -> KbuildCommand:
    """The saved command for ``target`` from kbuild's ``.<name>.o.cmd`` file.

    The first line is ``cmd_<target> := <shell line>`` (``savedcmd_`` since 6.3).  Only a
    plain ``compiler ...; objtool ...`` line is accepted: anything else (an ``ld -r`` for clang
    LTO, shell conditionals) is refused rather than replayed wrongly."""
    key = re.compile(rf"(?:saved)?cmd_(?:\./)?{re.escape(target)} := (.*)$")
    line = next((m.group(1) for m in map(key.match, text.splitlines()) if m), None)
    if line is None:
        raise SourceError(f"no saved command for {target} in its .cmd file")
    lexer = shlex.shlex(_unescape_make(line), posix=True, punctuation_chars=";")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as e:
        raise SourceError(f"cannot parse the saved command for {target}: {e}") from None
    commands: list[list[str]] = [[]]
    for token in tokens:
        if set(token) == {";"}:
            commands.append([])
        else:
            commands[-1].append(token)
    commands = [c for c in commands if c]
    if not commands or "-c" not in commands[0]:
        raise SourceError(f"the saved command for {target} is not a compile: {line[:80]}")
    for post in commands[1:]:
        if Path(post[0]).name != "objtool":
            raise SourceError(
                f"cannot replay the saved command for {target}: "
                f"unexpected {shlex.join(post)[:80]!r} after the compile"
            )
    return KbuildCommand(target, commands[0], commands[1:])


def _same_path(arg: str, path: str) -> bool:
    return os.path.normpath(arg) == os.path.normpath(path)


def _overlay_include(arg: str, headers: tuple[str, ...], workdir: Path) -> list[str]:
    """``-I<dir>`` preceded by ``-I<workdir>/<dir>`` when a patched header lives under it,
    so ``#include <linux/x.h>`` finds the patched copy first."""
    d = os.path.normpath(arg[2:])
    if any(h.startswith(d + "/") for h in headers):
        return [f"-I{workdir / d}", arg]
    return [arg]


def replay_commands(
    cmd: KbuildCommand, source: str, workdir: Path, headers: tuple[str, ...] = ()
) -> list[list[str]]:
    """The argvs that compile ``workdir/<source>`` exactly as kbuild compiled ``<source>``,
    to be run with the tree root as working directory.

    Rewritten: the input, the output (``-o`` and objtool's argument) and the dependency file
    (``-Wp,-MMD,...``) move into ``workdir``, so nothing is written into the tree.  Added:
    ``-iquote <dir>`` (tree-relative, like kbuild's own ``-I./include``) so ``#include "x.h"``
    still finds the file's neighbours in the tree -- after the work copy's own directory, so a
    patched header placed next to it wins -- and ``-fmacro-prefix-map``/``-fdebug-prefix-map``
    of ``workdir`` so ``__FILE__`` and the DWARF file name stay ``drivers/cdrom/cdrom.c``."""
    workdir = Path(os.path.abspath(workdir))
    new_source, new_object = str(workdir / source), str(workdir / cmd.target)
    argv: list[str] = []
    found_input = found_output = False
    args = iter(cmd.compile)
    for arg in args:
        if arg == "-o":
            out = next(args, "")
            if not _same_path(out, cmd.target):
                raise SourceError(f"saved command for {cmd.target} writes {out!r}")
            argv += ["-o", new_object]
            found_output = True
        elif m := re.match(r"(-Wp,-MM?D,)(.*)$", arg):
            argv.append(m.group(1) + str(workdir / m.group(2)))
        elif _same_path(arg, source) and argv:
            argv.append(new_source)
            found_input = True
        elif arg.startswith("-I") and len(arg) > 2 and headers:
            argv += _overlay_include(arg, headers, workdir)
        elif headers and argv and argv[-1] == "-include" and os.path.normpath(arg) in headers:
            argv.append(str(workdir / os.path.normpath(arg)))
        elif arg == "-c":
            directory = os.path.dirname(source) or "."
            argv += [
                "-iquote",
                directory,
                f"-fmacro-prefix-map={workdir}/=",
                f"-fdebug-prefix-map={workdir}/=",
                "-c",
            ]
        else:
            argv.append(arg)
    if not (found_input and found_output):
        raise SourceError(f"saved command for {cmd.target} does not compile {source}")
    posts = []
    for post in cmd.post:
        if not any(_same_path(a, cmd.target) for a in post[1:]):
            raise SourceError(f"objtool in the saved command for {cmd.target} has no object")
        posts.append([new_object if _same_path(a, cmd.target) else a for a in post])
    return [argv, *posts]


def tree_path(path: str) -> str:
    """``path`` normalised as a path inside the tree; absolute or escaping paths are refused
    (a patch naming ``../x`` must never reach outside the tree)."""
    norm = os.path.normpath(path)
    if os.path.isabs(norm) or norm == "." or norm == ".." or norm.startswith("../"):
        raise SourceError(f"{path!r} is not a path inside the kernel source tree")
    return norm


# --- the build environment -------------------------------------------------------------------

# Variables a user's environment could set that kbuild or make would pick up: the tree must
# see only the variables klpkit passes, or objects stop matching (and rebuild).
_ENV_DROP_PREFIXES = ("KBUILD_", "KCONFIG_", "INSTALL_", "DISTRIBUTION_")
_ENV_DROP = {
    "ARCH",
    "SUBARCH",
    "SRCARCH",
    "CROSS_COMPILE",
    "CC",
    "LD",
    "AR",
    "NM",
    "OBJCOPY",
    "OBJDUMP",
    "HOSTCC",
    "HOSTCXX",
    "HOSTCFLAGS",
    "HOSTLDFLAGS",
    "HOST_EXTRACFLAGS",
    "LLVM",
    "LLVM_IAS",
    "KCFLAGS",
    "KCPPFLAGS",
    "KAFLAGS",
    "KRUSTFLAGS",
    "CFLAGS_KERNEL",
    "CFLAGS_MODULE",
    "AFLAGS_KERNEL",
    "AFLAGS_MODULE",
    "LDFLAGS_MODULE",
    "LDFLAGS_vmlinux",
    "USERCFLAGS",
    "USERLDFLAGS",
    "O",
    "M",
    "W",
    "C",
    "V",
    "KERNELRELEASE",
    "KERNELVERSION",
    "LOCALVERSION",
    "MAKEFLAGS",
    "MFLAGS",
    "GNUMAKEFLAGS",
    "MAKELEVEL",
    "MAKEFILES",
    "MAKEOVERRIDES",
    "DISTRIBUTOR",
    "SOURCE_DATE_EPOCH",
    "DEBIAN_KERNEL_USE_CCACHE",
    "CCACHE",
    "CHECK",
    "CHECKFLAGS",
    "CONFIG_SHELL",
}


def _clean_environ() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _ENV_DROP and not k.startswith(_ENV_DROP_PREFIXES)
    }
    env["LC_ALL"] = "C"  # English diagnostics to condense; Debian builds in the C locale
    return env


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
        )
    except FileNotFoundError:
        raise SourceError(f"{argv[0]} not found ({INSTALL_HINT})") from None


# --- probing what kbuild builds --------------------------------------------------------------

# Evaluated inside kbuild itself, so every exported variable (ARCH_CORE, BITS, CONFIG_*) is
# what a real build sees: the top Makefile runs klpkit-walk, which reads each directory's
# Makefile through scripts/Makefile.build and prints what that directory builds.
_PROBE_MK = """\
klpkit-walk:
\t@$(foreach d,$(KLPKIT_DIRS),$(MAKE) -f $(srctree)/scripts/Makefile.build -f $(KLPKIT_PROBE) \
obj=$(d) need-builtin=1 need-modorder=1 klpkit-list &&) :
klpkit-list:
\t@echo 'klpkit-dir $(obj): $(subdir-ym) $(real-obj-y) $(real-obj-m) $(lib-y)'
"""


def parse_probe(output: str) -> dict[str, set[str]]:
    """``{directory: {subdirs and objects it builds}}`` from the probe's ``klpkit-dir`` lines
    (kbuild prefixes entries with the directory except at the top, so all are normalised)."""
    built: dict[str, set[str]] = {}
    for line in output.splitlines():
        m = re.match(r"klpkit-dir (\S+):(.*)$", line)
        if m:
            built[os.path.normpath(m.group(1))] = {os.path.normpath(w) for w in m.group(2).split()}
    return built


def _ancestors(directory: str) -> list[str]:
    """``.`` and every prefix of ``directory``: the directories kbuild may pass through."""
    parts = Path(directory).parts
    return ["."] + ["/".join(parts[: i + 1]) for i in range(len(parts))]


def unbuilt_reason(source: str, built: dict[str, set[str]]) -> str | None:
    """Why kbuild would not build ``source``'s object in this configuration, or None.

    ``make dir/x.o`` alone does not tell: for an object outside the configuration kbuild
    still compiles it, from the nearest visited directory, with that directory's flags.  The
    walk follows kbuild's own descent from the top, where one step may span several path
    components (the top-level Kbuild names ``arch/x86/`` directly), and a directory may build
    objects of a subdirectory it does not visit (``kvm-intel-y += vmx/vmx.o``)."""
    target_dir, obj = os.path.dirname(source) or ".", source[:-2] + ".o"
    current = "."
    while obj not in built.get(current, ()):
        steps = [
            d
            for d in built.get(current, ())
            if d != current and (target_dir == d or target_dir.startswith(d + "/"))
        ]
        if not steps:
            break
        current = max(steps, key=len)
    else:
        return None
    if current != target_dir:
        depth = 0 if current == "." else len(Path(current).parts)
        missing = "/".join(Path(target_dir).parts[: depth + 1])
        return (
            f"{source} is not built in this kernel's configuration: kbuild does not "
            f"descend into {missing}/ (no CONFIG_... enabled for it?)"
        )
    return (
        f"{source} is not built in this kernel's configuration: {target_dir}/ builds no "
        f"{os.path.basename(obj)} (no CONFIG_... enabled for it, or the file is #included "
        f"by another .c file?)"
    )


# --- unpacking ---------------------------------------------------------------------------------


def _unpack_source(deb: Path, dest: Path) -> None:
    """Extract the kernel tarball inside ``deb`` into ``dest``.

    The tarball (``usr/src/linux-source-6.1.tar.xz``, 139 MB, 1.3 GB unpacked) is streamed
    out of the package into ``xz -T0`` and ``tar``: it is never written to disk, and its 55
    xz blocks decompress in parallel (6 s instead of 10 on two cores)."""
    with tempfile.TemporaryFile() as errors:
        deb_proc = subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=errors
        )
        xz = subprocess.Popen(
            ["xz", "-dc", "-T0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors
        )
        assert deb_proc.stdout and xz.stdin and xz.stdout  # PIPEs, by the calls above
        xz_in = xz.stdin
        tar = subprocess.Popen(["tar", "-x", "-C", str(dest)], stdin=xz.stdout, stderr=errors)
        xz.stdout.close()
        found = False
        codes: tuple[int | str, ...]
        try:
            with tarfile.open(fileobj=deb_proc.stdout, mode="r|") as outer:
                for info in outer:
                    if not re.fullmatch(r"(\./)?usr/src/linux-source-[\d.]+\.tar\.xz", info.name):
                        continue
                    member = outer.extractfile(info)
                    if member is not None:
                        shutil.copyfileobj(member, xz_in, 1 << 20)
                        found = True
                        break
            xz_in.close()
            codes = (tar.wait(), xz.wait())
        except (OSError, tarfile.TarError) as e:
            codes = (f"{e}",)
        finally:
            for proc in (deb_proc, xz, tar):
                proc.kill()
                proc.wait()
            with contextlib.suppress(OSError):  # a dead xz makes the flush fail
                xz_in.close()
            deb_proc.stdout.close()
        errors.seek(0)
        text = errors.read().decode(errors="replace")
    if not found:
        raise SourceError("package has no usr/src/linux-source-*.tar.xz", path=deb)
    if any(codes):
        raise SourceError(f"unpacking failed: {condense_errors(text or str(codes))}", path=deb)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- the tree ----------------------------------------------------------------------------------


class SourceTree:
    """A prepared kernel source tree: use :meth:`prepare`, not the constructor."""

    def __init__(
        self, release: str, version: str, root: Path, make_args: list[str], env: dict[str, str]
    ):
        self.release = release
        self.version = version
        self.root = root
        self._make_args = list(make_args)
        self._env = dict(env)
        self._objtool: list[str] | None = None

    def __repr__(self) -> str:
        return f"SourceTree({self.release!r}, {self.version!r}, {str(self.root)!r})"

    # --- preparation ------------------------------------------------------------------------

    @classmethod
    def prepare(
        cls,
        release: str = DEFAULT_RELEASE,
        *,
        allow_compiler_mismatch: bool = False,
        progress: Callable[[str], None] | None = None,
    ) -> "SourceTree":
        """The prepared source tree of ``release``, preparing it on first use (about a
        minute: download, unpack, olddefconfig, modules_prepare); later calls only read the
        ready marker (well under a millisecond).

        The fast path needs no lock: the marker is written last and names everything the
        tree was prepared with; the slow path runs under the release's lock, so a second
        concurrent caller waits and then finds the tree ready."""
        say = progress or (lambda _msg: None)
        base = debian.release_dir(release) / "source"
        tree = cls._from_marker(release, base, allow_compiler_mismatch)
        if tree:
            return tree
        with debian._locked(f"source-{release}"):
            tree = cls._from_marker(release, base, allow_compiler_mismatch)
            if tree:
                return tree
            return cls._prepare_locked(release, base, allow_compiler_mismatch, say)

    @classmethod
    def _from_marker(cls, release: str, base: Path, allow_mismatch: bool) -> "SourceTree | None":
        """The tree described by a valid ready marker, or None.  The headers' ``.config``
        identity (mtime, size) stands for the installed headers version, so no dpkg-query is
        needed on this path; a compiler override must match the one it was prepared with."""
        try:
            marker = json.loads((base / MARKER).read_text())
            config = headers_dir(release) / ".config"
            stat = config.stat()
        except (OSError, ValueError, SourceError):
            return None
        if (
            marker.get("schema") != MARKER_SCHEMA
            or marker.get("release") != release
            or marker.get("headers_config") != [stat.st_mtime_ns, stat.st_size]
            or (marker.get("compiler_mismatch") and not allow_mismatch)
        ):
            return None
        root = base / marker["root"]
        if not (root / "Makefile").is_file():
            return None
        env = {**_clean_environ(), **marker["build_env"]}
        return cls(release, marker["version"], root, marker["make_args"], env)

    @classmethod
    def _prepare_locked(
        cls, release: str, base: Path, allow_mismatch: bool, say: Callable[[str], None]
    ) -> "SourceTree":
        headers = headers_dir(release)
        version = installed_version(release)
        _check_tools()
        kvars = parse_kernelvariables(_read_text(headers / ".kernelvariables"))
        arch = make_value_word(kvars.get("ARCH", "x86"))
        cc = make_value_word(kvars.get("CC", "gcc"))
        if kvars.get("KERNELRELEASE", release) != release:
            raise SourceError(
                f"{headers}/.kernelvariables names the release "
                f"{kvars['KERNELRELEASE']}, not {release}"
            )
        config_text = _read_text(headers / ".config")
        build_env = _build_env(release, version)
        env = {**_clean_environ(), **build_env}
        mismatch = _check_compiler(parse_config(config_text), cc, env, allow_mismatch, say)
        root = _ensure_unpacked(base, release, version, say)
        make_args = [f"ARCH={arch}", f"CC={cc}", f"KERNELRELEASE={release}", f"KCFLAGS={KCFLAGS}"]
        tree = cls(release, version, root, make_args, env)
        tree._configure(config_text, allow_mismatch or bool(mismatch), say)
        say("make modules_prepare (about a minute the first time)")
        tree._make(["modules_prepare"], "modules_prepare")
        tree._sync_generated_headers(headers, say)
        stat = (headers / ".config").stat()
        marker = {
            "schema": MARKER_SCHEMA,
            "release": release,
            "version": version,
            "root": root.name,
            "make_args": make_args,
            "build_env": build_env,
            "headers_config": [stat.st_mtime_ns, stat.st_size],
            "compiler_mismatch": mismatch,
        }
        _write_atomic(base / MARKER, json.dumps(marker, indent=1, sort_keys=True) + "\n")
        say(f"source tree ready: {root}")
        return tree

    def _configure(
        self, config_text: str, ignore_toolchain: bool, say: Callable[[str], None]
    ) -> None:
        """Install the kernel's .config and refuse if ``olddefconfig`` changes it: a changed
        config means this source (or toolchain) does not describe the shipped kernel.  The
        copy is skipped when equal, so a re-run keeps the mtimes kbuild compares."""
        config = self.root / ".config"
        if not config.is_file() or config.read_text(errors="replace") != config_text:
            config.write_text(config_text)
        say("make olddefconfig")
        self._make(["olddefconfig"], "olddefconfig")
        after = config.read_text(errors="replace")
        if after == config_text:
            return
        changes = config_diff(
            parse_config(config_text), parse_config(after), ignore_toolchain=ignore_toolchain
        )
        if changes:
            shown = "; ".join(changes[:5]) + (
                f"; and {len(changes) - 5} more" if len(changes) > 5 else ""
            )
            raise SourceError(
                f"make olddefconfig changed the kernel's configuration ({shown}): "
                f"this source or toolchain does not match {self.release}"
            )

    def _sync_generated_headers(self, headers: Path, say: Callable[[str], None]) -> None:
        """Make include/generated/{compile,utsversion,package,utsrelease}.h equal Debian's.
        With the right environment kbuild generates them equal already; utsversion.h is only
        generated when linking vmlinux, so it is copied."""
        for name in GENERATED_HEADERS:
            theirs, ours = (
                headers / "include/generated" / name,
                self.root / "include/generated" / name,
            )
            if not theirs.is_file():
                continue
            if ours.is_file() and ours.read_bytes() == theirs.read_bytes():
                continue
            state = "differs" if ours.is_file() else "missing"
            shutil.copyfile(theirs, ours)
            say(f"include/generated/{name}: {state}, copied from linux-headers-{self.release}")

    def _make(self, targets: list[str], what: str) -> None:
        argv = ["make", "-s", f"-j{os.cpu_count() or 1}", *self._make_args, *targets]
        result = _run(argv, self.root, self._env)
        if result.returncode != 0:
            raise SourceError(
                f"make {what} failed: {condense_errors(result.stderr + result.stdout)}"
            )

    # --- reading the tree -------------------------------------------------------------------

    def exists(self, path: str) -> bool:
        """Whether the tree-relative ``path`` exists in the pristine tree."""
        return (self.root / tree_path(path)).exists()

    def read_original(self, source: str) -> bytes:
        """The pristine bytes of the tree-relative file ``source``."""
        path = self.root / tree_path(source)
        try:
            return path.read_bytes()
        except OSError as e:
            raise SourceError(
                f"{source}: cannot read from the {self.release} source: {e.strerror}"
            ) from None

    @property
    def objtool_command(self) -> list[str] | None:
        """objtool as kbuild runs it on a module object of this kernel (absolute path, flags,
        ``--module``; append the object), from the last object compiled; None before any."""
        return list(self._objtool) if self._objtool else None

    # --- compiling --------------------------------------------------------------------------

    def _check_source(self, source: str) -> str:
        rel = tree_path(source)
        if not rel.endswith(".c"):
            raise SourceError(f"{source} is not a .c file: only C sources compile to objects")
        if not (self.root / rel).is_file():
            raise SourceError(
                f"{source} does not exist in the {self.release} source "
                f"(linux-source {self.version})"
            )
        return rel

    def _cmd_file(self, rel: str) -> Path:
        directory, name = os.path.split(rel)
        return self.root / directory / f".{name[:-2]}.o.cmd"

    def _is_built(self, rel: str) -> bool:
        """kbuild's object is current: the .o exists, its .cmd (written by fixdep after the
        compile and objtool succeeded) is no older, and the pristine .c never changes."""
        obj, cmd = self.root / (rel[:-2] + ".o"), self._cmd_file(rel)
        try:
            o_time, c_time = obj.stat().st_mtime_ns, cmd.stat().st_mtime_ns
            return c_time >= o_time >= (self.root / rel).stat().st_mtime_ns
        except OSError:
            return False

    def _probe(self, rel: str) -> dict[str, set[str]]:
        dirs = [
            d
            for d in _ancestors(os.path.dirname(rel))
            if d == "."
            or (self.root / d / "Makefile").is_file()
            or (self.root / d / "Kbuild").is_file()
        ]
        with tempfile.TemporaryDirectory(prefix="klpkit-probe-") as tmp:
            probe = Path(tmp) / "probe.mk"
            probe.write_text(_PROBE_MK)
            argv = [
                "make",
                "-s",
                *self._make_args,
                "-f",
                "Makefile",
                "-f",
                str(probe),
                f"KLPKIT_PROBE={probe}",
                f"KLPKIT_DIRS={' '.join(dirs)}",
                "klpkit-walk",
            ]
            result = _run(argv, self.root, self._env)
        if result.returncode != 0:
            raise SourceError(
                f"cannot ask kbuild what {os.path.dirname(rel)}/ builds: "
                f"{condense_errors(result.stderr + result.stdout)}"
            )
        return parse_probe(result.stdout)

    def compile_original(self, source: str) -> CompiledObject:
        """The pristine object of ``source`` built by kbuild itself (``make <dir>/<name>.o``,
        so per-directory flags apply and the ``.cmd`` file records the exact command), once;
        later calls return the object in the tree.  Under the release's lock (two makes in
        one tree would race on its prepare steps), kbuild is first asked whether this
        configuration builds the object at all."""
        start = time.monotonic()
        rel = self._check_source(source)
        obj = self.root / (rel[:-2] + ".o")
        if not self._is_built(rel):
            with debian._locked(f"source-{self.release}"):
                if not self._is_built(rel):
                    reason = unbuilt_reason(rel, self._probe(rel))
                    if reason:
                        raise SourceError(reason)
                    self._make([rel[:-2] + ".o"], rel[:-2] + ".o")
            if not self._is_built(rel):
                raise SourceError(f"make built no {rel[:-2]}.o with its .cmd file")
        self._remember_objtool(self._saved_command(rel))
        return CompiledObject(rel, obj, time.monotonic() - start)

    def _saved_command(self, rel: str) -> KbuildCommand:
        try:
            text = self._cmd_file(rel).read_text(errors="replace")
        except OSError as e:
            raise SourceError(f"cannot read kbuild's command for {rel}: {e.strerror}") from None
        return parse_cmd_file(text, rel[:-2] + ".o")

    def _remember_objtool(self, cmd: KbuildCommand) -> None:
        for post in cmd.post:
            flags = [a for a in post[1:] if not _same_path(a, cmd.target)]
            if "--module" not in flags:
                flags.append("--module")
            self._objtool = [str((self.root / post[0]).resolve()), *flags]

    def compile_patched(
        self,
        source: str,
        patched_text: bytes,
        workdir: Path,
        headers: dict[str, bytes] | None = None,
    ) -> CompiledObject:
        """Compile ``patched_text`` as ``source`` into ``workdir/<dir>/<name>.o`` by replaying
        kbuild's saved command for the original (see :func:`replay_commands`), objtool
        included.  ``headers`` (tree-relative path -> patched text) are written under
        ``workdir`` and found before the tree's copies.  Nothing is written into the cached
        tree, so a failing patch or an interrupted build leaves it pristine, and concurrent
        builds do not interfere."""
        rel = self._check_source(source)
        workdir = Path(os.path.abspath(workdir))
        base = self.root.parent.resolve()
        if workdir.resolve() == base or base in workdir.resolve().parents:
            raise SourceError(f"work directory {workdir} is inside the cached source tree")
        cmd = self._saved_command(self.compile_original(rel).source)
        copy = workdir / rel
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(patched_text.encode() if isinstance(patched_text, str) else patched_text)
        overlay = []
        for path, text in (headers or {}).items():
            hrel = tree_path(path)
            (workdir / hrel).parent.mkdir(parents=True, exist_ok=True)
            (workdir / hrel).write_bytes(text)
            overlay.append(hrel)
        out = workdir / cmd.target
        out.unlink(missing_ok=True)
        start = time.monotonic()
        for step, argv in enumerate(replay_commands(cmd, rel, workdir, tuple(overlay))):
            result = _run(argv, self.root, self._env)
            if result.returncode != 0:
                what = "does not compile" if step == 0 else "fails objtool"
                out.unlink(missing_ok=True)  # a half-processed object must not look built
                raise SourceError(
                    f"patched {rel} {what}: "
                    f"{condense_errors(result.stderr + result.stdout, strip=str(workdir))}"
                )
        return CompiledObject(rel, out, time.monotonic() - start)


# --- preparation steps ------------------------------------------------------------------------


def headers_dir(release: str) -> Path:
    """The installed headers of ``release``: the source of .config, .kernelvariables and the
    generated headers the tree must match."""
    path = Path("/usr/src") / f"linux-headers-{release}"
    if not (path / ".config").is_file():
        raise SourceError(
            f"linux-headers-{release} is not installed ({path}/.config missing; "
            f"run bash scripts/setup.sh)"
        )
    return path


def installed_version(release: str) -> str:
    """The Debian version of the installed headers: the kernel's own package version, to
    which linux-source is pinned (unpinned, apt would fetch a newer point release)."""
    result = _run(
        ["dpkg-query", "-W", "-f", "${Version}", f"linux-headers-{release}"],
        Path("/"),
        _clean_environ(),
    )
    version = result.stdout.strip()
    if result.returncode != 0 or not version:
        raise SourceError(
            f"linux-headers-{release} is not installed: dpkg-query: "
            f"{condense_errors(result.stderr)}"
        )
    return version


def changelog_date(release: str) -> str:
    """The newest entry's date of the headers package's changelog (Debian's build time)."""
    path = Path("/usr/share/doc") / f"linux-headers-{release}" / "changelog.Debian.gz"
    try:
        with gzip.open(path, "rt", errors="replace") as fh:
            head = "".join(line for _, line in zip(range(5000), fh, strict=False))
    except OSError as e:
        raise SourceError(f"cannot read the headers' changelog: {e}", path=path) from None
    return parse_changelog_date(head)


def _build_env(release: str, version: str) -> dict[str, str]:
    """What Debian's build sets so include/generated/{package,compile,utsversion}.h come out
    byte-equal to the shipped kernel's (their strings reach code via dump_stack and
    init/version).  Only these go into the ready marker, never the user's environment."""
    date = changelog_date(release)
    return {
        "DISTRIBUTION_OFFICIAL_BUILD": "1",
        "DISTRIBUTOR": "Debian",
        "DISTRIBUTION_VERSION": version,
        "KBUILD_BUILD_USER": "debian-kernel",
        "KBUILD_BUILD_HOST": "lists.debian.org",
        "KBUILD_BUILD_TIMESTAMP": date,
        "KBUILD_BUILD_VERSION_TIMESTAMP": version_timestamp("Debian", version, date),
    }


def _check_tools() -> None:
    missing = [tool for tool in REQUIRED_TOOLS if not shutil.which(tool)]
    if missing:
        raise SourceError(
            f"preparing the kernel source needs {', '.join(missing)}, "
            f"not installed ({INSTALL_HINT})"
        )


def _check_compiler(
    config: dict[str, str], cc: str, env: dict[str, str], allow: bool, say: Callable[[str], None]
) -> str | None:
    """Refuse a compiler other than the kernel's (before any download); with ``allow``,
    only report it.  Returns the mismatch text, or None."""
    expected = config_string(config, "CONFIG_CC_VERSION_TEXT")
    if expected is None:
        raise SourceError("the kernel's .config has no CONFIG_CC_VERSION_TEXT")
    if not shutil.which(cc):
        raise SourceError(
            f"{cc} not found: the kernel was built with {expected!r} (apt-get install {cc})"
        )
    result = _run([cc, "--version"], Path("/"), env)
    actual = (result.stdout.splitlines() or [""])[0]
    mismatch = compiler_mismatch(expected, actual, cc)
    if mismatch and not allow:
        raise SourceError(mismatch)
    if mismatch:
        say(f"warning: {mismatch}")
    return mismatch


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError as e:
        raise SourceError(f"cannot read {path}: {e.strerror}") from None


def _ensure_unpacked(base: Path, release: str, version: str, say: Callable[[str], None]) -> Path:
    """The unpacked tree of ``version``, fetching and unpacking it if absent or another
    version; the VERSION file is part of the atomically renamed directory."""
    try:
        current = (base / "VERSION").read_text().strip()
    except OSError:
        current = None
    roots = sorted(p.parent for p in base.glob("linux-source-*/Makefile"))
    if current == version and len(roots) == 1:
        return roots[0]
    package = f"linux-source-{'.'.join(version.split('.')[:2])}"
    if debian.find_deb(package, version) is None:
        say(f"downloading {package} {version}")
    deb = debian.fetch_deb(package, version)
    say(f"unpacking {package} {version} (1.3 GB)")

    def fill(tmp: Path) -> None:
        _unpack_source(deb, tmp)
        if len(list(tmp.glob("linux-source-*/Makefile"))) != 1:
            raise SourceError("package holds no single linux-source-* tree", path=deb)
        (tmp / "VERSION").write_text(version + "\n")

    debian._install_tree(base, fill)
    return next(p.parent for p in base.glob("linux-source-*/Makefile"))

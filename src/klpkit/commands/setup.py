"""``klpkit setup``: check (and with ``--install`` install) what klpkit's real-kernel work needs.

The package list is the one in ``scripts/setup.sh`` (a unit test keeps them in
sync); the checks are functional where that matters (``gcc -m32`` must actually
compile, busybox must be static), because a package being installed is not the
same as the tool working.
"""

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from klpkit import debian
from klpkit.errors import KlpkitError
from klpkit.output import print_json, print_table
from klpkit.vm.initramfs import is_static_elf


def packages(release: str) -> list[str]:
    """Exactly the packages scripts/setup.sh installs, in its order."""
    return [
        "elfutils",
        "binutils",
        "gcc",
        "make",
        "kmod",
        "gcc-s390x-linux-gnu",
        "gcc-powerpc64-linux-gnu",
        "binutils-powerpc-linux-gnu",
        "qemu-system-x86",
        "busybox-static",
        "cpio",
        "graphviz",
        f"linux-headers-{release}",
        "zstd",
        "python3",
        "python3-venv",
        "gcc-12",
        "flex",
        "bison",
        "bc",
        "dwarves",
        "libssl-dev",
        "libelf-dev",
        "xz-utils",
    ]


@dataclass
class Check:
    """One prerequisite; ``required=False`` ones are reported but do not fail the check."""

    name: str
    package: str
    ok: bool
    detail: str
    required: bool = True

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "package": self.package,
            "ok": self.ok,
            "required": self.required,
            "detail": self.detail,
        }


def _tool(name: str) -> tuple[bool, str]:
    path = shutil.which(name)
    return (True, path) if path else (False, "not on PATH")


def _busybox() -> tuple[bool, str]:
    bb = Path("/bin/busybox")
    if not bb.is_file():
        return False, "missing"
    if not is_static_elf(bb.read_bytes()):
        return False, "dynamically linked (the guest needs busybox-static)"
    return True, str(bb)


def _gcc_m32() -> tuple[bool, str]:
    """Compile a tiny file with ``-m32``: the 32-bit ELF test objects need multilib headers."""
    if not shutil.which("gcc"):
        return False, "gcc missing"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "t.c"
        src.write_text("#include <stdint.h>\nint32_t f(void) { return 1; }\n")
        r = subprocess.run(
            ["gcc", "-m32", "-c", str(src), "-o", str(Path(tmp) / "t.o")],
            capture_output=True,
            text=True,
        )
    if r.returncode:
        lines = r.stderr.strip().splitlines()
        errors = [line for line in lines if "error" in line] or lines
        return False, errors[-1] if errors else f"gcc -m32 failed ({r.returncode})"
    return True, "compiles"


def _headers(release: str) -> tuple[bool, str]:
    try:
        return True, str(debian.ensure_headers(release))
    except KlpkitError:
        return False, f"/usr/src/linux-headers-{release} missing"


def _image(release: str) -> tuple[bool, str]:
    marker = debian.release_dir(release) / "image" / "boot" / f"vmlinuz-{release}"
    return (
        (True, str(marker.parent.parent))
        if marker.is_file()
        else (False, "not cached (fetched on first use)")
    )


def run_checks(release: str) -> list[Check]:
    """Every prerequisite, with the package that provides it."""
    checks = [
        ("qemu-system-x86_64", "qemu-system-x86", _tool("qemu-system-x86_64")),
        ("/bin/busybox (static)", "busybox-static", _busybox()),
        ("cpio", "cpio", _tool("cpio")),
        ("eu-elflint", "elfutils", _tool("eu-elflint")),
        ("readelf", "binutils", _tool("readelf")),
        ("gcc", "gcc", _tool("gcc")),
        ("make", "make", _tool("make")),
        ("modinfo", "kmod", _tool("modinfo")),
        ("s390x-linux-gnu-gcc", "gcc-s390x-linux-gnu", _tool("s390x-linux-gnu-gcc")),
        ("powerpc-linux-gnu-as", "binutils-powerpc-linux-gnu", _tool("powerpc-linux-gnu-as")),
        ("dot", "graphviz", _tool("dot")),
        ("kernel headers", f"linux-headers-{release}", _headers(release)),
        ("gcc-12 (the kernel's compiler)", "gcc-12", _tool("gcc-12")),
        ("flex", "flex", _tool("flex")),
        ("bison", "bison", _tool("bison")),
        ("bc", "bc", _tool("bc")),
        ("pahole", "dwarves", _tool("pahole")),
        ("zstd (6.12's vmlinuz)", "zstd", _tool("zstd")),
    ]
    result = [Check(name, pkg, ok, detail) for name, pkg, (ok, detail) in checks]
    # Installed for the tests only (scripts/test.sh): it pulls its kernel image into /boot.
    result.append(
        Check(
            "kernel headers (6.12 line, tests)",
            f"linux-headers-{debian.RELEASE_612}",
            *_headers(debian.RELEASE_612),
            required=False,
        )
    )
    # Reported for information: not installed by setup.sh, fetched/used on demand.
    result.append(Check("gcc -m32", "gcc-multilib", *_gcc_m32(), required=False))
    result.append(
        Check(
            "kernel image (cache)",
            f"linux-image-{release}-unsigned",
            *_image(release),
            required=False,
        )
    )
    return result


def missing_packages(release: str) -> list[str]:
    """Packages of the list dpkg does not report as installed (what setup.sh would install)."""
    missing = []
    for pkg in packages(release):
        r = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True
        )
        if "install ok installed" not in r.stdout:
            missing.append(pkg)
    return missing


def install(pkgs: list[str]) -> None:
    """apt-get update + install, as setup.sh does (sudo when not root)."""
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs],
    ):
        r = subprocess.run(sudo + cmd, capture_output=True, text=True, env=env)
        if r.returncode:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise KlpkitError(f"{' '.join(cmd[:2])} failed: {last}")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "setup",
        help="check (or install) the tools klpkit's kernel work needs",
        description="Check (and with --install, install) what klpkit's real-kernel work needs.",
    )
    p.add_argument(
        "--release", default=debian.DEFAULT_RELEASE, help="kernel release (default %(default)s)"
    )
    p.add_argument(
        "--install",
        action="store_true",
        help="apt-get install the missing packages and pre-fetch the kernel image package",
    )
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    installed: list[str] = []
    if args.install:
        installed = missing_packages(args.release)
        if installed:
            install(installed)
        debian.ensure_image(args.release)
    checks = run_checks(args.release)
    ok = all(c.ok for c in checks if c.required)
    if args.json:
        print_json(
            {
                "release": args.release,
                "ok": ok,
                "installed": installed,
                "checks": [c.to_json() for c in checks],
            }
        )
    else:
        print_table(
            ["prerequisite", "ok", "package", "detail"],
            [
                (
                    c.name,
                    "yes" if c.ok else ("NO" if c.required else "no (optional)"),
                    c.package,
                    c.detail,
                )
                for c in checks
            ],
            title=f"klpkit setup ({args.release})",
        )
        if installed:
            print(f"installed: {' '.join(installed)}")
        if not ok:
            print("missing prerequisites: run `klpkit setup --install` or `bash scripts/setup.sh`")
    return 0 if ok else 1

#!/usr/bin/env bash
# klpkit set-up on Debian bookworm: installs every system package the tool and its tests
# use (idempotent, quick when all is there), then klpkit itself with its test extras into
# the project's own virtual environment, .venv/ (Debian's python3 refuses a system-wide
# pip install, PEP 668).  Afterwards: `source .venv/bin/activate` (or put .venv/bin on
# PATH) to have `klpkit` and `klp-convert` as commands.
# Big downloads (Debian kernel packages) are fetched on demand by klpkit and cached under
# ${KLPKIT_CACHE:-~/.cache/klpkit}.
set -euo pipefail
cd "$(dirname "$0")/.."
REL=${KLPKIT_KREL:-6.1.0-47-amd64}
pkgs=(
  elfutils binutils gcc make kmod      # readelf, eu-elflint, modinfo; building modules
  gcc-s390x-linux-gnu gcc-powerpc64-linux-gnu  # big-endian ELF64 test objects
  binutils-powerpc-linux-gnu            # big-endian ELF32 test objects (assembled)
  qemu-system-x86 busybox-static cpio   # klpkit vm
  graphviz                              # klpkit deps --graph (PNG/SVG)
  "linux-headers-$REL"                  # building test modules against the target kernel
  zstd                                  # 6.12's vmlinuz is zstd (Python 3.11 has no zstd)
  python3 python3-venv                  # klpkit's own virtual environment (.venv)
  gcc-12 flex bison bc dwarves libssl-dev libelf-dev xz-utils  # klpkit build: the kernel source tree
)
# What only the tests need, installed when scripts/test.sh asks (KLPKIT_SETUP_TESTS=1):
# the 6.12 headers depend on their kernel image package, which would put a 6.12 kernel
# into /boot of a user's machine.
if [ "${KLPKIT_SETUP_TESTS:-0}" = 1 ]; then
  pkgs+=(linux-headers-6.12.117+deb12-amd64)   # test modules for bookworm's 6.12 line
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
venv=${KLPKIT_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"

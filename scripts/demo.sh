#!/usr/bin/env bash
# The main job on the bundled example: the seed's source patch
# (examples/patches/cdrom-media-changed.patch: media_changed() in drivers/cdrom/cdrom.c
# prints the address of cdrom_check_events) becomes a livepatch for the Debian 6.1.0-47
# kernel with `klpkit build` -- only cdrom.c is compiled, original and patched, with the
# kernel's exact flags; no kernel build -- and is proven in the real kernel under qemu:
# loaded before and after cdrom (--verify), then ioctl(CDROM_MEDIA_CHANGED) on an
# emulated drive prints the address /proc/kallsyms gives for cdrom_check_events, and
# cdrom unloads while the livepatch is loaded (scripts/scenario4.sh).
# The first run downloads and prepares the release's source tree (~2 min), later runs
# reuse it.  KLPKIT_DEMO_VM=0 stops before booting.
set -euo pipefail
# klpkit from the project's virtual environment (scripts/setup.sh), when there is one
venv="$(cd "$(dirname "$0")/.." && pwd)/${KLPKIT_VENV:-.venv}"
[ -x "$venv/bin/klpkit" ] && export PATH="$venv/bin:$PATH"
cd "$(dirname "$0")/.."
REL=${KLPKIT_KREL:-6.1.0-47-amd64}
out=${KLPKIT_DEMO_DIR:-build/demo}
mkdir -p "$out"
started=$(mktemp)      # downloads newer than this are this run's
ko="$out/livepatch-cdrom-media-changed.ko"
verify=--verify
[ "${KLPKIT_DEMO_VM:-1}" != 0 ] || verify=

echo "== klpkit build examples/patches/cdrom-media-changed.patch --release $REL $verify"
klpkit build examples/patches/cdrom-media-changed.patch --release "$REL" -o "$ko" $verify

echo "== the livepatch's relocations to what stays in cdrom.ko"
klpkit inspect "$ko" | sed -n '/^Livepatch relocation sections/,/^Modinfo/p'
echo "   depends: '$(modinfo -F depends "$ko")' (no implicit dependency on cdrom)"

if [ -n "$verify" ]; then
  echo "== the seed's proof: ioctl(CDROM_MEDIA_CHANGED) on an emulated drive (qemu)"
  bash scripts/scenario4.sh "$ko"
fi

debs="${KLPKIT_CACHE:-$HOME/.cache/klpkit}/debs"
fetched=$(find "$debs" -name '*.deb' -newer "$started" 2>/dev/null || true)
echo "== downloaded by this run (image, source, no -dbg package):"
if [ -n "$fetched" ]; then
  ls -l $fetched | awk '{ printf "   %6.1f MB  %s\n", $5 / 1e6, $9; t += $5 } END { printf "   %6.1f MB  in all\n", t / 1e6 }'
else
  echo "   nothing: everything was cached"
fi
rm -f "$started"

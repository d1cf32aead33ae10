#!/usr/bin/env bash
# The main job on the bundled example (examples/cdrom, the seed's case B):
#   build the cdrom livepatch against the Debian 6.1.0-47 headers, build the kernel's
#   symbol database, convert the livepatch, show what changed, classify its
#   dependencies, check it against the kernel's rules, then load it into the real
#   kernel under qemu (set KLPKIT_DEMO_VM=0 to stop before booting).
set -euo pipefail
cd "$(dirname "$0")/.."
REL=${KLPKIT_KREL:-6.1.0-47-amd64}
out=${KLPKIT_DEMO_DIR:-build/demo}
mkdir -p "$out/src"
cp examples/cdrom/lp_cdrom.c examples/cdrom/Kbuild "$out/src/"

echo "== build the livepatch against linux-headers-$REL (KBUILD_MODPOST_WARN=1)"
make -s -C "/usr/src/linux-headers-$REL" M="$(cd "$out/src" && pwd)" KBUILD_MODPOST_WARN=1 \
  modules 2>&1 | grep -v "^WARNING: modpost:" || true
modinfo -F depends "$out/src/lp_cdrom.ko" | sed 's/^/   unconverted depends: /'

echo "== symbol database of $REL (fetched and cached on first use)"
db=$(python3 -c "from klpkit.symbols.build import default_db_path; print(default_db_path('$REL'))" 2>/dev/null \
     || echo "$HOME/.cache/klpkit/symbols/$REL.sqlite")
# (re)build when missing or unusable, e.g. written by an older klpkit's schema
klpkit symbols info --db "$db" >/dev/null 2>&1 || klpkit symbols build --debian "$REL" --db "$db"

echo "== convert"
klpkit convert "$out/src/lp_cdrom.ko" -o "$out/lp_cdrom.ko" --symbols "$db"

echo "== the converted module"
klpkit inspect "$out/lp_cdrom.ko" | sed -n '/^Livepatch relocation sections/,/^Modinfo/p'
echo "   depends after conversion: '$(modinfo -F depends "$out/lp_cdrom.ko")'"

echo "== dependencies (graph: $out/cdrom-deps.png)"
klpkit deps "$out/lp_cdrom.ko" --symbols "$db" --graph "$out/cdrom-deps.png"

echo "== check against the kernel's rules"
klpkit check "$out/lp_cdrom.ko" --symbols "$db" || true

if [ "${KLPKIT_DEMO_VM:-1}" != 0 ] && [ -f scripts/scenario4.sh ]; then
  echo "== load it into the real kernel under qemu (scenario 4)"
  bash scripts/scenario4.sh
fi

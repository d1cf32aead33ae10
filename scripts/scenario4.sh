#!/usr/bin/env bash
# Scenario 4, the seed's case, in one command: build examples/cdrom against the Debian
# headers, convert it (building the symbol database first if needed), boot Debian
# 6.1.0-47-amd64 under qemu with an emulated CD-ROM, load the livepatch, then the cdrom
# stack, call ioctl(CDROM_MEDIA_CHANGED) on /dev/sr0, and compare the address the
# livepatch prints with cdrom_check_events in the guest's /proc/kallsyms.
# With an argument, the livepatch given (e.g. one `klpkit build` made from the seed's
# patch) is proven instead of the hand-written example.
# Needs `klpkit setup --install` once (qemu, busybox-static, headers).  Exit 0 = PASS.
set -euo pipefail
# klpkit from the project's virtual environment (scripts/setup.sh), when there is one
venv="$(cd "$(dirname "$0")/.." && pwd)/${KLPKIT_VENV:-.venv}"
[ -x "$venv/bin/klpkit" ] && export PATH="$venv/bin:$PATH"
repo=$(cd "$(dirname "$0")/.." && pwd)
rel=6.1.0-47-amd64
work=$(mktemp -d "${TMPDIR:-/tmp}/klpkit-scenario4.XXXXXX")
py() { python3 -c "from klpkit import debian; from klpkit.symbols import default_db_path; print($1)"; }

if [ $# -ge 1 ]; then
  cp "$1" "$work/lp.klp.ko"
else
  cp "$repo/examples/cdrom/Kbuild" "$repo/examples/cdrom/lp_cdrom.c" "$work/"
  make -s -C "$(py 'debian.ensure_headers()')" M="$work" KBUILD_MODPOST_WARN=1 modules
  db=$(py "default_db_path('$rel')")
  klpkit symbols info --db "$db" >/dev/null 2>&1 || klpkit symbols build --debian "$rel" --db "$db"
  klpkit convert "$work/lp_cdrom.ko" -o "$work/lp.klp.ko" --symbols "$db"
fi
lp=$(modinfo -F name "$work/lp.klp.ko")
gcc -static -O2 -o "$work/cdrom_ioctl" "$repo/tests/e2e/modules/cdrom_ioctl/cdrom_ioctl.c"

load_chain=()
for m in scsi_common scsi_mod libata ata_piix cdrom sr_mod; do load_chain+=(--load "$m"); done
klpkit vm --release "$rel" --qemu-arg '-cdrom /dev/null' --program "$work/cdrom_ioctl" --keep-going \
    --load "$work/lp.klp.ko" --step "wait-transition $lp" "${load_chain[@]}" \
    --run 'i=0; while [ ! -b /dev/sr0 ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done' \
    --run 'cdrom_ioctl /dev/sr0' --run 'grep -w cdrom_check_events /proc/kallsyms' \
    --run 'rmmod sr_mod cdrom' --step "disable $lp" --step "rmmod $lp" \
    --json > "$work/result.json" || true

python3 - "$work/result.json" "$lp" <<'PY'
import json, re, sys
doc = json.load(open(sys.argv[1]))
steps = {s["step"]: s for s in doc["steps"]}
ioctl, ksym = steps["run cdrom_ioctl /dev/sr0"], steps["run grep -w cdrom_check_events /proc/kallsyms"]
rm = steps["run rmmod sr_mod cdrom"]
lp = sys.argv[2]
lines = [l for s in doc["steps"] for l in s["dmesg"] if lp in l or "cdrom:" in l]
print("\n".join(["dmesg:"] + ["  " + l for l in lines]))
# the hand-written example prints with its own module name, a built livepatch with
# cdrom.c's pr_fmt
printed = {m[1] for l in ioctl["dmesg"] if (m := re.search(r"(?:lp_)?cdrom: ([0-9a-f]{16})$", l))}
kall = {f[0] for f in map(str.split, ksym["output"]) if f[2:3] == ["cdrom_check_events"]}
print(f"ioctl: {ioctl['output']}\nprinted by the livepatch: {sorted(printed)}\n"
      f"/proc/kallsyms cdrom_check_events: {sorted(kall)}\n"
      f"rmmod sr_mod cdrom with the livepatch loaded: {rm['status']}\n"
      f"boot-to-poweroff: {doc['boot_seconds']} s")
ok = doc["ok"] and printed and printed == kall and rm["status"] == "ok"
print("PASS: the livepatch ran and printed cdrom_check_events' address" if ok else
      f"FAIL: {doc['failure']}")
sys.exit(0 if ok else 1)
PY

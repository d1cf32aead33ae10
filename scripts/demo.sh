#!/usr/bin/env bash
# The main job on the bundled example (grows with the converter): inspect a real
# Debian module from the cached kernel package.
set -euo pipefail
cd "$(dirname "$0")/.."
img=$(python3 -c 'from klpkit.debian import ensure_image; print(ensure_image())')
klpkit inspect "$img/lib/modules/6.1.0-47-amd64/kernel/drivers/cdrom/cdrom.ko"

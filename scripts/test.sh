#!/usr/bin/env bash
# The one test command: makes sure the prerequisites are installed (scripts/setup.sh,
# idempotent), lints, then runs every test — unit, real Debian kernel data, and qemu —
# on all cores. With CI=true a missing prerequisite fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m ruff check src tests bench
exec python3 -m pytest -q -n "${KLPKIT_TEST_JOBS:-auto}" --dist loadgroup "$@"

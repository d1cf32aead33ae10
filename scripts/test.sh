#!/usr/bin/env bash
# The one test command: makes sure the prerequisites are installed (scripts/setup.sh,
# idempotent), lints, then runs every test — unit, real Debian kernel data, and qemu —
# on all cores. With CI=true a missing prerequisite fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
KLPKIT_SETUP_TESTS=1 bash scripts/setup.sh
# klpkit and its test tools live in the project's virtual environment
export PATH="$PWD/${KLPKIT_VENV:-.venv}/bin:$PATH"
# the guardrails: lint (incl. blind excepts, complexity, stale noqa), format, types
python -m ruff check src tests bench
python -m ruff format --check src tests bench
python -m mypy
exec python -m pytest -q -n "${KLPKIT_TEST_JOBS:-auto}" --dist loadgroup "$@"

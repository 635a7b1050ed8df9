#!/usr/bin/env bash
# The README's main job: set-up, then `cosine` vs `leap_cosine` on the packaged MiniLM +
# Rotten Tomatoes. Extra flags go to scripts/compare_leap.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" scripts/compare_leap.py "$@"

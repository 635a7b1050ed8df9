#!/usr/bin/env bash
# Installs hf-leap with its test and example extras on a fresh machine.
# torch goes first and pinned: an unpinned torch requirement would pull a multi-GB CUDA
# build. Override with TORCH_SPEC, e.g. TORCH_SPEC="torch==2.14.1" bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install --quiet --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[test]"

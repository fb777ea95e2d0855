#!/usr/bin/env bash
# Runs the whole test suite of the build made by scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${GLQ_PRESET:-release}
ctest --preset "$PRESET" -j "$(nproc)" --timeout 1200

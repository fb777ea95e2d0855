#!/usr/bin/env bash
# One command on a fresh Debian 12 machine: install dependencies, build GLQ (CPU release, plus
# the CUDA backend with GLQ_CUDA=1), and install `glq` to ~/.local/bin.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
PRESET=release
if [ "${GLQ_CUDA:-0}" = 1 ]; then PRESET=cuda; fi
cmake --preset "$PRESET"
cmake --build --preset "$PRESET" -j "$(nproc)"
cmake --install "build/$PRESET" --prefix "${GLQ_PREFIX:-$HOME/.local}"
echo "glq installed to ${GLQ_PREFIX:-$HOME/.local}/bin/glq"

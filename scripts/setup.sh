#!/usr/bin/env bash
# One command on a fresh Debian 12 machine: install dependencies, build GLQ (CPU release, plus
# the CUDA backend with GLQ_CUDA=1), and install `glq` (to /usr/local/bin as root, else ~/.local/bin; GLQ_PREFIX overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
PRESET=release
if [ "${GLQ_CUDA:-0}" = 1 ]; then PRESET=cuda; fi
cmake --preset "$PRESET"
cmake --build --preset "$PRESET" -j "$(nproc)"
# root installs system-wide; others into ~/.local. GLQ_PREFIX overrides both.
if [ -z "${GLQ_PREFIX:-}" ]; then
  if [ "$(id -u)" = 0 ]; then GLQ_PREFIX=/usr/local; else GLQ_PREFIX=$HOME/.local; fi
fi
cmake --install "build/$PRESET" --prefix "$GLQ_PREFIX"
echo "glq installed to $GLQ_PREFIX/bin/glq"
case ":$PATH:" in
  *":$GLQ_PREFIX/bin:"*) ;;
  *) echo "note: $GLQ_PREFIX/bin is not on PATH; add it: export PATH=\"$GLQ_PREFIX/bin:\$PATH\"" ;;
esac

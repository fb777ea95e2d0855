#!/usr/bin/env bash
# Installs the Debian packages GLQ builds against (run as root, or with sudo available).
set -euo pipefail
PKGS=(build-essential cmake ninja-build pkg-config git
      nlohmann-json3-dev libcli11-dev libfmt-dev libopenblas-dev liblapacke-dev
      libcpp-httplib-dev libpcre2-dev libgtest-dev libgmock-dev libbenchmark-dev pybind11-dev
      python3 python3-pip python3-venv python3-dev curl unzip)
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

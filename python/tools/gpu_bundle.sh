#!/usr/bin/env bash
# The Python package with the CUDA backend, for a GPU machine that cannot build it (no PyPI, no
# Debian packages): built here, run there.
#
#   python/tools/gpu_bundle.sh bundle [DIR]   (here) builds a CUDA wheel for the GPU machine's
#                                             Python (GLQ_GPU_PYTHON, default pyenv's 3.12) and
#                                             copies the shared libraries it needs into DIR/lib
#                                             (DIR default build/gpupy; about 40 MB)
#   python/tools/gpu_bundle.sh run [DIR] [-- check args]
#                                             (there) installs the wheel into /tmp/glq-site, runs
#                                             the PyTorch tests (CUDA cases included), then
#                                             python/tools/gpu_torch_check.py with the args given
#
# The GPU machine must bring cuBLAS 13 (PyTorch's nvidia-cublas wheel or the CUDA toolkit), and
# PyTorch and Transformers for the tests and the check. Environment: GLQ_CUDA_ARCHS (default 90a).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODE=${1:-}
DIR=${2:-$ROOT/build/gpupy}
[ $# -ge 2 ] && shift 2 || shift $#
[ "${1:-}" = "--" ] && shift

case "$MODE" in
  bundle)
    PY=${GLQ_GPU_PYTHON:-$HOME/.pyenv/versions/3.12.1/bin/python}
    rm -rf "$DIR" && mkdir -p "$DIR/lib"
    cd "$ROOT"
    "$PY" -m pip wheel -q --no-deps -w "$DIR" \
      --config-settings=build-dir=build/py-wheel-cuda \
      --config-settings=cmake.define.GLQ_CUDA=ON \
      --config-settings=cmake.define.CMAKE_CUDA_ARCHITECTURES="${GLQ_CUDA_ARCHS:-90a}" .
    tmp=$(mktemp -d)
    (cd "$tmp" && python3 -m zipfile -e "$DIR"/glq-*.whl .)
    # Every library the module needs that a bare machine lacks (libc, libstdc++, cuBLAS excepted).
    ldd "$tmp"/glq/_glq*.so | awk '/=>/ {print $3}' | sort -u |
      grep -v -E 'libc\.so|libm\.so|libstdc\+\+|libgcc_s|libpthread|libdl\.so|librt\.so|ld-linux|libcublas' |
      while read -r lib; do cp -L "$lib" "$DIR/lib/"; done
    rm -rf "$tmp"
    # pytest and what it needs (pure-Python wheels), for a machine whose Python lacks it.
    "$PY" -m pip download -q --only-binary=:all: -d "$DIR/wheels" pytest
    du -sh "$DIR"
    ;;
  run)
    cublas=""
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
      $(python3 -c 'import nvidia.cublas, os; print(os.path.join(os.path.dirname(nvidia.cublas.__file__), "lib"))' 2>/dev/null); do
      if [ -e "$d/libcublas.so.13" ]; then cublas=$d; break; fi
    done
    [ -z "$cublas" ] && echo "libcublas.so.13 not found" && exit 1
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/glq-site "$DIR"/glq-*.whl
    if ! python3 -c "import pytest" 2>/dev/null && [ -d "$DIR/wheels" ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/glq-site "$DIR"/wheels/*.whl
    fi
    export PYTHONPATH=/tmp/glq-site:${PYTHONPATH:-} LD_LIBRARY_PATH="$DIR/lib:$cublas:${LD_LIBRARY_PATH:-}"
    python3 -c "import glq, torch; print('glq', glq.__version__, 'cuda', glq.has_cuda, 'devices', glq._glq.cuda_device_count(), 'torch', torch.__version__)"
    rc=0
    if python3 -c "import pytest" 2>/dev/null; then  # PYTHONPATH includes /tmp/glq-site
      (cd /tmp && python3 -m pytest -p no:cacheprovider -q "$ROOT/python/tests/test_torch.py") || rc=$?
    else
      echo "pytest is not installed here: carry its wheel (docs/python.md) to run the tests"
    fi
    if [ $# -gt 0 ]; then python3 "$ROOT/python/tools/gpu_torch_check.py" "$@" || rc=$?; fi
    exit $rc
    ;;
  *) echo "usage: $0 bundle [DIR] | run [DIR] [-- gpu_torch_check.py args]" && exit 2 ;;
esac

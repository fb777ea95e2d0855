#!/usr/bin/env bash
# Builds and installs the Python package into a virtual environment (build/py-venv), then runs
# its tests with pytest. The PyTorch tests skip there (PyPI's torch wheel brings gigabytes of CUDA
# libraries); when a Python with torch and transformers is given in GLQ_TORCH_PYTHON (default
# /opt/refenv/bin/python, where present), the same wheel is also tested with it.
#   bash python/run_tests.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=build/py-venv
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}

if [ ! -x "$VENV/bin/python" ]; then "$PY" -m venv "$VENV"; fi
"$VENV/bin/python" -m pip install -q numpy pytest
echo "== Python package: building the wheel (scikit-build-core, build/py-wheel) =="
rm -rf build/py-dist
"$VENV/bin/python" -m pip wheel -q --no-deps -w build/py-dist .
"$VENV/bin/python" -m pip install -q --force-reinstall --no-deps build/py-dist/glq-*.whl

# pytest exits 5 when it collected no test: for this suite that is a failure, never a pass.
run_pytest() {
  local rc=0
  "$@" || rc=$?
  if [ "$rc" = 5 ]; then
    echo "python tests: pytest collected no tests" >&2
    return 1
  fi
  return "$rc"
}

echo "== Python tests =="
# Run from outside the source tree so that `import glq` finds the installed package.
(cd build && run_pytest "../$VENV/bin/python" -m pytest -p no:cacheprovider -q ../python/tests "$@")

TORCH_PY=${GLQ_TORCH_PYTHON:-/opt/refenv/bin/python}
if [ -x "$TORCH_PY" ] && "$TORCH_PY" -c "import torch" >/dev/null 2>&1; then
  same=$("$TORCH_PY" -c "import sys; print(sys.version_info[:2])")
  ours=$("$VENV/bin/python" -c "import sys; print(sys.version_info[:2])")
  if [ "$same" = "$ours" ]; then
    echo "== Python tests with PyTorch ($TORCH_PY) =="
    rm -rf build/py-site
    "$VENV/bin/python" -m pip install -q --no-deps --target build/py-site build/py-dist/glq-*.whl
    if ! "$TORCH_PY" -c "import pytest" >/dev/null 2>&1; then
      "$VENV/bin/python" -m pip install -q --target build/py-site pytest
    fi
    (cd build && PYTHONPATH="$PWD/py-site" run_pytest "$TORCH_PY" -m pytest -p no:cacheprovider -q \
       ../python/tests/test_torch.py "$@")
  else
    echo "python tests: $TORCH_PY is Python $same, the package was built for $ours; PyTorch tests skipped"
  fi
else
  echo "python tests: no Python with torch (GLQ_TORCH_PYTHON); the PyTorch tests were skipped"
fi

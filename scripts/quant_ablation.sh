#!/usr/bin/env bash
# What each step of `glq quantize` buys: quantizes MODEL at each width with the steps turned on
# one after another, measures every checkpoint's perplexity (and the unquantized model's), and
# prints a table last.
#
#   scripts/quant_ablation.sh MODEL CALIB TEXT OUTDIR
#
# Steps (each row adds to the one before it):
#   rtn       round to nearest, no randomized Hadamard transform, no LDLQ
#   rht       round to nearest after the randomized Hadamard transform
#   ldlq      RHT + block LDLQ toward the plain target W (GPTQ-style)
#   defaults  every step of the defaults (true-sequential Hessians, asymmetric and residual
#             targets below 4 bits, scale search and refit, list decoding from 3 bits)
# The first three turn off every step of the defaults besides the two they name.
#
# Environment: GLQ (default glq), BITS (default "2 3 4"), STEPS (default "rtn rht ldlq defaults"),
# DEVICE (cpu or cuda, for the perplexity; default cpu), TOKENS (default 100000), CTX (default
# 1024), THREADS (default: all cores). Every quantize report and perplexity is kept in OUTDIR
# as JSON; a checkpoint already in OUTDIR is measured again, not remade.
set -euo pipefail

[ $# -eq 4 ] || { sed -n '2,19p' "$0" >&2; exit 2; }
MODEL=$1 CALIB=$2 TEXT=$3 OUTDIR=$4
GLQ=${GLQ:-glq}
DEVICE=${DEVICE:-cpu}
TOKENS=${TOKENS:-100000}
CTX=${CTX:-1024}
THREADS=${THREADS:-$(nproc)}
PLAIN="--no-true-sequential --asym 0 --residual-target 0 --no-refit-scales --scale-search 1 --list-decode 1"
for f in "$MODEL" "$CALIB" "$TEXT"; do [ -e "$f" ] || { echo "quant_ablation: $f does not exist" >&2; exit 1; }; done
mkdir -p "$OUTDIR"

step_flags() {
  case $1 in
    # Without LDLQ no step reads the Hessians (the scales are RMS-based, the scale search is off):
    # the calibration only feeds the report's proxy losses, so four windows do.
    rtn) echo "--no-rht --no-ldlq $PLAIN --calib-seqs 4" ;;
    rht) echo "--no-ldlq $PLAIN --calib-seqs 4" ;;
    ldlq) echo "$PLAIN" ;;
    defaults) echo "" ;;
    *) echo "quant_ablation: unknown step '$1' (rtn, rht, ldlq, defaults)" >&2; exit 2 ;;
  esac
}

perplexity() {  # perplexity CHECKPOINT NAME
  GLQ_THREADS=$THREADS "$GLQ" perplexity "$1" --text "$TEXT" --ctx "$CTX" --max-tokens "$TOKENS" \
    --device "$DEVICE" --json >"$OUTDIR/$2.ppl.json" 2>"$OUTDIR/$2.ppl.log"
}

[ -f "$OUTDIR/reference.ppl.json" ] || perplexity "$MODEL" reference
for b in ${BITS:-2 3 4}; do
  for s in ${STEPS:-rtn rht ldlq defaults}; do
    name=${b}b-$s
    flags=$(step_flags "$s")
    if [ ! -f "$OUTDIR/$name/config.json" ]; then
      # shellcheck disable=SC2086
      "$GLQ" quantize "$MODEL" --bits "$b" --calib "$CALIB" --threads "$THREADS" $flags \
        -o "$OUTDIR/$name" --json >"$OUTDIR/$name.quant.json" 2>"$OUTDIR/$name.quant.log"
    fi
    perplexity "$OUTDIR/$name" "$name"
  done
done

python3 - "$OUTDIR" "${BITS:-2 3 4}" "${STEPS:-rtn rht ldlq defaults}" <<'PY'
import json, os, sys
out, bits, steps = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
ref = json.load(open(os.path.join(out, "reference.ppl.json")))
print(f"reference: ppl {ref['ppl']:.4f} over {ref['tokens']} tokens")
print(f"{'bits':>4} {'step':<9} {'bpw':>6} {'ppl':>12} {'x ref':>8} {'quantize s':>10}")
for b in bits:
    for s in steps:
        name = f"{b}b-{s}"
        q = json.load(open(os.path.join(out, name + ".quant.json")))
        p = json.load(open(os.path.join(out, name + ".ppl.json")))
        print(f"{b:>4} {s:<9} {q['linear_bpw']:>6.3f} {p['ppl']:>12.4f} {p['ppl'] / ref['ppl']:>8.3f} {q['seconds']:>10.1f}")
PY

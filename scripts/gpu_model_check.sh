#!/usr/bin/env bash
# A real model on the GPU engine against the CPU engine, and glq serve --device cuda under load.
#
#   scripts/gpu_model_check.sh pack CHECKPOINT OUTDIR [TEXT]
#       (on the build machine, after scripts/gpu_check.sh bundle BUNDLE) the CPU references of
#       CHECKPOINT: logits of a fixed prompt (glq logits --device cpu) and perplexity of the
#       first 20,480 tokens of TEXT (default /work/shared/data/text/brown-dev.txt) at ctx 1024;
#       then the bundle ($BUNDLE, default .gpubundle) and the checkpoint as gzip'd tarballs cut
#       into OUTDIR/a and OUTDIR/b, each under the 64 MB that may travel with one call.
#   scripts/gpu_model_check.sh run A B
#       (on the GPU machine) reassembles them, runs the CUDA tests, compares the GPU logits with
#       the CPU's (relative error bar 2e-2), the perplexity (bar 0.5%), measures decode speed
#       (glq bench model MODEL --device cuda, batch 1 and 8), and runs glq serve --device cuda
#       with tools/loadtest.py on loopback (1 and 8 concurrent streams). Prints a table last;
#       logs and JSON go to $OUT (default ./gpu-model-out).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:-}
PROMPT="The history of the printing press begins in the fifteenth century, when Johannes Gutenberg of Mainz combined movable metal type, oil-based ink and a wooden screw press into a system that could produce books quickly."
PPL_TOKENS=${PPL_TOKENS:-20480}

pack() {
  local ckpt=$1 out=$2 text=${3:-/work/shared/data/text/brown-dev.txt}
  local bundle=${BUNDLE:-$ROOT/.gpubundle} glq=${GLQ:-$ROOT/.gpubundle/glq}
  rm -rf "$out" && mkdir -p "$out/a" "$out/b" "$out/tmp"
  LD_LIBRARY_PATH="$bundle/lib" "$glq" logits "$ckpt" -p "$PROMPT" --device cpu -o "$out/b/ref_logits.bin" --json || exit 1
  if [ -n "${REF_PPL:-}" ]; then cp "$REF_PPL" "$out/b/ref_ppl.json"; else
    LD_LIBRARY_PATH="$bundle/lib" "$glq" perplexity "$ckpt" --text "$text" --ctx 1024 --max-tokens "$PPL_TOKENS" --json \
      >"$out/b/ref_ppl.json" || exit 1
  fi
  cp "$text" "$out/b/text.txt"
  (cd "$bundle" && tar czf "$out/a/bundle.tgz" .)
  (cd "$(dirname "$ckpt")" && tar czf "$out/tmp/model.tgz" "$(basename "$ckpt")")
  local room=$(( 60000000 - $(stat -c %s "$out/a/bundle.tgz") ))
  head -c "$room" "$out/tmp/model.tgz" >"$out/a/model.part0"
  tail -c +$((room + 1)) "$out/tmp/model.tgz" >"$out/b/model.part1"
  rm -rf "$out/tmp"
  du -sh "$out/a" "$out/b"
}

run() {
  local A=$1 B=$2
  local OUT=${OUT:-$ROOT/gpu-model-out} W=/tmp/glq-model-check
  mkdir -p "$OUT" "$W/bundle"
  tar xzf "$A/bundle.tgz" -C "$W/bundle" || exit 1
  cat "$A/model.part0" "$B/model.part1" | tar xzf - -C "$W" || exit 1
  local MODEL
  MODEL=$(ls -d "$W"/*/ | grep -v /bundle/ | head -1)
  MODEL=${MODEL%/}
  local CUBLAS_DIR
  CUBLAS_DIR=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(os.path.dirname(nvidia.cublas.__file__), "lib"))' 2>/dev/null)
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do [ -e "$d/libcublas.so.13" ] && CUBLAS_DIR=$d; done
  export LD_LIBRARY_PATH="$W/bundle/lib:$CUBLAS_DIR:${LD_LIBRARY_PATH:-}"
  local G="$W/bundle/glq" T="timeout ${GLQ_STEP_TIMEOUT:-200}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
  if [ "${SKIP_TESTS:-0}" != 1 ]; then
    echo "== CUDA tests"
    $T "$W/bundle/glq_test_cuda" --gtest_brief=1 >"$OUT/tests.log" 2>&1
    echo "tests rc=$?"; grep -E "FAILED|PASSED|error" "$OUT/tests.log" | head -20
  fi
  echo "== logits against the CPU"
  $T "$G" logits "$MODEL" -p "$PROMPT" --device cuda --compare "$B/ref_logits.bin" --json >"$OUT/logits.json" 2>"$OUT/logits.log"
  tail -2 "$OUT/logits.log"
  echo "== perplexity"
  $T "$G" perplexity "$MODEL" --text "$B/text.txt" --ctx 1024 --max-tokens "$PPL_TOKENS" --device cuda --json \
    >"$OUT/ppl.json" 2>"$OUT/ppl.log"
  tail -1 "$OUT/ppl.log"
  if [ -n "${PPL_LONG:-}" ]; then
    $T "$G" perplexity "$MODEL" --text "$B/text.txt" --ctx 1024 --max-tokens "$PPL_LONG" --device cuda --json \
      >"$OUT/ppl_long.json" 2>"$OUT/ppl_long.log"; tail -1 "$OUT/ppl_long.log"
  fi
  echo "== decode"
  : >"$OUT/bench.jsonl"
  for b in 1 8; do
    $T "$G" bench model "$MODEL" --device cuda --batch $b --ctx 512 --decode-tokens 128 --prompt-tokens 512 --json \
      >>"$OUT/bench.jsonl" 2>>"$OUT/bench.log"
  done
  tail -2 "$OUT/bench.log"
  $T "$G" run "$MODEL" -p "$PROMPT" -n 128 --temp 0 --ignore-eos --device cuda >"$OUT/run.txt" 2>"$OUT/run.log"
  tail -1 "$OUT/run.log"
  printf 'What is the capital of France?\nAnd of Italy?\n/exit\n' |
    $T "$G" chat "$MODEL" --device cuda -n 48 --temp 0 >"$OUT/chat.txt" 2>"$OUT/chat.log"
  echo "chat rc=$?: $(tr '\n' ' ' <"$OUT/chat.txt" | cut -c1-300)"
  tail -1 "$OUT/chat.log"
  echo "== serve --device cuda + loadtest"
  "$G" serve "$MODEL" --device cuda --port 18087 --parallel 8 --queue 64 --ctx 1024 >"$OUT/serve.log" 2>&1 &
  local spid=$!
  for _ in $(seq 120); do curl -sf http://127.0.0.1:18087/health >/dev/null 2>&1 && break; sleep 0.5; done
  $T python3 "$ROOT/tools/loadtest.py" --url http://127.0.0.1:18087 --clients 1,8 --requests-per-client 4 \
    --max-tokens 128 --ignore-eos --json >"$OUT/load.json" 2>"$OUT/load.log"
  echo "loadtest rc=$?"; tail -6 "$OUT/load.log"
  $T python3 "$ROOT/tools/loadtest.py" --url http://127.0.0.1:18087 --clients 64 --requests 256 \
    --max-tokens 32 --json >"$OUT/load64.json" 2>"$OUT/load64.log"
  echo "loadtest 64 rc=$?"; tail -3 "$OUT/load64.log"
  kill -TERM $spid; wait $spid; echo "serve exit $?"
  python3 - "$OUT" "$B" <<'PY'
import json, sys, os
out, b = sys.argv[1], sys.argv[2]
def load(p):
    try: return json.load(open(p))
    except Exception: return None
print("card:", open(os.path.join(out, "gpu.txt")).read().strip())
l = load(os.path.join(out, "logits.json"))
if l: print(f"logits vs CPU: max rel err {l['max_rel_err']:.3e} (one pass {l['max_rel_err_prefill']:.3e}, one at a time {l['max_rel_err_decode']:.3e}), mean {l['mean_rel_err']:.3e}, top-1 {l['top1_agreement']:.3f}, pass {l['pass']}")
g, c = load(os.path.join(out, "ppl.json")), load(os.path.join(b, "ref_ppl.json"))
if g and c: print(f"perplexity {g['tokens']} tokens ctx {g['ctx']}: GPU {g['ppl']:.4f} CPU {c['ppl']:.4f} ratio {g['ppl']/c['ppl']:.5f} ({100*abs(g['ppl']/c['ppl']-1):.3f}%) GPU {g['seconds']:.1f} s")
for line in open(os.path.join(out, "bench.jsonl")) if os.path.exists(os.path.join(out, "bench.jsonl")) else []:
    if line.startswith("{"):
        j = json.loads(line)
        print(f"bench batch {j['batch']}: decode {j['decode_tok_s']:.1f} tok/s together ({j['ms_per_step']:.2f} ms/pass)" + (f", greedy graph {j['greedy_graph_tok_s']:.1f} tok/s" if 'greedy_graph_tok_s' in j else "") + f", prefill {j['prefill_tok_s']:.0f} tok/s")
for name in ("load.json", "load64.json"):
    j = load(os.path.join(out, name))
    if j:
        for ph in j["phases"]:
            print(f"serve {ph['clients']} clients: {ph['tokens_per_s']:.1f} tok/s, {ph['requests_per_s']:.2f} req/s, p50 {ph['latency_ms']['p50']} ms p99 {ph['latency_ms']['p99']} ms, ok {ph['ok']}/{ph['requests']} failed {ph['failed']} lost {ph['lost']}" + (f", x{ph['tokens_per_s_vs_first_phase']} of 1 client" if 'tokens_per_s_vs_first_phase' in ph else ""))
PY
}

case "$MODE" in
  pack) shift; pack "$@" ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 pack CHECKPOINT OUTDIR [TEXT] | run A B" && exit 2 ;;
esac

#!/usr/bin/env bash
# Build, test and benchmark the CUDA backend on a GPU machine; prints a short table last.
#
#   scripts/gpu_check.sh                 build from this checkout (needs scripts/install-deps.sh's
#                                        packages and the CUDA toolkit), then test and benchmark
#   scripts/gpu_check.sh bundle [DIR]    (on a build machine) build, then copy glq, the CUDA test
#                                        executable and the shared libraries a bare CUDA machine
#                                        lacks into DIR (default .gpubundle)
#   scripts/gpu_check.sh run [DIR]       (on the GPU machine) test and benchmark a bundle
#
# Logs and JSON lines go to $OUT (default ./gpu-check-out): tests.log, gemv.jsonl, model.jsonl.
# GLQ_GPU_QUICK=1 runs only the tests and one benchmark of each kind.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:-full}
BUNDLE=${2:-$ROOT/.gpubundle}
OUT=${OUT:-$ROOT/gpu-check-out}
BUILD=${GLQ_CUDA_BUILD:-$ROOT/build/cuda}
ARCHS=${GLQ_CUDA_ARCHS:-90a}

build() {
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGLQ_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" >/dev/null || exit 1
  cmake --build "$BUILD" --target glq glq_test_cuda -j"${JOBS:-$(nproc)}" || exit 1
}

make_bundle() {
  [ "${GLQ_SKIP_BUILD:-0}" = 1 ] || build
  rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/lib"
  cp "$BUILD/src/cli/glq" "$BUILD/tests/glq_test_cuda" "$BUNDLE/"
  strip "$BUNDLE/glq" "$BUNDLE/glq_test_cuda"
  # Every non-system, non-CUDA library the binaries need (the GPU machine brings cuBLAS).
  ldd "$BUNDLE/glq" "$BUNDLE/glq_test_cuda" | awk '/=>/ {print $3}' | sort -u |
    grep -v -E 'libc\.so|libm\.so|libstdc\+\+|libgcc_s|libpthread|libdl\.so|librt\.so|ld-linux|libcublas' |
    while read -r lib; do cp -L "$lib" "$BUNDLE/lib/"; done
  du -sh "$BUNDLE"
}

find_cublas() {
  local d
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
    $(python3 -c 'import nvidia.cublas, os; print(os.path.join(os.path.dirname(nvidia.cublas.__file__), "lib"))' 2>/dev/null); do
    if [ -e "$d/libcublas.so.13" ]; then echo "$d"; return; fi
  done
}

# The CUDA tests matching FILTER with the environment VAR=VALUE... into $OUT/tests_ring_NAME.log
# (run from run_all: its T, bin and test_rc).
ring_variant() {
  local name=$1 filter=$2
  shift 2
  env "$@" $T "$bin/glq_test_cuda" --gtest_brief=1 --gtest_filter="$filter" >"$OUT/tests_ring_$name.log" 2>&1 ||
    test_rc=1
  tail -n 3 "$OUT/tests_ring_$name.log"
}

run_all() {
  local bin=$1
  local T="timeout ${GLQ_BENCH_TIMEOUT:-150}"
  mkdir -p "$OUT"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
  echo "== tests"
  # The whole suite takes ~140 s on an H200 (its CPU references): a limit of its own.
  timeout "${GLQ_TEST_TIMEOUT:-600}" "$bin/glq_test_cuda" --gtest_brief=1 >"$OUT/tests.log" 2>&1
  local test_rc=$?
  tail -n 30 "$OUT/tests.log"
  # The ring kernel's choices, each forced: byte dot products or fp16 products (chosen by shape);
  # planned for one SM (one column range per row block, so long ranges are staged too);
  # segments (one wave of warps sharing the words evenly) wherever the groups per row allow them,
  # and never, and forced on one SM, where a warp's segment crosses many tiles.
  local ring='CudaQgemvRing*' both='CudaQgemvRing*:CudaEngine.*'
  ring_variant i8_0 "$both" GLQ_QGEMV_RING_I8=0
  ring_variant i8_1 "$both" GLQ_QGEMV_RING_I8=1
  ring_variant one_sm "$ring" GLQ_QGEMV_RING_SMS=1
  ring_variant flat_1 "$both" GLQ_QGEMV_RING_FLAT=1
  ring_variant flat_0 "$both" GLQ_QGEMV_RING_FLAT=0
  ring_variant flat_one_sm "$ring" GLQ_QGEMV_RING_FLAT=1 GLQ_QGEMV_RING_SMS=1
  # The engine with each residual add's output transform and the next RMSNorm's input transform
  # as two kernels instead of one (bridge_rows_kernel).
  ring_variant bridge_0 'CudaEngine.*' GLQ_CUDA_BRIDGE=0
  : >"$OUT/gemv.jsonl"
  : >"$OUT/model.jsonl"
  local shapes="4096x14336 14336x4096 4096x4096 1024x4096"
  local bitss="2 3 4"
  [ "${GLQ_GPU_QUICK:-0}" = 1 ] && shapes="4096x14336" && bitss="2"
  echo "== bench gemv"
  for shape in $shapes; do
    for bits in $bitss; do
      $T "$bin/glq" bench gemv --device cuda --rows "${shape%x*}" --cols "${shape#*x}" --bits "$bits" --batch 1 --json \
        >>"$OUT/gemv.jsonl" 2>>"$OUT/bench.log" || echo "FAILED gemv $shape $bits" | tee -a "$OUT/bench.log"
    done
  done
  for batch in 8 64 2048; do
    for bits in 2 4; do
      $T "$bin/glq" bench gemv --device cuda --rows 4096 --cols 14336 --bits "$bits" --batch "$batch" --json \
        >>"$OUT/gemv.jsonl" 2>>"$OUT/bench.log" || echo "FAILED gemv batch $batch $bits" | tee -a "$OUT/bench.log"
    done
  done
  echo "== bench model"
  for bits in 2 3 4 16; do
    [ "${GLQ_GPU_QUICK:-0}" = 1 ] && [ "$bits" != 2 ] && [ "$bits" != 16 ] && continue
    $T "$bin/glq" bench model --device cuda --synthetic llama3-8b --bits "$bits" --ctx 512 --decode-tokens 64 \
      --prompt-tokens 512 --json >>"$OUT/model.jsonl" 2>>"$OUT/bench.log" ||
      echo "FAILED model $bits" | tee -a "$OUT/bench.log"
  done
  # Long context: a 4000-token prompt (prefill attention dominates) and decode from 4000 tokens.
  for bits in 2 16; do
    [ "${GLQ_GPU_QUICK:-0}" = 1 ] && continue
    $T "$bin/glq" bench model --device cuda --synthetic llama3-8b --bits "$bits" --ctx 4096 --decode-tokens 64 \
      --prompt-tokens 4000 --json >>"$OUT/model.jsonl" 2>>"$OUT/bench.log" ||
      echo "FAILED model $bits ctx 4096" | tee -a "$OUT/bench.log"
  done
  tail -n 5 "$OUT/bench.log"
  python3 - "$OUT" <<'EOF'
import json, sys, os
out = sys.argv[1]
def rows(name):
    p = os.path.join(out, name)
    return [json.loads(l) for l in open(p) if l.strip().startswith("{")] if os.path.exists(p) else []
g = rows("gemv.jsonl")
if g:
    print(f"card: {g[0]['card']}  date: {g[0]['date']}")
    print(f"{'shape':>11} {'batch':>5} {'bpw':>3} {'glq us':>8} {'bf16 us':>8} {'speedup':>7} {'GB/s':>6} {'%bf16 bw':>8} "
          f"{'kern us':>8} {'xform us':>8} {'deq us':>7} {'cores us':>8} {'mma us':>8}")
    for j in g:
        print(f"{j['rows']:>5}x{j['cols']:<5} {j['batch']:>5} {j['bits']:>3} {j['us']:8.2f} {j['baseline_us']:8.2f} "
              f"{j['speedup']:7.2f} {j['gbps']:6.0f} {100*j['bw_fraction_of_bf16']:7.1f}% "
              f"{j.get('kernel_us', 0):8.2f} {j.get('transforms_us', 0):8.2f} {j.get('dequant_us', 0):7.2f} "
              f"{j.get('cuda_cores_path_us', 0):8.2f} {j.get('tensor_core_path_us', 0):8.2f}")
for j in rows("model.jsonl"):
    print(f"llama3-8b synthetic {j['bits']:>2} bpw, ctx {j['ctx']:>4}: decode {j['decode_tok_s']:7.1f} tok/s (limit "
          f"{j['limit_tok_s']:6.0f}, {100*j['fraction_of_limit']:.0f}%), prefill of {j['prompt_tokens']} tokens "
          f"{j['prefill_tok_s']:8.0f} tok/s")
EOF
  return $test_rc
}

case "$MODE" in
  bundle) make_bundle ;;
  run)
    CUBLAS_DIR=$(find_cublas)
    [ -z "$CUBLAS_DIR" ] && echo "libcublas.so.13 not found" && exit 1
    export LD_LIBRARY_PATH="$BUNDLE/lib:$CUBLAS_DIR:${LD_LIBRARY_PATH:-}"
    run_all "$BUNDLE"
    ;;
  full)
    build
    run_all_dir=$(mktemp -d)
    cp "$BUILD/src/cli/glq" "$BUILD/tests/glq_test_cuda" "$run_all_dir/"
    run_all "$run_all_dir"
    ;;
  *) echo "usage: $0 [full | bundle [DIR] | run [DIR]]" && exit 2 ;;
esac

// Run-time dispatch and the driver of qmatmul: input transform, activation rounding, code
// products over rows on the shared pool, scales, output transform.
#include <cpuid.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <limits>
#include <string>
#include <vector>

#include "glq/error.hpp"
#include "glq/kernels/cpu.hpp"
#include "kernels/cpu/kernel_common.hpp"

namespace glq::cpu {

namespace {

using detail::DotArgs;

constexpr int kRowGrain = 8;  // rows per chunk of the pool's split (keeps output writes apart)
constexpr int64_t kDynamicChunks = 16;  // row chunks per thread in the integer path's dynamic split
// Below this many code uses (rows · groups · stages · batch) the product runs on the calling
// thread: at about 0.25 ns per code use, 65536 is ~15 us, a few pool wake-ups (measured:
// docs/cpu-kernels.md).
constexpr int64_t kMinParallelCodes = 65536;

Isa hardware_isa() {
  static const Isa best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi") &&
        __builtin_cpu_supports("gfni"))
      return Isa::Avx512;
    // F16C (half-float conversions, used by hmatmul) came with every AVX2 CPU, but is checked.
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c) return Isa::Avx2;
    return Isa::Scalar;
  }();
  return best;
}

// Scratch of the calling thread, grown once to the largest shape seen.
struct Workspace {
  std::vector<float> xt;       // (batch, cols) transformed inputs
  std::vector<float> tmp;      // (threads, max(rows, cols)) transform scratch
  std::vector<int16_t> x16;    // (batch, cols) rounded activations
  std::vector<int8_t> planes;  // (batch, 2, plane_bytes) ISA layout
  std::vector<int64_t> xsum;   // (batch)
  std::vector<double> xscale;  // (batch)
  std::vector<int64_t> dots;   // (stages, batch, rows)
  std::vector<float> panel;    // float-tile path: (panel_tiles(batch), cols, kPanelLanes)
};

// Smallest batch for the float-tile path, per bit width (index bits − 2). Measured on Zen 4
// against the integer kernel (docs/cpu-kernels.md): the float path costs one FMA per 16 weights
// and batch row whatever the stages, plus a decode per tile that does not depend on the batch;
// the integer one two vpdpbusd per 64 weights, stage and batch row. With one stage (2 bpw) the
// integer kernel stays faster at every batch; with two, the float path wins from about 8 rows
// (re-measured after the nibble-form decode: 1024 × 14336, batch 6 int 4.2 / float 4.3 ms,
// batch 8 4.9 / 4.7, batch 12 7.5 / 6.5).
constexpr int kFloatTileMinBatch[3] = {std::numeric_limits<int>::max(), 8, 8};
// The same for the AVX2 float tiles (qgemm_avx2.cpp), measured against the AVX2 integer kernel
// (docs/cpu-kernels.md).
constexpr int kFloatTileMinBatchAvx2[3] = {std::numeric_limits<int>::max(), 10, 14};

// parallel_for takes a std::function; a lambda that captures one pointer fits its small-object
// buffer, so handing the pool a task allocates nothing (a lambda capturing many references would).
template <class F>
void run_parallel(ThreadPool& pool, int64_t n, const F& task, int64_t grain = 1) {
  pool.parallel_for(n, [t = &task](int64_t b, int64_t e, int i) { (*t)(b, e, i); }, grain);
}

template <class T>
T* grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

void validate(const codec::QuantizedMatrix& q) {
  auto bad = [&](const std::string& what, const std::string& expected, const std::string& got) {
    throw_mismatch("QuantizedMatrix " + std::to_string(q.rows) + "x" + std::to_string(q.cols) +
                       " " + what,
                   expected, got);
  };
  if (q.rows <= 0 || q.cols <= 0 || q.rows % 8 || q.cols % 8)
    bad("shape", "positive multiples of 8",
        std::to_string(q.rows) + "x" + std::to_string(q.cols));
  if (q.bits < 2 || q.bits > 4) bad("bits", "2, 3 or 4", std::to_string(q.bits));
  // The codec's stage lists, built once (validate runs on every call and must not allocate).
  static const std::vector<codec::Codebook> kStages[3] = {
      codec::stages_for_bits(2), codec::stages_for_bits(3), codec::stages_for_bits(4)};
  const auto& expected = kStages[q.bits - 2];
  if (q.stages.size() != expected.size())
    bad("stages", std::to_string(expected.size()), std::to_string(q.stages.size()));
  const size_t groups = static_cast<size_t>(q.rows) * (q.cols / 8);
  for (size_t s = 0; s < q.stages.size(); ++s) {
    const auto& st = q.stages[s];
    if (st.codebook != expected[s])
      bad("stage " + std::to_string(s) + " codebook", codec::codebook_id(expected[s]),
          codec::codebook_id(st.codebook));
    if (st.codes.size() != groups * codec::code_bytes(st.codebook))
      bad("stage " + std::to_string(s) + " code bytes",
          std::to_string(groups * codec::code_bytes(st.codebook)),
          std::to_string(st.codes.size()));
    if (st.scales.size() != static_cast<size_t>(q.rows))
      bad("stage " + std::to_string(s) + " scales", std::to_string(q.rows),
          std::to_string(st.scales.size()));
  }
  if (q.sign_in.size() != static_cast<size_t>(q.cols))
    bad("sign_in", std::to_string(q.cols), std::to_string(q.sign_in.size()));
  if (q.sign_out.size() != static_cast<size_t>(q.rows))
    bad("sign_out", std::to_string(q.rows), std::to_string(q.sign_out.size()));
  if (!q.rht) return;  // no transform: the plans are unused
  if (q.plan_in.n != q.cols || q.plan_in.a * q.plan_in.b != q.cols)
    bad("plan_in", "n = a·b = " + std::to_string(q.cols),
        std::to_string(q.plan_in.n) + " = " + std::to_string(q.plan_in.a) + "·" +
            std::to_string(q.plan_in.b));
  if (q.plan_out.n != q.rows || q.plan_out.a * q.plan_out.b != q.rows)
    bad("plan_out", "n = a·b = " + std::to_string(q.rows),
        std::to_string(q.plan_out.n) + " = " + std::to_string(q.plan_out.a) + "·" +
            std::to_string(q.plan_out.b));
}

void hadamard(Isa isa, const transform::HadamardPlan& plan, bool transpose, float* x,
              float* tmp) {
  switch (isa) {
    case Isa::Avx512: detail::hadamard_avx512(plan, transpose, x, tmp); break;
    case Isa::Avx2: detail::hadamard_avx2(plan, transpose, x, tmp); break;
    case Isa::Reference:
      if (transpose)
        transform::hadamard_transpose(plan, x);
      else
        transform::hadamard_forward(plan, x);
      break;
    default: detail::hadamard_scalar(plan, transpose, x, tmp); break;
  }
}

void require_supported(Isa isa) {
  if (!isa_supported(isa))
    throw_unsupported(std::string("CPU kernels: this CPU cannot run ISA '") + isa_name(isa) +
                      "' (best available: " + isa_name(hardware_isa()) + ")");
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Reference: return "reference";
  }
  return "unknown";
}

Isa parse_isa(const std::string& name) {
  if (name == "scalar") return Isa::Scalar;
  if (name == "avx2") return Isa::Avx2;
  if (name == "avx512") return Isa::Avx512;
  if (name == "reference") return Isa::Reference;
  throw_invalid("unknown CPU ISA '" + name + "' (expected scalar, avx2, avx512 or reference)");
}

bool isa_supported(Isa isa) {
  return isa == Isa::Reference || static_cast<int>(isa) <= static_cast<int>(hardware_isa());
}

Isa detect_isa() {
  if (const char* env = std::getenv("GLQ_CPU_ISA"); env && *env) {
    const Isa forced = parse_isa(env);
    require_supported(forced);
    return forced;
  }
  return hardware_isa();
}

void transform_input(const codec::QuantizedMatrix& q, float* x, int batch, Isa isa) {
  require_supported(isa);
  std::vector<float> tmp(static_cast<size_t>(q.cols));
  for (int b = 0; b < batch; ++b) {
    float* row = x + static_cast<int64_t>(b) * q.cols;
    for (int i = 0; i < q.cols; ++i) row[i] *= q.sign_in[i];
    if (q.rht) hadamard(isa, q.plan_in, false, row, tmp.data());
  }
}

void transform_output(const codec::QuantizedMatrix& q, float* y, int batch, Isa isa) {
  require_supported(isa);
  std::vector<float> tmp(static_cast<size_t>(q.rows));
  for (int b = 0; b < batch; ++b) {
    float* row = y + static_cast<int64_t>(b) * q.rows;
    if (q.rht) hadamard(isa, q.plan_out, true, row, tmp.data());
    for (int i = 0; i < q.rows; ++i) row[i] *= q.sign_out[i];
  }
}

void hadamard_rows(const transform::HadamardPlan& plan, bool transpose, float* x, int64_t batch, Isa isa) {
  require_supported(isa);
  if (plan.n <= 0 || plan.a * plan.b != plan.n)
    throw_invalid("hadamard_rows: the Hadamard plan is not initialised (n = " + std::to_string(plan.n) + ")");
  std::vector<float> tmp(static_cast<size_t>(plan.n));
  for (int64_t b = 0; b < batch; ++b) hadamard(isa, plan, transpose, x + b * plan.n, tmp.data());
}

bool qmatmul_float_tiles(const codec::QuantizedMatrix& q, int batch, Isa isa) {
  if (q.bits < 2 || q.bits > 4) return false;
  if (isa == Isa::Avx512) return batch >= kFloatTileMinBatch[q.bits - 2];
  if (isa == Isa::Avx2) return batch >= kFloatTileMinBatchAvx2[q.bits - 2];
  return false;
}

namespace {

// The float-tile path (AVX-512 or AVX2, large batches): x̃ = T_in (sign_in ∘ x) in float, packed
// into batch tiles; ỹ from decoded float tiles; y = sign_out ∘ (T_out^T ỹ).
void qmatmul_float(const codec::QuantizedMatrix& q, const float* x, float* y, int batch, ThreadPool& pool,
                   Workspace& ws, Isa isa) {
  const int rows = q.rows, cols = q.cols;
  const int tiles = detail::panel_tiles(batch);
  const size_t tmp_len = static_cast<size_t>(std::max(rows, cols));
  float* xt = grow(ws.xt, static_cast<size_t>(batch) * cols);
  float* tmp = grow(ws.tmp, tmp_len * pool.size());
  float* panel = grow(ws.panel, static_cast<size_t>(tiles) * cols * detail::kPanelLanes);

  // 1. Transform each batch row (over batch rows), then pack the tiles (over tiles).
  std::atomic<bool> finite{true};
  const auto input_task = [&](int64_t b0, int64_t b1, int t) {
    for (int64_t b = b0; b < b1; ++b) {
      float* row = xt + b * cols;
      const float* in = x + b * cols;
      for (int i = 0; i < cols; ++i) row[i] = in[i] * q.sign_in[i];
      if (q.rht) hadamard(isa, q.plan_in, false, row, tmp + tmp_len * t);
      bool ok = true;
      for (int i = 0; i < cols; ++i) ok &= std::fabs(row[i]) <= std::numeric_limits<float>::max();
      if (!ok) finite = false;
    }
  };
  run_parallel(pool, batch, input_task);
  if (!finite)
    throw_numerical("qmatmul: an input row of " + std::to_string(cols) + " values contains NaN or Inf");
  const auto pack_task = [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      const int b0 = detail::panel_tile_start(static_cast<int>(t), batch);
      const int b1 = detail::panel_tile_start(static_cast<int>(t) + 1, batch);
      float* p = panel + t * cols * detail::kPanelLanes;
      for (int c = 0; c < cols; ++c)
        for (int b = b0; b < b1; ++b) p[static_cast<int64_t>(c) * detail::kPanelLanes + (b - b0)] = xt[static_cast<int64_t>(b) * cols + c];
    }
  };
  run_parallel(pool, tiles, pack_task);

  // 2. ỹ over row tiles.
  detail::FloatTileArgs fa;
  fa.rows = rows;
  fa.cols = cols;
  fa.groups = cols / 8;
  fa.n_stages = static_cast<int>(q.stages.size());
  for (int s = 0; s < fa.n_stages; ++s) {
    fa.stages[s] = {q.stages[s].codebook, q.stages[s].codes.data()};
    fa.scales[s] = q.stages[s].scales.data();
  }
  fa.panel = panel;
  fa.batch = batch;
  fa.y = y;
  const auto rows_task = [&fa, isa](int64_t r0, int64_t r1, int) {
    if (isa == Isa::Avx512)
      detail::gemm_tiles_avx512(fa, int(r0), int(r1));
    else
      detail::gemm_tiles_avx2(fa, int(r0), int(r1));
  };
  if (pool.size() == 1)
    rows_task(0, rows, 0);
  else
    run_parallel(pool, rows, rows_task, detail::kFloatTileRows);

  // 3. y = sign_out ∘ (T_out^T ỹ) (over batch rows).
  const auto output_task = [&](int64_t b0, int64_t b1, int t) {
    for (int64_t b = b0; b < b1; ++b) {
      float* yb = y + b * rows;
      if (q.rht) hadamard(isa, q.plan_out, true, yb, tmp + tmp_len * t);
      for (int i = 0; i < rows; ++i) yb[i] *= q.sign_out[i];
    }
  };
  run_parallel(pool, batch, output_task);
}

}  // namespace

void qmatmul(const codec::QuantizedMatrix& q, const float* x, float* y, int batch,
             ThreadPool& pool, Isa isa) {
  if (batch < 0) throw_invalid("qmatmul: batch must be >= 0, got " + std::to_string(batch));
  if (batch == 0) return;
  validate(q);
  require_supported(isa);
  if (isa == Isa::Reference) {
    codec::matvec_reference(q, x, y, batch);
    return;
  }
  thread_local Workspace ws;
  if (qmatmul_float_tiles(q, batch, isa)) {
    qmatmul_float(q, x, y, batch, pool, ws, isa);
    return;
  }

  const int rows = q.rows, cols = q.cols, groups = cols / 8;
  const int n_stages = static_cast<int>(q.stages.size());
  const int groups_padded =
      isa == Isa::Avx512 ? detail::avx512_plane_groups(groups)
      : isa == Isa::Avx2 ? (groups + detail::avx2_chunk_groups() - 1) / detail::avx2_chunk_groups() *
                               detail::avx2_chunk_groups()
                         : groups;
  const int64_t plane_bytes = 8 * static_cast<int64_t>(groups_padded);
  const size_t tmp_len = static_cast<size_t>(std::max(rows, cols));

  float* xt = grow(ws.xt, static_cast<size_t>(batch) * cols);
  float* tmp = grow(ws.tmp, tmp_len * pool.size());
  int16_t* x16 = isa == Isa::Scalar ? grow(ws.x16, static_cast<size_t>(batch) * cols) : nullptr;
  int8_t* planes = isa == Isa::Scalar ? nullptr : grow(ws.planes, 2 * batch * plane_bytes);
  int64_t* xsum = grow(ws.xsum, batch);
  double* xscale = grow(ws.xscale, batch);
  int64_t* dots = grow(ws.dots, static_cast<size_t>(n_stages) * batch * rows);

  // 1. x̃ = T_in (sign_in ∘ x), rounded to 16 bits, laid out for the ISA (over batch rows).
  // The pool's workers must not throw: the first error of any row is rethrown here.
  std::exception_ptr error;
  std::mutex error_mutex;
  const auto input_task = [&](int64_t b0, int64_t b1, int t) {
    for (int64_t b = b0; b < b1; ++b) try {
      detail::InputRow in;
      in.x = x + b * cols;
      in.sign_in = q.sign_in.data();
      in.plan = q.rht ? &q.plan_in : nullptr;
      in.cols = cols;
      in.groups = groups;
      in.groups_padded = groups_padded;
      in.xt = xt + b * cols;
      in.tmp = tmp + tmp_len * t;
      in.x16 = x16 + b * cols;
      if (planes) {
        in.hi = planes + 2 * b * plane_bytes;
        in.lo = in.hi + plane_bytes;
      }
      in.sum = &xsum[b];
      in.scale = &xscale[b];
      switch (isa) {
        case Isa::Avx512: detail::prepare_input_avx512(in); break;
        case Isa::Avx2: detail::prepare_input_avx2(in); break;
        default: detail::prepare_input_scalar(in); break;
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  run_parallel(pool, batch, input_task);
  if (error) std::rethrow_exception(error);

  // 2. Exact integer code products, then ỹ = Σ_s scale_s · xs / 4 · dot_s (over rows).
  DotArgs args;
  args.rows = rows;
  args.cols = cols;
  args.groups = groups;
  args.n_stages = n_stages;
  for (int s = 0; s < n_stages; ++s)
    args.stages[s] = {q.stages[s].codebook, q.stages[s].codes.data()};
  args.act.x16 = x16;
  args.act.planes = planes;
  args.act.plane_bytes = plane_bytes;
  args.act.xsum = xsum;
  args.act.batch = batch;
  args.act.groups_padded = groups_padded;
  args.dots = dots;
  const auto rows_task = [&](int64_t r0, int64_t r1, int) {
        switch (isa) {
          case Isa::Avx512: detail::dots_avx512(args, int(r0), int(r1)); break;
          case Isa::Avx2: detail::dots_avx2(args, int(r0), int(r1)); break;
          default: detail::dots_scalar(args, int(r0), int(r1)); break;
        }
        for (int b = 0; b < batch; ++b) {
          const double unit = xscale[b] * 0.25;  // quarter lattice units
          float* yb = y + static_cast<int64_t>(b) * rows;
          for (int64_t r = r0; r < r1; ++r) {
            double acc = 0.0;
            for (int s = 0; s < n_stages; ++s)
              acc += static_cast<double>(q.stages[s].scales[r]) * unit *
                     static_cast<double>(dots[(static_cast<int64_t>(s) * batch + b) * rows + r]);
            yb[r] = static_cast<float>(acc);
          }
        }
      };
  // Waking the pool costs several microseconds; a product smaller than kMinParallelCodes code
  // uses (about 15 us of one core) runs on the calling thread alone.
  const int64_t work = static_cast<int64_t>(rows) * groups * n_stages * batch;
  if (work < kMinParallelCodes || pool.size() == 1) {
    rows_task(0, rows, 0);
  } else {
    // Rows are handed out in chunks from a shared counter rather than split in fixed shares: on a
    // machine whose cores are also busy with other work, a thread that is descheduled for a
    // while no longer holds up the call — the others take its remaining chunks. About
    // kDynamicChunks chunks per thread keep the counter traffic negligible.
    const int64_t threads = pool.size();
    const int64_t chunk = std::max<int64_t>(
        kRowGrain, (rows + threads * kDynamicChunks - 1) / (threads * kDynamicChunks) / kRowGrain * kRowGrain);
    std::atomic<int64_t> next{0};
    const auto worker = [&](int64_t, int64_t, int t) {
      for (int64_t r0; (r0 = next.fetch_add(chunk, std::memory_order_relaxed)) < rows;)
        rows_task(r0, std::min<int64_t>(rows, r0 + chunk), t);
    };
    run_parallel(pool, threads, worker);
  }

  // 3. y = sign_out ∘ (T_out^T ỹ) (over batch rows).
  const auto output_task = [&](int64_t b0, int64_t b1, int t) {
    float* scratch = tmp + tmp_len * t;
    for (int64_t b = b0; b < b1; ++b) {
      float* yb = y + b * rows;
      if (q.rht) hadamard(isa, q.plan_out, true, yb, scratch);
      for (int i = 0; i < rows; ++i) yb[i] *= q.sign_out[i];
    }
  };
  run_parallel(pool, batch, output_task);
}

}  // namespace glq::cpu

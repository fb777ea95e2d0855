// The GPU engine behind the scheduler (glq/server/cuda_backend.hpp).
#include "glq/server/cuda_backend.hpp"

#include <vector>

#include "glq/error.hpp"
#ifdef GLQ_HAVE_CUDA
#include "glq/model/cuda_model.hpp"
#endif

namespace glq::server {

#ifdef GLQ_HAVE_CUDA

struct CudaBackend::Impl {
  Impl(const model::Model& m, int slots, int context) : gpu(m, context, slots) {}
  model::CudaModel gpu;
  std::vector<cuda::SlotStep> steps;
};

CudaBackend::CudaBackend(const model::Model& model, int slots, int context)
    : impl_(std::make_unique<Impl>(model, slots, context)) {}
CudaBackend::~CudaBackend() = default;
int CudaBackend::slots() const { return impl_->gpu.engine().config().slots; }
int CudaBackend::context() const { return impl_->gpu.engine().config().max_context; }
std::string CudaBackend::device_name() const { return impl_->gpu.context().info().name; }
double CudaBackend::weight_mb() const { return impl_->gpu.engine().weight_bytes() / 1e6; }

void CudaBackend::forward(std::span<const BackendStep> steps) {
  auto& v = impl_->steps;
  v.clear();
  for (const BackendStep& s : steps) {
    cuda::SlotStep c;
    c.slot = s.slot;
    c.pos = s.pos;
    c.tokens = s.tokens.data();
    c.n = static_cast<int>(s.tokens.size());
    c.logits = s.logits;
    v.push_back(c);
  }
  if (!v.empty()) impl_->gpu.engine().forward_slots(v.data(), static_cast<int>(v.size()));
}

#else

struct CudaBackend::Impl {};

CudaBackend::CudaBackend(const model::Model&, int, int) {
  throw Error(ErrorKind::Unsupported, "--device cuda: this glq was built without CUDA; rebuild with GLQ_CUDA=1");
}
CudaBackend::~CudaBackend() = default;
int CudaBackend::slots() const { return 0; }
int CudaBackend::context() const { return 0; }
std::string CudaBackend::device_name() const { return {}; }
double CudaBackend::weight_mb() const { return 0; }
void CudaBackend::forward(std::span<const BackendStep>) {}

#endif

}  // namespace glq::server

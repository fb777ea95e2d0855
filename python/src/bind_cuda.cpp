// CUDA entry points for the PyTorch layer (only in a build configured with -DGLQ_CUDA=ON).
//
// The layer passes raw device pointers and the handle of PyTorch's current stream; nothing here
// includes a PyTorch header. The kernels run on the stream of a glq::cuda::Context (one per
// device), joined to the caller's stream by an event fork/join:
//   record(fork, caller) → ctx waits fork → kernels on ctx → record(join, ctx) → caller waits join
// which orders them exactly as if they ran on the caller's stream, and which CUDA graph capture
// records as graph edges: a forward captured by torch.cuda.graph replays the GLQ kernels. Device
// scratch must not grow during capture (Context::scratch refuses), so a warm-up call at the
// largest batch, or CudaMatrix.reserve(batch), comes first, as PyTorch requires anyway.
#include "common.hpp"
#include "qmatrix.hpp"

#ifdef GLQ_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <map>
#include <mutex>

#include "glq/error.hpp"
#include "glq/kernels/cuda.hpp"
#endif

namespace glq::python {

#ifdef GLQ_HAVE_CUDA

namespace {

// Makes `device` current for the scope and restores the caller's device after it.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    GLQ_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) GLQ_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// The Context and fork/join events of one device. Created on first use and kept for the life of
// the process (never destroyed: CUDA objects must not be released after the driver shuts down
// at exit).
struct DeviceRunner {
  std::unique_ptr<cuda::Context> ctx;
  cudaEvent_t fork = nullptr;
  cudaEvent_t join = nullptr;
  std::mutex mutex;
};

DeviceRunner& runner(int device) {
  static std::mutex registry_mutex;
  static auto* registry = new std::map<int, DeviceRunner*>();
  std::lock_guard<std::mutex> lock(registry_mutex);
  auto it = registry->find(device);
  if (it != registry->end()) return *it->second;
  DeviceGuard guard(device);
  auto* r = new DeviceRunner();
  r->ctx = std::make_unique<cuda::Context>(device);
  GLQ_CUDA_CHECK(cudaEventCreateWithFlags(&r->fork, cudaEventDisableTiming));
  GLQ_CUDA_CHECK(cudaEventCreateWithFlags(&r->join, cudaEventDisableTiming));
  (*registry)[device] = r;
  return *r;
}

// A QuantizedMatrix uploaded to one device.
struct PyCudaMatrix {
  std::shared_ptr<const codec::QuantizedMatrix> source;
  cuda::DeviceQuantizedMatrix d;
  int device = 0;
};

void check_device(int device) {
  const int n = cuda::device_count();
  if (device < 0 || device >= n)
    throw py::value_error("CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(n) +
                          " found)");
}

}  // namespace

void bind_cuda(py::module_& m) {
  m.attr("has_cuda") = true;
  m.def("cuda_device_count", [] { return cuda::device_count(); });
  py::class_<PyCudaMatrix>(m, "CudaMatrix", "A QuantizedMatrix in the GPU layout of one device.")
      .def(py::init([](const PyQuantizedMatrix& q, int device) {
             check_device(device);
             auto out = std::make_unique<PyCudaMatrix>();
             out->source = q.q;
             out->device = device;
             py::gil_scoped_release nogil;
             DeviceGuard guard(device);
             out->d = cuda::upload(*q.q);
             return out;
           }),
           py::arg("matrix"), py::arg("device") = 0)
      .def_property_readonly("device", [](const PyCudaMatrix& s) { return s.device; })
      .def_property_readonly("rows", [](const PyCudaMatrix& s) { return s.d.rows; })
      .def_property_readonly("cols", [](const PyCudaMatrix& s) { return s.d.cols; })
      .def_property_readonly("weight_bytes", [](const PyCudaMatrix& s) { return s.d.weight_bytes(); })
      .def("reserve", [](const PyCudaMatrix& s, int batch) {
        if (batch <= 0) throw py::value_error("reserve: batch must be positive");
        py::gil_scoped_release nogil;
        DeviceRunner& r = runner(s.device);
        DeviceGuard guard(s.device);
        std::lock_guard<std::mutex> lock(r.mutex);
        r.ctx->reserve(batch, s.d.rows, s.d.cols);
      }, py::arg("batch"), "allocates the device scratch for products of up to `batch` rows (before graph capture)")
      .def("qmatmul_ptr", [](const PyCudaMatrix& s, uintptr_t x, uintptr_t y, int batch, uintptr_t stream) {
        if (!x || !y) throw py::value_error("qmatmul_ptr: null pointer");
        if (batch < 0) throw py::value_error("qmatmul_ptr: negative batch");
        if (batch == 0) return;
        py::gil_scoped_release nogil;
        DeviceRunner& r = runner(s.device);
        DeviceGuard guard(s.device);
        std::lock_guard<std::mutex> lock(r.mutex);
        auto caller = reinterpret_cast<cudaStream_t>(stream);
        GLQ_CUDA_CHECK(cudaEventRecord(r.fork, caller));
        GLQ_CUDA_CHECK(cudaStreamWaitEvent(r.ctx->stream(), r.fork, 0));
        cuda::qmatmul(*r.ctx, s.d, reinterpret_cast<const float*>(x), reinterpret_cast<float*>(y), batch);
        GLQ_CUDA_CHECK(cudaEventRecord(r.join, r.ctx->stream()));
        GLQ_CUDA_CHECK(cudaStreamWaitEvent(caller, r.join, 0));
      }, py::arg("x_ptr"), py::arg("y_ptr"), py::arg("batch"), py::arg("stream"),
      "y (batch, rows) = x (batch, cols) W^T on float32 device pointers, ordered on `stream` (a cudaStream_t)");
}

#else

void bind_cuda(py::module_& m) {
  m.attr("has_cuda") = false;
  m.def("cuda_device_count", [] { return 0; });
}

#endif

}  // namespace glq::python

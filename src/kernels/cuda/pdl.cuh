// Programmatic dependent launch (Hopper): a kernel launched with it may start while the kernel
// before it in the stream is still running; it must call pdl_wait() before it touches memory
// that kernel writes (or reads). In the decode step, where hundreds of small kernels follow each
// other, this hides most of each launch's latency: the decode kernel fills its shared-memory
// tables while the input transform before it finishes. GLQ_CUDA_PDL=0 turns it off.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

#include "glq/kernels/cuda.hpp"
#include "kernels/cuda/env.hpp"

namespace glq::cuda::detail {

// Waits until the kernels this one depends on have completed and their memory is visible.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel (if launched with PDL) be scheduled now; it still waits in pdl_wait().
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// Whether the device code loaded for `kernel` was compiled for sm_90 or later (its PTX version):
// the thread-block cluster paths (and wgmma) are compiled only there. A build without sm_90 code
// run on an H100 runs the PTX of an older architecture, compiled by the driver, without them, so
// the host must not plan clusters for it.
template <typename Kernel>
bool compiled_for_sm90(Kernel* kernel) {
  cudaFuncAttributes a{};
  GLQ_CUDA_CHECK(cudaFuncGetAttributes(&a, reinterpret_cast<const void*>(kernel)));
  return a.ptxVersion >= 90;
}

inline bool pdl_enabled(const DeviceInfo& info) {
  static const bool env_off = env_is("GLQ_CUDA_PDL", "0");
  return info.cc_major >= 9 && !env_off;
}

// kernel<<<grid, block, smem, stream>>>(args...), with PDL when `pdl` and thread-block clusters
// of `cluster` blocks (grid a multiple of it) when its volume exceeds 1; checked.
template <typename... Params, typename... Args>
void launch_checked_cluster(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                            bool pdl, dim3 cluster, const char* name, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (pdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster.x * cluster.y * cluster.z > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster.x;
    attr[n].val.clusterDim.y = cluster.y;
    attr[n++].val.clusterDim.z = cluster.z;
  }
  config.attrs = attr;
  config.numAttrs = n;
  check(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...), name, __FILE__, __LINE__);
}

// kernel<<<grid, block, smem, stream>>>(args...), with PDL when `pdl`; checked.
template <typename... Params, typename... Args>
void launch_checked(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                    bool pdl, const char* name, Args&&... args) {
  launch_checked_cluster(kernel, grid, block, smem, stream, pdl, dim3(1, 1, 1), name, std::forward<Args>(args)...);
}

}  // namespace glq::cuda::detail

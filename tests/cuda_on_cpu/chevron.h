// The launch syntax `kernel<<<grid, threads, shared_bytes, stream>>>(args...)` of
// kernels/cuda/launchers.cu, which tests/cuda_on_cpu/aot.py rewrites to
// `cuda_on_cpu::chevron(kernel, cluster, grid, threads, shared_bytes, stream)(args...)`, cluster
// being the block count of the kernel's thread-block cluster (1 without one): the arguments are
// converted to the kernel's parameter types, as a CUDA launch converts them, and run by runtime.h.
// A failed launch sets what cudaGetLastError returns.
#ifndef CUDA_ON_CPU_CHEVRON_H
#define CUDA_ON_CPU_CHEVRON_H

#include <cuda_runtime.h>

#include <tuple>

namespace cuda_on_cpu {

template <class... Params>
struct Chevron {
  void (*kernel)(Params...);
  unsigned int cluster, grid, threads;
  std::size_t shared_bytes;

  template <class... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(Params), "a launch with the wrong number of arguments");
    std::tuple<std::remove_cv_t<Params>...> values(std::forward<Args>(args)...);
    void* pointers[sizeof...(Params)];
    std::apply([&](auto&... value) {
      int i = 0;
      ((pointers[i++] = static_cast<void*>(&value)), ...);
    }, values);
    const std::string error = launch(kernel, pointers, grid, threads, shared_bytes, false, cluster);
    if (!error.empty()) {
      last_error() = cudaErrorLaunchFailure;
      last_error_message() = error;
    }
  }
};

template <class... Params>
Chevron<Params...> chevron(void (*kernel)(Params...), unsigned int cluster, unsigned int grid,
                           unsigned int threads, std::size_t shared_bytes, cudaStream_t) {
  return Chevron<Params...>{kernel, cluster, grid, threads, shared_bytes};
}

}  // namespace cuda_on_cpu

#endif  // CUDA_ON_CPU_CHEVRON_H

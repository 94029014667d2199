// The CUDA runtime API that kernels/cuda/launchers.cu and torch_library.cpp use, for their CPU
// build in tests/cuda_on_cpu/aot.py: streams are opaque, the shared-memory attribute is accepted,
// and a launch's error (from runtime.h's emulation) is what cudaGetLastError returns.
#ifndef CUDA_ON_CPU_CUDA_RUNTIME_H
#define CUDA_ON_CPU_CUDA_RUNTIME_H

#include <string>

typedef struct CUstream_st* cudaStream_t;

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorLaunchFailure = 719 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace cuda_on_cpu {
inline std::string& last_error_message() {
  static std::string message;
  return message;
}
inline cudaError_t& last_error() {
  static cudaError_t error = cudaSuccess;
  return error;
}
}  // namespace cuda_on_cpu

template <class Kernel>
cudaError_t cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int value) {
  return value >= 0 && value <= 227 * 1024 ? cudaSuccess : cudaErrorInvalidValue;
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t error = cuda_on_cpu::last_error();
  cuda_on_cpu::last_error() = cudaSuccess;
  return error;
}

inline const char* cudaGetErrorString(cudaError_t error) {
  if (error == cudaSuccess) return "no error";
  if (error == cudaErrorInvalidValue) return "invalid argument";
  return cuda_on_cpu::last_error_message().c_str();
}

#endif  // CUDA_ON_CPU_CUDA_RUNTIME_H

// Shared host-side helpers of the CUDA kernels: element types, ceil_div, launch-precondition checks and the
// KernelError a failed CUDA call raises. Host-includable (plain C++ plus the CUDA runtime headers), so exec/cuda and
// the CPU-side tests can use the Config / Args structs of every kernel file without nvcc.
// kernels/ takes raw pointers, sizes and streams only (STYLE.md section 1): no IR types, no globals.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace cuboid::kernels {

using bf16 = __nv_bfloat16;

/// ceil(a / b) for positive b.
constexpr std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

/// A violated launch precondition (bad size, null pointer, unsupported shape); thrown before anything is launched.
class LaunchError : public std::invalid_argument {
public:
  using std::invalid_argument::invalid_argument;
};

/// A failed CUDA runtime call inside a launcher (message: expression, file:line, CUDA error string). exec/cuda
/// reports it with the rank and host as the cause of a DeviceError.
class KernelError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

/// Throws LaunchError("<kernel>: <what> (got <value>)") unless `ok`.
inline void require(bool ok, const char* kernel, const std::string& what, std::int64_t value) {
  if (!ok) {
    throw LaunchError(std::string(kernel) + ": " + what + " (got " + std::to_string(value) + ")");
  }
}
inline void require(bool ok, const char* kernel, const std::string& what, double value) {
  if (!ok) {
    throw LaunchError(std::string(kernel) + ": " + what + " (got " + std::to_string(value) + ")");
  }
}
inline void require_ptr(const void* ptr, const char* kernel, const char* name) {
  if (ptr == nullptr) {
    throw LaunchError(std::string(kernel) + ": " + name + " is null");
  }
}

/// Grid size for a grid-stride loop over `n` elements: enough blocks to cover n, at most `max_blocks`.
inline dim3 grid_stride_grid(std::int64_t n, int threads, int max_blocks) {
  const std::int64_t blocks = ceil_div(n, threads);
  return dim3(static_cast<unsigned>(blocks < max_blocks ? (blocks < 1 ? 1 : blocks) : max_blocks));
}

/// Throws KernelError naming `expr`, file:line and the CUDA error string when `status` is not cudaSuccess.
void check_cuda(cudaError_t status, const char* expr, const char* file, int line);

} // namespace cuboid::kernels

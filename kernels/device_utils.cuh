// Device-side helpers shared by the kernel files (.cu only, never included by host C++): the CUDA_CHECK macro of
// the launchers, fp32 <-> element-type conversion, and warp / block reductions by shuffles (as karpathy/llm.c
// llmc/cuda_utils.cuh). All reductions accumulate in fp32.
#pragma once

#include "kernels/common.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>

/// Launcher-side check: throws cuboid::kernels::KernelError with the expression, file:line and the CUDA error.
#define CUDA_CHECK(expr) ::cuboid::kernels::check_cuda((expr), #expr, __FILE__, __LINE__)
/// NVTX range named after the enclosing launcher, visible in Nsight Systems (karpathy/llm.c NVTX_RANGE_FN).
#define NVTX_RANGE_FN() const ::cuboid::kernels::detail::NvtxRange nvtx_range_(__func__)

namespace cuboid::kernels::detail {

/// RAII NVTX push/pop (nvtx3 is header-only; without a profiler attached the calls are no-ops).
class NvtxRange {
public:
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

constexpr int WARP_SIZE = 32;
constexpr unsigned FULL_MASK = 0xffffffffu;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(FULL_MASK, v, offset);
  }
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) {
    v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
  }
  return v;
}

/// Sum over the whole block, returned to every thread. `scratch` holds >= 32 floats of shared memory; the block size
/// is a multiple of 32. Contains __syncthreads(): every thread of the block must call it.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = static_cast<int>(threadIdx.x) % WARP_SIZE;
  const int warp = static_cast<int>(threadIdx.x) / WARP_SIZE;
  const int warps = static_cast<int>(blockDim.x) / WARP_SIZE;
  v = warp_sum(v);
  __syncthreads(); // scratch may still be read by a previous call
  if (lane == 0) {
    scratch[warp] = v;
  }
  __syncthreads();
  float total = lane < warps ? scratch[lane] : 0.0f;
  total = warp_sum(total);
  return total;
}

/// Max over the whole block, returned to every thread (same contract as block_sum).
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = static_cast<int>(threadIdx.x) % WARP_SIZE;
  const int warp = static_cast<int>(threadIdx.x) / WARP_SIZE;
  const int warps = static_cast<int>(blockDim.x) / WARP_SIZE;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) {
    scratch[warp] = v;
  }
  __syncthreads();
  float total = lane < warps ? scratch[lane] : -INFINITY;
  total = warp_max(total);
  return total;
}

} // namespace cuboid::kernels::detail

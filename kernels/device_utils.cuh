// Device-side helpers shared by the kernel files (.cu only, never included by host C++): the CUDA_CHECK macro of
// the launchers, fp32 <-> element-type conversion, 16-byte vector packing, and warp / block reductions by shuffles
// (as karpathy/llm.c llmc/cuda_utils.cuh). All reductions accumulate in fp32.
#pragma once

#include "kernels/common.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>

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

/// The column of a grid-stride index over a row-major (rows, cols) tensor: one 64-bit modulo per thread, then each
/// grid stride advances it with an add and a compare (stride % cols < cols), not a modulo per element. cols <= 0:
/// no columns (a kernel without a per-column operand), the cursor stays 0.
struct ColumnCursor {
  std::int64_t col = 0;
  std::int64_t step = 0;
  std::int64_t cols = 0;
  __device__ __forceinline__ ColumnCursor(std::int64_t idx, std::int64_t stride, std::int64_t columns)
      : col(columns > 0 ? idx % columns : 0), step(columns > 0 ? stride % columns : 0), cols(columns) {}
  __device__ __forceinline__ void advance() {
    col += step;
    col -= col >= cols ? cols : 0;
  }
};

// ---- 16-byte vectors
// Memory-bound kernels move 16 bytes per thread and access (one uint4: 8 bf16 or 4 fp32) instead of 2 or 4: scalar
// 2-byte accesses issue 8x the load / store instructions for the same bytes, and such kernels typically stay well
// below HBM bandwidth (karpathy/llm.c llmc/cuda_utils.cuh Packed128; not yet measured on a GPU here). The helpers
// below convert uint4 values to or from fp32 (bit-identical to to_float / from_float per element) and index arrays
// already cast to uint4; the cast itself stays in the .cu file, spelled reinterpret_cast<const uint4*>(ptr), so that
// the CUDA emulator (which rewrites .cu files, not headers) checks its 16-byte alignment. Launchers take the vector
// path only when vector_aligned() holds for every pointer and the element count (and, with a per-column bias, the
// column count) is a multiple of VEC<T>.

/// Bytes of one vector access.
constexpr int VEC_BYTES = 16;
/// Elements of T in one 16-byte vector: 8 bf16, 4 fp32.
template <typename T> constexpr int VEC = VEC_BYTES / static_cast<int>(sizeof(T));

/// Host-side launch check: `ptr` may be accessed as uint4 (16-byte aligned; null counts as aligned).
inline bool vector_aligned(const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % VEC_BYTES == 0; }

/// Host-side launch check of a vector path over T: `n` elements and rows of `cols` elements (pass VEC<T> when there
/// are no rows to respect) split into whole VEC<T>-element vectors, none straddling a row, and every pointer of
/// `ptrs` 16-byte aligned.
template <typename T> bool vector_path(std::int64_t n, std::int64_t cols, std::initializer_list<const void*> ptrs) {
  if (n % VEC<T> != 0 || cols % VEC<T> != 0) {
    return false;
  }
  for (const void* ptr : ptrs) {
    if (!vector_aligned(ptr)) {
      return false;
    }
  }
  return true;
}

/// out[0, VEC<T>) = to_float of the VEC<T> elements of T held in `raw` (memory order).
template <typename T> __device__ __forceinline__ void unpack(uint4 raw, float* out);
template <> __device__ __forceinline__ void unpack<float>(uint4 raw, float* out) {
  memcpy(out, &raw, sizeof(raw)); // a register move: fp32 needs no conversion
}
template <> __device__ __forceinline__ void unpack<bf16>(uint4 raw, float* out) {
  const unsigned words[4] = {raw.x, raw.y, raw.z, raw.w}; // memory order; little-endian: element 0 is the low half
  for (int w = 0; w < 4; ++w) {
    out[2 * w] = to_float(__ushort_as_bfloat16(static_cast<unsigned short>(words[w] & 0xffffu)));
    out[2 * w + 1] = to_float(__ushort_as_bfloat16(static_cast<unsigned short>(words[w] >> 16)));
  }
}

/// out[0, VEC<T>) = the fp32 elements [vec * VEC<T>, (vec + 1) * VEC<T>) of an fp32 array, i.e. the fp32 values
/// beside vector `vec` of T (a bias column block, a partial sum). `fp32_vecs` is the array as uint4s, cast in the .cu
/// file (reinterpret_cast<const uint4*>(array)) so that the emulator checks its alignment there.
template <typename T>
__device__ __forceinline__ void unpack_fp32_of(const uint4* fp32_vecs, std::int64_t vec, float* out) {
  constexpr int FP32_VECS = VEC<T> / VEC<float>; // uint4s of fp32 per vector of T
  for (int q = 0; q < FP32_VECS; ++q) {
    unpack<float>(fp32_vecs[vec * FP32_VECS + q], out + q * VEC<float>);
  }
}

/// The uint4 holding from_float<T>(in[k]) for k in [0, VEC<T>) (memory order).
template <typename T> __device__ __forceinline__ uint4 pack(const float* in);
template <> __device__ __forceinline__ uint4 pack<float>(const float* in) {
  uint4 raw;
  memcpy(&raw, in, sizeof(raw));
  return raw;
}
template <> __device__ __forceinline__ uint4 pack<bf16>(const float* in) {
  unsigned words[4];
  for (int w = 0; w < 4; ++w) {
    const unsigned lo = __bfloat16_as_ushort(from_float<bf16>(in[2 * w]));
    const unsigned hi = __bfloat16_as_ushort(from_float<bf16>(in[2 * w + 1]));
    words[w] = lo | (hi << 16);
  }
  return make_uint4(words[0], words[1], words[2], words[3]);
}

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

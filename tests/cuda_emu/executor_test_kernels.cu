// Kernels of the block executor's own tests (block_executor_test.cpp), written as ordinary CUDA and built through
// cu_to_cpp like kernels/*.cu. Each launcher returns what cudaGetLastError reports after the launch.
#include "tests/cuda_emu/executor_test_kernels.hpp"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

namespace cuboid::emu::test {

namespace {

constexpr unsigned FULL = 0xffffffffu;

// Each block reverses its slice through shared memory: correct only if the barrier orders every warp's writes
// before any read, and if every block gets its own view of the static shared array.
__global__ void reverse_kernel(const float* in, float* out) {
  __shared__ float tile[1024];
  const unsigned base = blockIdx.x * blockDim.x;
  tile[threadIdx.x] = in[base + threadIdx.x];
  __syncthreads();
  out[base + threadIdx.x] = tile[blockDim.x - 1 - threadIdx.x];
}

// Butterfly sum over each warp, then lane 0 of every warp adds its total to the block's slot of `out`.
__global__ void warp_sum_kernel(const float* in, float* out) {
  float v = in[blockIdx.x * blockDim.x + threadIdx.x];
  for (int offset = 16; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(FULL, v, offset);
  }
  const float broadcast = __shfl_sync(FULL, v, 7); // every lane holds the total: lane 7's equals lane 0's
  if (threadIdx.x % 32 == 0) {
    atomicAdd(out + blockIdx.x, broadcast);
  }
}

// Half of each warp waits at __syncwarp while the other half waits at __syncthreads: undefined on a GPU (a hang).
__global__ void divergent_kernel(float* out) {
  if (threadIdx.x % 32 < 16) {
    __syncwarp();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

// Lanes 16..31 exit, then lanes 0..15 read them through a shuffle: the value is undefined on a GPU.
__global__ void exited_lane_kernel(float* out) {
  if (threadIdx.x % 32 >= 16) {
    return;
  }
  out[threadIdx.x] = __shfl_xor_sync(FULL, 1.0f, 16);
}

// Copies the dynamic shared memory nobody wrote (the emulator fills it with 0xff bytes: NaN).
__global__ void uninitialised_shared_kernel(float* out) {
  extern __shared__ float scratch[];
  out[threadIdx.x] = scratch[threadIdx.x];
}

// One warp: C (16x16, fp32) = A (16x16 bf16, row-major) x B (16x16 bf16, column-major).
__global__ void wmma_kernel(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(c, acc, 16, wmma::mem_row_major);
}

// One warp loads a bf16 fragment at a (must be 32-byte aligned) with leading dimension ldm (a multiple of 8).
__global__ void wmma_load_kernel(const __nv_bfloat16* a, unsigned ldm, float* out) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::load_matrix_sync(fa, a, ldm);
  out[threadIdx.x] = 1.0f;
}

// One thread copies 16 bytes through uint4 pointers (both must be 16-byte aligned).
__global__ void vector_copy_kernel(const float* in, float* out) {
  *reinterpret_cast<uint4*>(out) = *reinterpret_cast<const uint4*>(in);
}

} // namespace

cudaError_t reverse_blocks(const float* in, float* out, unsigned blocks, unsigned threads) {
  reverse_kernel<<<blocks, threads>>>(in, out);
  return cudaGetLastError();
}

cudaError_t warp_sums(const float* in, float* out, unsigned blocks, unsigned threads) {
  warp_sum_kernel<<<blocks, threads>>>(in, out);
  return cudaGetLastError();
}

cudaError_t divergent_barrier(float* out) {
  divergent_kernel<<<1, 64>>>(out);
  return cudaGetLastError();
}

cudaError_t shuffle_from_exited_lane(float* out) {
  exited_lane_kernel<<<1, 32>>>(out);
  return cudaGetLastError();
}

cudaError_t read_uninitialised_shared(float* out, unsigned threads, std::size_t shared_bytes) {
  uninitialised_shared_kernel<<<1, threads, shared_bytes>>>(out);
  return cudaGetLastError();
}

cudaError_t wmma_load(const __nv_bfloat16* a, unsigned ldm, float* out) {
  wmma_load_kernel<<<1, 32>>>(a, ldm, out);
  return cudaGetLastError();
}

cudaError_t vector_copy(const float* in, float* out) {
  vector_copy_kernel<<<1, 1>>>(in, out);
  return cudaGetLastError();
}

cudaError_t wmma_16x16x16(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c) {
  wmma_kernel<<<1, 32>>>(a, b, c);
  return cudaGetLastError();
}

} // namespace cuboid::emu::test

// Launchers of the block executor's test kernels (executor_test_kernels.cu); each returns cudaGetLastError().
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>

namespace cuboid::emu::test {

cudaError_t reverse_blocks(const float* in, float* out, unsigned blocks, unsigned threads);
cudaError_t warp_sums(const float* in, float* out, unsigned blocks, unsigned threads);
cudaError_t divergent_barrier(float* out);
cudaError_t shuffle_from_exited_lane(float* out);
cudaError_t read_uninitialised_shared(float* out, unsigned threads, std::size_t shared_bytes);
cudaError_t wmma_16x16x16(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c);
/// wmma::load_matrix_sync of a 16x16 bf16 tile at `a` with leading dimension `ldm`.
cudaError_t wmma_load(const __nv_bfloat16* a, unsigned ldm, float* out);
/// 16 bytes from in to out through uint4 pointers.
cudaError_t vector_copy(const float* in, float* out);

} // namespace cuboid::emu::test

// The CUDA emulator's internal interface between its parts (tests/cuda_emu/). The emulator runs cuboid's CUDA code
// on the CPU so that the GPU backend's logic is tested where no GPU is present (CI, this project's build machines):
//  - kernels/*.cu are rewritten to C++ (cu_to_cpp.cpp: `k<<<grid, block, smem, stream>>>(...)` becomes a call of
//    emu::Launch) and compiled by the host compiler against cuda_emu.hpp, which supplies threadIdx, __syncthreads,
//    warp shuffles, atomics and wmma; block_executor.cpp runs every CUDA thread of a block as a fiber;
//  - cudart_emu.cpp, cublaslt_emu.cpp and nccl_emu.cpp define the CUDA runtime, cuBLASLt and NCCL entry points that
//    cuboid calls (same names and signatures as cuda_runtime_api.h, cublasLt.h, nccl.h), so exec/cuda links against
//    them instead of libcudart / libcublasLt / libnccl.
// Semantics: "device" memory is host memory; every stream operation (kernel launch, copy, memset, GEMM, collective)
// runs to completion in the calling thread when it is issued, so stream order, events and host synchronisation
// hold trivially. Timing (cudaEventElapsedTime) is host wall time. What the emulator checks, a GPU checks too
// (launch configuration, shared-memory opt-in, allocation bounds, divergent barriers); what it cannot show (races
// between streams, performance) needs a GPU.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

namespace cuboid::emu {

/// Records `error` as the error that the next cudaGetLastError() returns (and clears) and cudaPeekAtLastError()
/// returns; `detail` (may be empty) is printed to stderr with it, since a CUDA error code alone does not say which
/// kernel or check failed. Implemented in cudart_emu.cpp.
void set_last_error(cudaError_t error, const std::string& detail);

/// Largest dynamic shared memory (bytes) a launch of `kernel` may request: 48 KiB, or what
/// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n) raised it to (which may not exceed
/// device_properties().sharedMemPerBlockOptin). Implemented in cudart_emu.cpp.
std::size_t max_dynamic_shared_bytes(const void* kernel);

/// True for the default streams (nullptr, cudaStreamLegacy, cudaStreamPerThread) and for streams created by
/// cudaStreamCreate* and not yet destroyed. Implemented in cudart_emu.cpp.
bool is_valid_stream(cudaStream_t stream);

/// The properties the emulated devices report (an H100-like sm_90 device: 1024 threads per block, 48 KiB default
/// and 227 KiB opt-in shared memory per block, warp size 32). Implemented in cudart_emu.cpp.
const cudaDeviceProp& device_properties();

// ---- emulated device memory (device_memory.cpp): host memory, 256-byte aligned as cudaMalloc's, with a registry
// of live allocations so that copies, memsets, GEMMs and collectives check their ranges as a GPU's MMU would.

/// A new allocation of `bytes` (> 0) bytes, 256-byte aligned, filled with 0xff bytes (NaN as float and bf16, so a
/// read of memory nobody wrote shows up in results); nullptr when the host is out of memory.
void* allocate_device(std::size_t bytes);
/// Frees an allocation of allocate_device; false (and nothing freed) when `ptr` is not the start of a live one.
bool free_device(void* ptr);
/// Throws std::out_of_range naming `what`, the range and the allocation it overruns, unless [ptr, ptr + bytes) lies
/// inside one live allocation. bytes == 0 always passes.
void check_device_range(const void* ptr, std::size_t bytes, const char* what);
/// Bytes in live allocations (cudaMemGetInfo, leak checks in tests).
std::size_t device_bytes_in_use();

} // namespace cuboid::emu

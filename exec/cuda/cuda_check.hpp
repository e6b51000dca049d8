// CUDA_CHECK / CUBLAS_CHECK / NCCL_CHECK for exec/cuda (STYLE.md section 5, as NVIDIA/nccl-tests src/common.h
// CUDACHECK / NCCLCHECK): a failing status throws DeviceError
//   "cudaMalloc(&ptr, bytes) failed on rank 3 at exec/cuda/gemm.cpp:88: cudaErrorMemoryAllocation: out of memory
//    (host gpu-node-07)".
// The rank is the launcher's (RANK, then OMPI_COMM_WORLD_RANK; -1 when neither is set), read only to word the
// message. kernels/ has its own CUDA_CHECK (kernels/device_utils.cuh, KernelError); the two are never included
// together (that one is for .cu files only).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <string>

#define CUDA_CHECK(expr) ::cuboid::exec::cuda::check_cuda((expr), #expr, __FILE__, __LINE__)
#define CUBLAS_CHECK(expr) ::cuboid::exec::cuda::check_cublas((expr), #expr, __FILE__, __LINE__)
#define NCCL_CHECK(expr) ::cuboid::exec::cuda::check_nccl((expr), #expr, __FILE__, __LINE__)

namespace cuboid::exec::cuda {

void check_cuda(cudaError_t status, const char* expr, const char* file, int line);
void check_cublas(cublasStatus_t status, const char* expr, const char* file, int line);
void check_nccl(ncclResult_t status, const char* expr, const char* file, int line);

/// The launcher's rank of this process for messages (RANK, OMPI_COMM_WORLD_RANK), -1 if unknown.
int launcher_rank();
/// gethostname(), or "unknown-host".
std::string host_name();
/// The full DeviceError message for a failed call (exposed for tests).
std::string library_error_message(const char* expr, const char* file, int line, const std::string& detail);

} // namespace cuboid::exec::cuda

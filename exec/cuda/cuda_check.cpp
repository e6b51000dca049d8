// Status checks of exec/cuda: turn CUDA runtime, cuBLAS(Lt) and NCCL status codes into DeviceError.
#include "exec/cuda/cuda_check.hpp"

#include "exec/device_error.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <charconv>
#include <cstdlib>
#include <cstring>

namespace cuboid::exec::cuda {

int launcher_rank() {
  for (const char* name : {"RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"}) {
    const char* value = std::getenv(name);
    if (value == nullptr) {
      continue;
    }
    int rank = -1;
    const char* end = value + std::strlen(value);
    const auto [ptr, ec] = std::from_chars(value, end, rank);
    if (ec == std::errc() && ptr == end) {
      return rank;
    }
  }
  return -1;
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) {
    return "unknown-host";
  }
  return buf;
}

std::string library_error_message(const char* expr, const char* file, int line, const std::string& detail) {
  return device_error_message(expr, launcher_rank(), file, line, fmt::format("{} (host {})", detail, host_name()));
}

void check_cuda(cudaError_t status, const char* expr, const char* file, int line) {
  if (status != cudaSuccess) {
    throw DeviceError(library_error_message(
        expr, file, line, fmt::format("{}: {}", cudaGetErrorName(status), cudaGetErrorString(status))));
  }
}

void check_cublas(cublasStatus_t status, const char* expr, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw DeviceError(library_error_message(expr, file, line, cublasLtGetStatusString(status)));
  }
}

void check_nccl(ncclResult_t status, const char* expr, const char* file, int line) {
  if (status != ncclSuccess) {
    throw DeviceError(library_error_message(
        expr, file, line, fmt::format("{} (NCCL_DEBUG=WARN prints the cause)", ncclGetErrorString(status))));
  }
}

} // namespace cuboid::exec::cuda

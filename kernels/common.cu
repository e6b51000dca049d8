// Host helpers of kernels/common.cuh.
#include "kernels/common.cuh"

namespace cuboid::kernels {

void check_cuda(cudaError_t status, const char* expr, const char* file, int line) {
  if (status != cudaSuccess) {
    throw KernelError(std::string(expr) + " failed at " + file + ":" + std::to_string(line) + ": " +
                      cudaGetErrorName(status) + ": " + cudaGetErrorString(status));
  }
}

} // namespace cuboid::kernels

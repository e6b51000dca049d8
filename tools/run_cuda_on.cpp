// `cuboid run --backend cuda` with the CUDA backend built in: exec::cuda::run_training_cuda.
#include "exec/cuda/cuda_runtime.hpp"
#include "exec/cuda/launch_env.hpp"
#include "tools/run_cuda.hpp"

namespace cuboid::tools {

int cuda_launch_world_size() { return exec::cuda::read_process_launch_env().world_size; }

CudaTraining run_cuda_backend(const exec::RunOptions& options) {
  exec::cuda::CudaRunResult result = exec::cuda::run_training_cuda(options);
  CudaTraining out;
  out.run = std::move(result.run);
  out.is_root = result.is_root;
  out.world_size = result.world_size;
  out.launcher = result.launcher;
  out.device = result.device;
  out.peak_reserved_bytes = result.peak_reserved_bytes;
  out.peak_reserved_bytes_per_rank = std::move(result.peak_reserved_bytes_per_rank);
  out.attention_kernel = result.attention_kernel;
  return out;
}

} // namespace cuboid::tools

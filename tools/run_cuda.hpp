// `cuboid run --backend cuda`: the GPU half of tools/cmd_run.cpp. Built from run_cuda_on.cpp when the CUDA backend is
// (CUBOID_ENABLE_CUDA), from run_cuda_off.cpp otherwise (a clear error), so that cmd_run.cpp has no #ifdef.
#pragma once

#include "exec/runtime.hpp"

#include <string>
#include <vector>

namespace cuboid::tools {

struct CudaTraining {
  exec::RunResult run;
  bool is_root = true;
  int world_size = 1;
  std::string launcher;
  std::string device;
  double peak_reserved_bytes = 0.0;
  std::vector<double> peak_reserved_bytes_per_rank; // on rank 0: every world rank's pool high-water mark
  std::string attention_kernel;
};

/// World size of this launch (torchrun / mpirun environment, 1 for a single process); InputError if malformed.
int cuda_launch_world_size();

/// exec::cuda::run_training_cuda. Throws InputError when this cuboid was built without CUDA.
CudaTraining run_cuda_backend(const exec::RunOptions& options);

} // namespace cuboid::tools

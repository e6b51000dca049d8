// `cuboid run --backend cuda` in a build without the CUDA backend: a clear error naming the flag.
#include "exec/cuda/launch_env.hpp"
#include "model/errors.hpp"
#include "tools/run_cuda.hpp"

namespace cuboid::tools {

int cuda_launch_world_size() { return exec::cuda::read_process_launch_env().world_size; }

CudaTraining run_cuda_backend(const exec::RunOptions& /*options*/) {
  throw InputError(input_message("command line", "--backend",
                                 "cuda: this cuboid was built without the CUDA backend (configure with nvcc on PATH "
                                 "or -DCUBOID_ENABLE_CUDA=ON; valid here: cpu)"));
}

} // namespace cuboid::tools

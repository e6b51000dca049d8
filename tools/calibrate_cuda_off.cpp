// `cuboid calibrate --backend cuda` in a build without the CUDA backend (CUBOID_ENABLE_CUDA=OFF or no nvcc).
#include "model/errors.hpp"
#include "tools/calibrate_cuda.hpp"

namespace cuboid::tools {

CudaCalibration calibrate_cuda_backend(const model::ModelSpec& /*model*/, const model::Plan& /*plan*/,
                                       const std::string& /*gpu_name*/, double /*min_time_s*/,
                                       const std::vector<std::int64_t>& /*square_gemm_sizes*/,
                                       bool /*gemm_autotune*/) {
  throw InputError(input_message("command line", "--backend",
                                 "cuda: this cuboid was built without the CUDA backend (configure with nvcc on PATH "
                                 "or -DCUBOID_ENABLE_CUDA=ON; valid here: cpu)"));
}

} // namespace cuboid::tools

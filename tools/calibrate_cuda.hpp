// `cuboid calibrate --backend cuda`: the GPU half of tools/cmd_calibrate.cpp. Built from calibrate_cuda_on.cpp when
// the CUDA backend is (CUBOID_ENABLE_CUDA), from calibrate_cuda_off.cpp otherwise (a clear error), so that
// cmd_calibrate.cpp has no #ifdef.
#pragma once

#include "model/cost_profile.hpp"
#include "model/model_spec.hpp"
#include "model/plan.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace cuboid::tools {

struct CudaCalibration {
  model::CostProfile profile; // the same on every rank
  bool is_root = true;        // rank 0 of the launch (torchrun / mpirun / single process): it writes and prints
  std::string summary;        // human-readable lines: device, measured rates, fractions of the catalog peaks
};

/// Measures the GEMMs of `model` under `plan` (TP shards), attention, a memory-bound kernel, launch overhead and,
/// with several processes, NCCL all-reduce, relative to the catalog peaks of `gpu_name`; `square_gemm_sizes` (empty:
/// the default sweep of exec/cuda/cuda_calibration.hpp) are the M = N = K of the square GEMM sweep; `gemm_autotune`
/// picks the GEMMs' cuBLASLt algorithms as `cuboid run --gemm-algo autotune` does (false: heuristic). Throws
/// InputError when this cuboid was built without CUDA or `gpu_name` is unknown; DeviceError when no GPU is usable.
CudaCalibration calibrate_cuda_backend(const model::ModelSpec& model, const model::Plan& plan,
                                       const std::string& gpu_name, double min_time_s,
                                       const std::vector<std::int64_t>& square_gemm_sizes, bool gemm_autotune);

} // namespace cuboid::tools

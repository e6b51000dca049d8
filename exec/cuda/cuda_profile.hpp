// Turning GPU calibration measurements into a model::CostProfile (host-only, so it is unit-tested without a GPU):
// efficiencies are measured rates over the given peaks (dense BF16 FLOP/s, HBM bytes/s, link bytes/s), the GEMM table
// keeps every measured (m, n, k) point, and the all-reduce sweep is fitted to t = a + b S by least squares, with
// a = 2(n-1) alpha and b = 2(n-1) / (n B) for a ring (Thakur et al. 2005; nccl-tests doc/PERFORMANCE.md busbw).
#pragma once

#include "exec/calibration.hpp"
#include "model/cost_profile.hpp"
#include "model/gpu_spec.hpp"

#include <string>

namespace cuboid::exec::cuda {

struct DeviceDescription {
  std::string gpu;      // catalog name the profile applies to ("h100-sxm"), or the CUDA device name
  std::string device;   // cudaDeviceProp::name
  double num_sms = 0.0; // for wave quantisation in the cost model
};

/// Sets the peaks a GPU profile is relative to from the catalog entry (dense BF16 FLOP/s, HBM bandwidth, NVLink
/// bandwidth per direction) and names the profile "<gpu>-measured". For the caller of calibrate_cuda_job.
void set_catalog_peaks(const model::GpuSpec& gpu, CalibrationOptions& options);

/// GPU calibration results: the CPU backend's CalibrationResult plus what only the GPU path measures.
struct CudaCalibrationResult {
  CalibrationResult base;                 // gemms, allreduce, attention (forward), elementwise, launch overhead
  double attention_bwd_flops_per_s = 0.0; // fused attention backward (2.5x the forward FLOPs)
  DeviceDescription device;
};

/// Fills result.base.profile from the measurements in `result`. Throws InputError when a peak needed for a measured
/// quantity is missing (<= 0): GPU profiles are always relative to the catalog's peaks, never to the best measured
/// value, so that they can be compared with the shipped defaults.
void assemble_profile(CudaCalibrationResult& result, const CalibrationOptions& options, int world_size);

} // namespace cuboid::exec::cuda

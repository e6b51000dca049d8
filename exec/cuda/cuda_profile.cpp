// Profile assembly for GPU calibration (see cuda_profile.hpp).
#include "exec/cuda/cuda_profile.hpp"

#include "model/errors.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace cuboid::exec::cuda {

namespace {
void require_peak(double value, const char* field) {
  if (value <= 0.0) {
    throw InputError(input_message("calibration options", field,
                                   fmt::format("must be > 0 for a GPU profile (got {}); pass the GPU's catalog peak",
                                               value)));
  }
}
} // namespace

void set_catalog_peaks(const model::GpuSpec& gpu, CalibrationOptions& options) {
  options.peak_flops_per_s = gpu.bf16_flops_per_s;
  options.mem_bw_bytes_per_s = gpu.hbm_bw_bytes_per_s;
  options.link_bw_bytes_per_s = gpu.nvlink_bw_bytes_per_s;
  options.name = gpu.name + "-measured";
}

void assemble_profile(CudaCalibrationResult& cuda_result, const CalibrationOptions& options, int world_size) {
  CalibrationResult& result = cuda_result.base;
  const DeviceDescription& device = cuda_result.device;
  require_peak(options.peak_flops_per_s, "peak_flops_per_s");
  require_peak(options.mem_bw_bytes_per_s, "mem_bw_bytes_per_s");
  model::CostProfile& p = result.profile;
  p.name = options.name;
  p.gpu = device.gpu;
  p.source = fmt::format("measured by exec::cuda::calibrate_cuda on {} ({} rank(s))", device.device, world_size);
  const double peak = options.peak_flops_per_s;
  double best_gemm = 0.0;
  p.gemm_table.clear();
  for (const auto& g : result.gemms) {
    best_gemm = std::max(best_gemm, g.flops_per_s);
    p.gemm_table.push_back({g.m, g.n, g.k, std::min(1.0, g.flops_per_s / peak)});
  }
  p.gemm_max_efficiency = std::min(1.0, best_gemm / peak);
  p.gemm_fp8_max_efficiency = p.gemm_max_efficiency;
  p.assumptions.push_back("fp8 GEMM efficiency not measured: set equal to the bf16 one");
  p.num_sms = device.num_sms;
  p.attention_efficiency = std::min(1.0, result.attention_flops_per_s / peak);
  p.attention_bwd_efficiency = std::min(1.0, cuda_result.attention_bwd_flops_per_s / peak);
  p.hbm_efficiency = std::min(1.0, result.elementwise_bytes_per_s / options.mem_bw_bytes_per_s);
  p.launch_overhead_s = result.launch_overhead_s;
  if (result.allreduce.size() >= 2 && world_size > 1) {
    require_peak(options.link_bw_bytes_per_s, "link_bw_bytes_per_s");
    double sx = 0.0;
    double sy = 0.0;
    double sxx = 0.0;
    double sxy = 0.0;
    for (const auto& c : result.allreduce) {
      sx += c.msg_bytes;
      sy += c.time_s;
      sxx += c.msg_bytes * c.msg_bytes;
      sxy += c.msg_bytes * c.time_s;
    }
    const auto count = static_cast<double>(result.allreduce.size());
    const double slope = std::max(1e-18, (count * sxy - sx * sy) / std::max(1e-30, count * sxx - sx * sx));
    const double intercept = std::max(0.0, (sy - slope * sx) / count);
    const double steps = 2.0 * (world_size - 1);
    const double bus_bw = steps / (static_cast<double>(world_size) * slope);
    p.nvlink_efficiency = std::min(1.0, bus_bw / options.link_bw_bytes_per_s);
    p.nvlink_latency_s = intercept / steps;
    p.assumptions.push_back(fmt::format("NCCL all-reduce over {} GPUs of one node: fitted bus bandwidth {:.4g} B/s, "
                                        "latency {:.3g} s per ring step; inter-node (nic) values not measured",
                                        world_size, bus_bw, p.nvlink_latency_s));
  } else {
    p.assumptions.push_back("collectives not measured (one GPU): communication values are the defaults");
  }
}

} // namespace cuboid::exec::cuda

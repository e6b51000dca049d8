// `cuboid calibrate --backend cuda` with the CUDA backend: exec::cuda::calibrate_cuda_job on the launch's GPU(s),
// peaks from the GPU catalog (so the profile's fractions compare with the shipped defaults).
#include "exec/cuda/cuda_calibration.hpp"
#include "exec/cuda/cuda_profile.hpp"
#include "exec/cuda/launch_env.hpp"
#include "model/hardware_catalog.hpp"
#include "tools/calibrate_cuda.hpp"

#include <fmt/format.h>

namespace cuboid::tools {

namespace {
constexpr double TERA = 1e12;
constexpr double GIGA = 1e9;
} // namespace

CudaCalibration calibrate_cuda_backend(const model::ModelSpec& model, const model::Plan& plan,
                                       const std::string& gpu_name, double min_time_s,
                                       const std::vector<std::int64_t>& square_gemm_sizes, bool gemm_autotune) {
  const model::GpuSpec gpu = model::find_gpu(gpu_name, "command line: --gpu");
  exec::cuda::CudaCalibrationOptions options;
  exec::cuda::set_catalog_peaks(gpu, options.base);
  options.base.min_time_s = min_time_s;
  if (!square_gemm_sizes.empty()) {
    options.square_gemm_sizes = square_gemm_sizes;
  }
  options.gpu = gpu.name;
  options.gemm_algo =
      gemm_autotune ? exec::cuda::GemmAlgoSelection::Autotune : exec::cuda::GemmAlgoSelection::Heuristic;
  const exec::cuda::LaunchEnv launch = exec::cuda::read_process_launch_env();
  const exec::cuda::CudaCalibrationResult result = exec::cuda::calibrate_cuda_job(model, plan, options);
  CudaCalibration out;
  out.profile = result.base.profile;
  out.is_root = launch.rank == 0;
  out.summary += fmt::format("# cuboid calibrate --backend cuda: {} ({}, {} SMs), {} process(es) via {}\n",
                             result.device.device, gpu.name, result.device.num_sms, launch.world_size,
                             launch.launcher);
  out.summary += "#  gemm              M      N      K    TFLOP/s  of peak\n";
  for (const auto& g : result.base.gemms) {
    out.summary += fmt::format("   {:<14} {:>6.0f} {:>6.0f} {:>6.0f} {:>10.1f} {:>7.1f}%\n", g.label, g.m, g.n, g.k,
                               g.flops_per_s / TERA, 100.0 * g.flops_per_s / options.base.peak_flops_per_s);
  }
  out.summary += fmt::format("attention fwd {:.1f} TFLOP/s, bwd {:.1f} TFLOP/s; memory-bound {:.0f} GB/s; launch "
                             "{:.1f} us\n",
                             result.base.attention_flops_per_s / TERA, result.attention_bwd_flops_per_s / TERA,
                             result.base.elementwise_bytes_per_s / GIGA, result.base.launch_overhead_s * 1e6);
  return out;
}

} // namespace cuboid::tools

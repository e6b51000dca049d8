// exec::cuda::assemble_profile on synthetic measurements: efficiencies are measured rate / catalog peak, and the
// all-reduce least-squares fit recovers the alpha and bus bandwidth the synthetic times were generated from.
#include "exec/cuda/cuda_profile.hpp"
#include "model/errors.hpp"

#include <catch2/catch.hpp>

using Catch::Matchers::WithinRel;
using cuboid::exec::cuda::CudaCalibrationResult;

namespace {
cuboid::exec::GemmMeasurement gemm(const char* label, double m, double n, double k, double time_s,
                                   double flops_per_s) {
  cuboid::exec::GemmMeasurement point;
  point.label = label;
  point.m = m;
  point.n = n;
  point.k = k;
  point.time_s = time_s;
  point.flops_per_s = flops_per_s;
  point.backend_time_s = time_s;
  return point;
}

CudaCalibrationResult synthetic() {
  CudaCalibrationResult r;
  r.device = {"h100-sxm", "NVIDIA H100 80GB HBM3", 132.0};
  r.base.gemms.push_back(gemm("qkv.fwd", 4096, 3072, 1024, 1e-3, 600e12));
  r.base.gemms.push_back(gemm("square.512", 512, 512, 512, 1e-5, 100e12));
  r.base.attention_flops_per_s = 300e12;
  r.attention_bwd_flops_per_s = 200e12;
  r.base.elementwise_bytes_per_s = 2.68e12;
  r.base.launch_overhead_s = 3e-6;
  return r;
}
cuboid::exec::CalibrationOptions peaks() {
  cuboid::exec::CalibrationOptions o;
  o.peak_flops_per_s = 989e12;    // H100 SXM dense BF16 (NVIDIA H100 datasheet)
  o.mem_bw_bytes_per_s = 3.35e12; // H100 SXM HBM3 (same datasheet)
  o.link_bw_bytes_per_s = 450e9;  // NVLink 4 per direction (same datasheet: 900 GB/s bidirectional)
  o.name = "h100-measured";
  return o;
}
} // namespace

TEST_CASE("exec::cuda::assemble_profile: compute efficiencies are rate / peak", "[exec][cuda]") {
  auto r = synthetic();
  cuboid::exec::cuda::assemble_profile(r, peaks(), 1);
  const auto& p = r.base.profile;
  CHECK(p.gpu == "h100-sxm");
  CHECK(p.name == "h100-measured");
  CHECK_THAT(p.gemm_max_efficiency, WithinRel(600.0 / 989.0, 1e-12));
  REQUIRE(p.gemm_table.size() == 2);
  CHECK_THAT(p.gemm_table[1].efficiency, WithinRel(100.0 / 989.0, 1e-12));
  CHECK_THAT(p.attention_efficiency, WithinRel(300.0 / 989.0, 1e-12));
  CHECK_THAT(p.attention_bwd_efficiency, WithinRel(200.0 / 989.0, 1e-12));
  CHECK_THAT(p.hbm_efficiency, WithinRel(2.68 / 3.35, 1e-12));
  CHECK(p.launch_overhead_s == 3e-6);
  CHECK(p.num_sms == 132.0);
}

TEST_CASE("exec::cuda::assemble_profile: ring all-reduce fit", "[exec][cuda]") {
  // 8 ranks, alpha = 5 us per ring step and bus bandwidth 360 GB/s: t(S) = 2(n-1) alpha + 2(n-1)/n * S / B.
  const int n = 8;
  const double alpha = 5e-6;
  const double bus = 360e9;
  auto r = synthetic();
  for (const double bytes : {1e6, 16e6, 256e6, 1e9}) {
    const double t = 2.0 * (n - 1) * alpha + 2.0 * (n - 1) / n * bytes / bus;
    r.base.allreduce.push_back({bytes, t, bytes / t, bytes / t * 2.0 * (n - 1) / n});
  }
  cuboid::exec::cuda::assemble_profile(r, peaks(), n);
  CHECK_THAT(r.base.profile.nvlink_latency_s, WithinRel(alpha, 1e-6));
  CHECK_THAT(r.base.profile.nvlink_efficiency, WithinRel(bus / 450e9, 1e-6));
}

TEST_CASE("exec::cuda::assemble_profile: missing peaks are input errors", "[exec][cuda]") {
  auto r = synthetic();
  auto o = peaks();
  o.peak_flops_per_s = 0.0;
  REQUIRE_THROWS_AS(cuboid::exec::cuda::assemble_profile(r, o, 1), cuboid::InputError);
  REQUIRE_THROWS_WITH(cuboid::exec::cuda::assemble_profile(r, o, 1), Catch::Contains("peak_flops_per_s"));
}

TEST_CASE("exec::cuda::set_catalog_peaks: the profile is relative to the catalog's peaks", "[exec][cuda]") {
  cuboid::model::GpuSpec gpu;
  gpu.name = "h100-sxm";
  gpu.bf16_flops_per_s = 989e12;
  gpu.hbm_bw_bytes_per_s = 3.35e12;
  gpu.nvlink_bw_bytes_per_s = 450e9;
  cuboid::exec::CalibrationOptions o;
  cuboid::exec::cuda::set_catalog_peaks(gpu, o);
  CHECK(o.peak_flops_per_s == 989e12);
  CHECK(o.mem_bw_bytes_per_s == 3.35e12);
  CHECK(o.link_bw_bytes_per_s == 450e9);
  CHECK(o.name == "h100-sxm-measured");
}

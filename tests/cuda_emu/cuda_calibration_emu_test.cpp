// `cuboid calibrate --backend cuda` (exec/cuda/cuda_calibration.cpp) on the CUDA emulator: the whole measurement
// path (GEMM sweep over the model's shapes, attention forward / backward, memory-bound kernel, launch overhead,
// NCCL all-reduce sweep over two emulated devices) runs and yields a profile that the simulator accepts. The
// emulator's times are the CPU's, so only the structure and the sanity of the numbers are asserted, not their size:
// the GPU figures themselves need a GPU (BENCHMARKS.md, "GPU backend").
#include "exec/cuda/cuda_calibration.hpp"
#include "exec/cuda/nccl_communicator.hpp"
#include "model/cost_profile.hpp"
#include "model/hardware_catalog.hpp"
#include "model/model_catalog.hpp"

#include <catch2/catch.hpp>

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdio>
#include <thread>

using namespace cuboid;

namespace {

exec::cuda::CudaCalibrationOptions small_options() {
  exec::cuda::CudaCalibrationOptions options;
  exec::cuda::set_catalog_peaks(model::find_gpu("h100-sxm", "test"), options.base);
  options.gpu = "h100-sxm";
  options.base.min_time_s = 0.0; // one repeat per measurement: the emulator is ~10^6 times slower than a GPU
  options.base.allreduce_bytes = {4096, 65536};
  options.square_gemm_sizes = {64, 128};
  options.elementwise_elements = 1 << 16;
  return options;
}

void check_profile(const exec::cuda::CudaCalibrationResult& result, std::size_t model_gemms) {
  const model::CostProfile& p = result.base.profile;
  CHECK(p.gpu == "h100-sxm");
  CHECK(p.name == "h100-sxm-measured");
  // Every GEMM of the model's layers (forward, dgrad, wgrad) and the square sweep is a table point.
  CHECK(result.base.gemms.size() >= model_gemms);
  CHECK(p.gemm_table.size() == result.base.gemms.size());
  for (const auto& g : result.base.gemms) {
    CAPTURE(g.label, g.m, g.n, g.k);
    CHECK(g.time_s > 0.0);
    CHECK(g.flops_per_s > 0.0);
    CHECK(g.flops_per_s < 989e12); // the CPU is far below an H100's peak: a unit mix-up would show here
  }
  for (const auto& point : p.gemm_table) {
    CHECK(point.efficiency > 0.0);
    CHECK(point.efficiency < 1.0);
  }
  CHECK(result.base.attention_flops_per_s > 0.0);
  CHECK(result.attention_bwd_flops_per_s > 0.0);
  CHECK(p.attention_efficiency > 0.0);
  CHECK(p.attention_efficiency < 1.0);
  CHECK(p.hbm_efficiency > 0.0);
  CHECK(p.hbm_efficiency < 1.0);
  CHECK(p.launch_overhead_s > 0.0);
  CHECK(result.device.device.find("emulator") != std::string::npos);
  // The simulator reads it back as it reads a shipped profile.
  const std::string path = std::string(CUBOID_TEST_WORK_DIR) + "/emu-calibrated-profile.yaml";
  model::save_profile(p, path);
  const model::CostProfile loaded = model::load_profile(path);
  CHECK(loaded.gemm_table.size() == p.gemm_table.size());
  CHECK(loaded.attention_efficiency == Approx(p.attention_efficiency));
  std::remove(path.c_str());
}

} // namespace

TEST_CASE("calibrate_cuda on the emulator: one device, gpt-tiny, the profile the simulator reads", "[emu][cuda]") {
  const model::ModelSpec spec = model::find_model("gpt-tiny");
  model::Plan plan;
  plan.micro_batch_size = 1;
  plan.global_batch_size = 1;
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  const auto result = exec::cuda::calibrate_cuda(spec, plan, small_options(), nullptr);
  // gpt-tiny's linear layers: qkv, proj, fc1, fc2 and the output layer, three GEMMs each.
  check_profile(result, 5 * 3);
  CHECK(result.base.allreduce.empty()); // one rank: no collective sweep
}

TEST_CASE("calibrate_cuda on the emulator: two devices measure the NCCL all-reduce sweep", "[emu][cuda]") {
  int devices = 0;
  REQUIRE(cudaGetDeviceCount(&devices) == cudaSuccess);
  REQUIRE(devices >= 2); // ctest sets CUBOID_EMU_DEVICES
  const model::ModelSpec spec = model::find_model("gpt-tiny");
  model::Plan plan;
  plan.micro_batch_size = 1;
  plan.global_batch_size = 1;
  std::vector<int> ids = {0, 1};
  std::vector<cudaStream_t> streams(2);
  for (int dev = 0; dev < 2; ++dev) {
    REQUIRE(cudaSetDevice(dev) == cudaSuccess);
    REQUIRE(cudaStreamCreate(&streams[static_cast<std::size_t>(dev)]) == cudaSuccess);
  }
  auto comms = exec::cuda::NcclCommunicator::init_all(ids, streams);
  std::vector<exec::cuda::CudaCalibrationResult> results(2);
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      const auto r = static_cast<std::size_t>(rank);
      try {
        cudaSetDevice(rank);
        results[r] = exec::cuda::calibrate_cuda(spec, plan, small_options(), comms[r].get());
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  CHECK(errors[0].empty());
  CHECK(errors[1].empty());
  for (const auto& result : results) {
    REQUIRE(result.base.allreduce.size() == 2);
    for (const auto& c : result.base.allreduce) {
      CHECK(c.time_s > 0.0);
      CHECK(c.busbw_bytes_per_s > 0.0);
    }
    check_profile(result, 5 * 3);
  }
  // Every rank gets the same profile (the slowest rank's times).
  CHECK(results[0].base.profile.nvlink_efficiency == results[1].base.profile.nvlink_efficiency);
  comms.clear();
  for (auto s : streams) {
    cudaStreamDestroy(s);
  }
}

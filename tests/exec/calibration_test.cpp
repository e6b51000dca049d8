// Calibration: every measured number is positive, every efficiency a fraction, and the profile survives
// model::save_profile / load_profile (the format `cuboid calibrate` writes).
#include "test_models.hpp"

#include "exec/calibration.hpp"
#include "exec/local_communicator.hpp"

#include <catch2/catch.hpp>

#include <cstdio>

namespace cuboid::exec {
namespace {

TEST_CASE("exec::calibrate: a CPU profile from the model's GEMM shapes", "[exec]") {
  LocalCommunicator world;
  CalibrationOptions options;
  options.min_time_s = 0.001;
  const model::Plan plan = test::single_rank_plan(1, 1);
  const CalibrationResult result = calibrate(test::toy_gpt(), plan, options, world);
  REQUIRE(result.gemms.size() == 15); // 5 linears x (fwd, dgrad, wgrad)
  for (const auto& g : result.gemms) {
    CHECK(g.time_s > 0.0);
    CHECK(g.flops_per_s > 0.0);
  }
  CHECK(result.allreduce.empty()); // one rank: nothing to reduce
  const model::CostProfile& p = result.profile;
  CHECK(p.gemm_max_efficiency == Approx(1.0)); // peak unknown: the best GEMM is the peak
  for (const auto& point : p.gemm_table) {
    CHECK(point.efficiency > 0.0);
    CHECK(point.efficiency <= 1.0);
  }
  CHECK(p.attention_efficiency > 0.0);
  CHECK(p.hbm_efficiency == Approx(1.0));
  CHECK(p.launch_overhead_s >= 0.0);
  CHECK(result.tiny_op_s > 0.0);
  REQUIRE(result.units.size() == 7); // embedding, layer, head (fwd, bwd) and the optimizer of one TP shard
  for (const auto& u : result.units) {
    CHECK(u.time_s > 0.0);
    CHECK(u.memory_ops >= 1.0); // every unit has a norm, activation, residual, lookup, loss or Adam op
  }
  CHECK_FALSE(p.assumptions.empty());

  const std::string path = "exec_calibration_test_profile.yaml";
  model::save_profile(p, path);
  const model::CostProfile loaded = model::load_profile(path);
  std::remove(path.c_str());
  CHECK(loaded.gemm_table.size() == p.gemm_table.size());
  CHECK(loaded.launch_overhead_s == Approx(p.launch_overhead_s));
}

} // namespace
} // namespace cuboid::exec

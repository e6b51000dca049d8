// End-to-end tests of build_report() (sim/analysis/report.hpp) on a 0.6 B-parameter GPT on A100 nodes: every option
// is in the JSON with consistent arithmetic, the recommended plan's charts have data, and the straggler and the
// sensitivity move the answer in the expected direction.
#include "sim/analysis/report.hpp"

#include "model/cost_profile.hpp"
#include "model/errors.hpp"

#include <catch2/catch.hpp>

using namespace cuboid;
using namespace cuboid::sim::analysis;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {
constexpr double TOL = 1e-9;

// A GPT-3-style 0.6 B model: small enough that a search over 16 and 32 GPUs takes well under a second.
model::ModelSpec small_gpt() {
  model::ModelSpec spec;
  spec.name = "gpt-0.6b";
  spec.num_layers = 12;
  spec.hidden_size = 2048;
  spec.num_attention_heads = 16;
  spec.num_query_groups = 16;
  spec.head_dim = 128;
  spec.ffn_hidden_size = 8192;
  spec.vocab_size = 51200;
  spec.seq_length = 2048;
  return spec;
}

// DGX A100 numbers of scenarios/hardware/gpus.csv (HDR InfiniBand 200 Gb/s per GPU).
model::ClusterSpec a100_cluster() {
  model::ClusterSpec cluster;
  cluster.name = "dgx-a100";
  cluster.gpu.name = "a100-80gb";
  cluster.gpu.bf16_flops_per_s = 312e12;
  cluster.gpu.fp16_flops_per_s = 312e12;
  cluster.gpu.hbm_bytes = 80e9;
  cluster.gpu.hbm_bw_bytes_per_s = 2.039e12;
  cluster.gpu.nvlink_bw_bytes_per_s = 300e9;
  cluster.gpu.power_w = 400.0;
  cluster.num_gpus = 16;
  cluster.gpus_per_node = 8;
  cluster.nvlink_bw_bytes_per_s = 300e9;
  cluster.nvlink_latency_s = 5e-6;
  cluster.nic_bw_bytes_per_s = 25e9;
  cluster.net_latency_s = 10e-6;
  return cluster;
}

ReportInputs small_inputs() {
  ReportInputs inputs;
  inputs.model = small_gpt();
  ReportGpu gpu;
  gpu.cluster = a100_cluster();
  gpu.profile = model::default_profile("a100-80gb");
  gpu.price = *default_price("a100-80gb");
  gpu.power = {400.0, "test"};
  inputs.gpus.push_back(gpu);
  inputs.num_gpus = {16, 32};
  inputs.space.global_batch_size = 64;
  inputs.space.micro_batch_size = {1, 2};
  inputs.tokens = 10e9;
  inputs.straggler_slowdown = 1.2;
  inputs.jobs = 1;
  return inputs;
}

// cost = gpu_hours * price, gpu_hours = gpus * hours, energy = gpu_hours * W * overhead * PUE, as printed.
void check_projection(const nlohmann::json& p, int gpus, double price, double watts, const ReportInputs& inputs) {
  const double gpu_hours = p["gpu_hours"].get<double>();
  REQUIRE_THAT(gpu_hours, WithinRel(gpus * p["time_s"].get<double>() / 3600.0, TOL));
  REQUIRE_THAT(p["cost_usd"].get<double>(), WithinRel(gpu_hours * price, TOL));
  REQUIRE_THAT(p["energy_kwh"].get<double>(),
               WithinRel(gpu_hours * watts * inputs.server_overhead * inputs.pue / 1000.0, TOL));
  REQUIRE_THAT(p["days"].get<double>(), WithinRel(p["time_s"].get<double>() / 86400.0, TOL));
}
} // namespace

TEST_CASE("sim::analysis::build_report: tokens goal, arithmetic and charts", "[sim][report]") {
  const ReportInputs inputs = small_inputs();
  const Report report = build_report(inputs);
  const nlohmann::json json = report_to_json(report);
  REQUIRE(json["options"].size() == 2);
  for (const auto& option : json["options"]) {
    CAPTURE(option["num_gpus"]);
    REQUIRE(option["feasible"] == true);
    const int gpus = option["num_gpus"].get<int>();
    const double price = option["price"]["usd_per_gpu_hour"].get<double>();
    const double goodput = option["goodput"]["goodput_fraction"].get<double>();
    REQUIRE(goodput > 0.0);
    REQUIRE(goodput <= 1.0);
    check_projection(option["ideal"], gpus, price, 400.0, inputs);
    check_projection(option["with_failures"], gpus, price, 400.0, inputs);
    REQUIRE_THAT(option["ideal"]["time_s"].get<double>(),
                 WithinRel(inputs.tokens / option["tokens_per_s"].get<double>(), TOL));
    REQUIRE_THAT(option["with_failures"]["time_s"].get<double>(),
                 WithinRel(option["ideal"]["time_s"].get<double>() / goodput, TOL));
    REQUIRE_THAT(option["usd_per_million_tokens"].get<double>(),
                 WithinRel(option["with_failures"]["cost_usd"].get<double>() / inputs.tokens * 1e6, TOL));
    REQUIRE_THAT(option["goodput"]["job_mtbf_s"].get<double>(), WithinRel(50'000.0 * 3600.0 / gpus, TOL));
    // One GPU 1.2x slower slows the job by at most 1.2x (communication keeps its speed) and never speeds it up.
    const double slowdown = option["straggler"]["job_slowdown"].get<double>();
    REQUIRE(slowdown >= 1.0);
    REQUIRE(slowdown <= 1.2 + 1e-9);
    REQUIRE(option["plan"]["tp"].get<int>() * option["plan"]["pp"].get<int>() * option["plan"]["dp"].get<int>() ==
            gpus);
  }
  REQUIRE(report.recommended.has_value());
  const ReportOption& best = report.options[*report.recommended];
  REQUIRE_FALSE(report.timeline.empty());
  REQUIRE(static_cast<int>(report.memory.size()) == best.plan.pp);
  REQUIRE(report.hbm_bytes == 80e9);
  for (const auto& block : report.timeline) {
    REQUIRE(block.start_s >= 0.0);
    REQUIRE(block.end_s <= report.timeline_step_s * (1.0 + 1e-9));
  }
  REQUIRE(report.sensitivity.size() == 4);
  const double base_time = best.with_failures.time_s;
  for (const auto& row : report.sensitivity) {
    CAPTURE(row.input);
    if (row.input == "GPU-hour price") {
      REQUIRE_THAT(row.low.time_s, WithinRel(base_time, TOL));
      REQUIRE_THAT(row.low.cost_usd, WithinRel(0.8 * best.with_failures.cost_usd, TOL));
    } else {
      // Less GEMM efficiency, NIC bandwidth or MTBF never makes the job faster; more never makes it slower.
      REQUIRE(row.low.time_s >= base_time * (1.0 - 1e-9));
      REQUIRE(row.high.time_s <= base_time * (1.0 + 1e-9));
    }
  }
}

TEST_CASE("sim::analysis::build_report: days goal reports the tokens reached", "[sim][report]") {
  ReportInputs inputs = small_inputs();
  inputs.goal = ReportGoal::Days;
  inputs.days = 30.0;
  inputs.straggler_slowdown = 0.0;
  const Report report = build_report(inputs);
  for (const auto& option : report.options) {
    REQUIRE(option.feasible);
    REQUIRE_FALSE(option.straggler.has_value());
    REQUIRE_THAT(option.with_failures.time_s, WithinRel(30.0 * 86400.0, TOL));
    REQUIRE_THAT(option.with_failures.tokens, WithinRel(option.result.tokens_per_s *
                                                            option.goodput.goodput_fraction * 30.0 * 86400.0,
                                                        TOL));
    REQUIRE_THAT(option.with_failures.cost_usd,
                 WithinRel(option.num_gpus * 30.0 * 24.0 * option.price.usd_per_gpu_hour, TOL));
  }
}

TEST_CASE("sim::analysis::build_report: bad inputs name the flag", "[sim][report]") {
  ReportInputs inputs = small_inputs();
  inputs.tokens = 0.0;
  REQUIRE_THROWS_WITH(build_report(inputs), Contains("--tokens"));
  inputs = small_inputs();
  inputs.pue = 0.9;
  REQUIRE_THROWS_WITH(build_report(inputs), Contains("--pue"));
  inputs = small_inputs();
  inputs.straggler_slowdown = 0.5;
  REQUIRE_THROWS_WITH(build_report(inputs), Contains("--straggler-slowdown"));
  inputs = small_inputs();
  inputs.gpus.front().price.usd_per_gpu_hour = -1.0;
  REQUIRE_THROWS_AS(build_report(inputs), InputError);
}

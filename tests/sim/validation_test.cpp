// Tests for `cuboid validate` reporting (sim/analysis/validation.hpp): MAPE per source, JSON and table output.
#include "sim/analysis/validation.hpp"

#include "model/cost_model.hpp"
#include "model/hardware_catalog.hpp"
#include "model/model_catalog.hpp"
#include "model/step_builder.hpp"
#include "sim/simulator.hpp"

#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>

using namespace cuboid::sim::analysis;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {

ValidationRow ok_row(const std::string& id, const std::string& source, double measured, double predicted) {
  ValidationRow row;
  row.id = id;
  row.source = source;
  row.measured_step_s = measured;
  row.predicted_step_s = predicted;
  row.error_pct = 100.0 * (predicted - measured) / measured;
  row.dominant = "compute";
  row.shares = {0.8, 0.15, 0.05};
  row.layout = "tp8 pp1 dp4 mbs1 gbs64 bf16";
  return row;
}

ValidationRow other_row(std::string id, RunStatus status, std::string reason) {
  ValidationRow row;
  row.id = std::move(id);
  row.source = std::string("sc21");
  row.status = status;
  row.reason = std::move(reason);
  return row;
}

ValidationReport sample_report() {
  ValidationReport report;
  report.csv_path = "runs.csv";
  report.rows.push_back(ok_row("a", "sc21", 10.0, 11.0));   // +10 %
  report.rows.push_back(ok_row("b", "sc21", 10.0, 9.0));    // -10 %
  report.rows.push_back(ok_row("c", "dgxc", 2.0, 2.1));     // +5 %
  report.rows.back().measured_mem_gib = 40.0;
  report.rows.back().predicted_mem_gib = 44.0;              // 10 % off
  report.rows.push_back(other_row("d", RunStatus::Skipped, "no layout"));
  report.rows.push_back(other_row("e", RunStatus::Unsupported, "context parallelism cp=2 is not modelled"));
  summarise(report);
  return report;
}

// GPT-3 175B on 128 A100 as SC21-era Megatron ran it: TP8 PP8 DP2, 8 micro-batches per replica, the DP reduction
// after the backward, full recompute.
cuboid::model::Plan gpt3_128_gpu_plan() {
  cuboid::model::Plan plan;
  plan.tp = 8;
  plan.pp = 8;
  plan.dp = 2;
  plan.global_batch_size = 16;
  plan.overlap_grad_reduce = false;
  plan.recompute = cuboid::model::Recompute::Full;
  return plan;
}

} // namespace

// MAPE = mean |error| over Ok rows only: sc21 (10 + 10) / 2 = 10, dgxc 5, overall 25 / 3; bias sc21 0.
TEST_CASE("sim::analysis::summarise: MAPE overall and per source", "[validate]") {
  const ValidationReport report = sample_report();
  CHECK(report.ok == 3);
  CHECK(report.skipped == 1);
  CHECK(report.unsupported == 1);
  CHECK(report.infeasible == 0);
  CHECK_THAT(report.per_source.at("sc21").mape_pct, WithinRel(10.0, 1e-9));
  CHECK(std::abs(report.per_source.at("sc21").bias_pct) < 1e-9);
  CHECK_THAT(report.per_source.at("dgxc").mape_pct, WithinRel(5.0, 1e-9));
  CHECK_THAT(report.overall.mape_pct, WithinRel(25.0 / 3.0, 1e-9));
  REQUIRE(report.memory_mape_pct);
  CHECK_THAT(*report.memory_mape_pct, WithinRel(10.0, 1e-9));
}

TEST_CASE("sim::analysis::to_json and format_table", "[validate]") {
  const ValidationReport report = sample_report();
  const nlohmann::json json = to_json(report);
  CHECK(json["counts"]["ok"] == 3);
  CHECK(json["rows"].size() == 5);
  CHECK(json["rows"][0]["dominant"] == "compute");
  CHECK(json["rows"][3]["status"] == "skipped");
  CHECK(json["rows"][4]["reason"] == "context parallelism cp=2 is not modelled");
  CHECK(json["per_source"]["dgxc"]["rows"] == 1);
  const std::string table = format_table(report);
  CHECK_THAT(table, Contains("# cuboid validate: runs.csv"));
  CHECK_THAT(table, Contains("(s)"));
  CHECK_THAT(table, Contains("+10.0"));
  CHECK_THAT(table, Contains("unsupported  context parallelism cp=2"));
  CHECK_THAT(table, Contains("overall"));
  CHECK_THAT(table, Contains("peak memory MAPE over rows with a measurement: 10.0 %"));
}

// End to end on one shipped row: SC21 Table 1 1.7B (32 A100, tp1 pp1 dp32, full recompute) is mapped, simulated
// and compared; the prediction must be a positive step time with a known dominant cost.
TEST_CASE("sim::analysis::validate_runs: one SC21 row end to end", "[validate]") {
  ValidateOptions options;
  options.source_filter = "megatron-sc21-t1-1.7b";
  const ValidationReport report =
      validate_runs(std::string(CUBOID_SOURCE_DIR) + "/scenarios/validation/published_runs.csv", options);
  REQUIRE(report.rows.size() == 1);
  const ValidationRow& row = report.rows[0];
  INFO(row.reason);
  REQUIRE(row.status == RunStatus::Ok);
  CHECK(row.predicted_step_s > 0.0);
  CHECK(row.dominant == "compute");
  CHECK(report.profile_assumptions.contains("a100-80gb"));
}

// --trace-dir: the traced row predicts the same step as without a trace, and its Perfetto trace ends at that step.
TEST_CASE("sim::analysis::validate_runs: --trace-dir writes the predicted step of each scored row", "[validate]") {
  const std::string csv = std::string(CUBOID_SOURCE_DIR) + "/scenarios/validation/published_runs.csv";
  ValidateOptions options;
  options.source_filter = "bloom-176b-rampup-gbs16";
  const ValidationReport plain = validate_runs(csv, options);
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "cuboid-validate-trace-test";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  options.trace_dir = dir.string();
  const ValidationReport traced = validate_runs(csv, options);
  REQUIRE(traced.rows.size() == 1);
  REQUIRE(traced.rows[0].status == RunStatus::Ok);
  CHECK(traced.rows[0].predicted_step_s == plain.rows[0].predicted_step_s);
  std::ifstream in(dir / "bloom-176b-rampup-gbs16.json");
  REQUIRE(in.good());
  const nlohmann::json trace = nlohmann::json::parse(in);
  double last_end_us = 0.0;
  int stages_seen = 0;
  for (const auto& event : trace.at("traceEvents")) {
    if (event.at("ph") == "X") {
      last_end_us = std::max(last_end_us, event.at("ts").get<double>() + event.at("dur").get<double>());
    } else if (event.at("name") == "process_name") {
      ++stages_seen;
    }
  }
  CHECK(stages_seen == 12); // one rank class per pipeline stage (pp = 12)
  CHECK_THAT(last_end_us * 1e-6, WithinRel(traced.rows[0].predicted_step_s, 1e-3));
  std::filesystem::remove_all(dir);
}

// Megatron --overlap-param-gather: GPT-3 175B, TP8 DP8 on 64 H100 with the distributed optimizer and 2 micro-batches
// per replica. Without the flag the bf16 parameter all-gather (21.8 B params / 8 x 2 B over the network) runs after
// the optimizer and ends the step; with it the all-gather starts with the step behind the forward, so the step is
// shorter, by at most that all-gather's isolated ring time on the DP group (+25 % for the per-bucket latencies).
TEST_CASE("sim: overlap_param_gather hides the parameter all-gather behind the forward", "[validate]") {
  const cuboid::model::ModelSpec spec = cuboid::model::find_model("gpt3-175b");
  const cuboid::model::ClusterSpec cluster = cuboid::model::make_cluster("h100-sxm", 64, 0, "test");
  cuboid::model::Plan plan;
  plan.tp = 8;
  plan.pp = 1;
  plan.dp = 8;
  plan.micro_batch_size = 1;
  plan.global_batch_size = 16;
  plan.distributed_optimizer = true;
  plan.sequence_parallel = true;
  plan.recompute = cuboid::model::Recompute::Full;
  auto step_time = [&](bool overlap) {
    cuboid::model::Plan variant = plan;
    variant.overlap_param_gather = overlap;
    const auto graph = cuboid::model::build_step_graph(spec, cluster, variant, cuboid::model::Instantiation::RankClasses);
    const cuboid::model::CostModel cost(cluster, cuboid::model::default_profile("h100-sxm"), variant);
    return cuboid::sim::simulate(graph, cost).step_time_s;
  };
  const double serial_s = step_time(false);
  const double overlapped_s = step_time(true);
  const cuboid::model::CostModel cost(cluster, cuboid::model::default_profile("h100-sxm"), plan);
  const double params_per_rank = spec.num_parameters() / plan.tp;
  const double gather_s = cost.collective_time_s(cuboid::model::CollectiveKind::AllGather, 2.0 * params_per_rank,
                                                 plan.dp, cost.network());
  CHECK(overlapped_s < serial_s);
  CHECK(serial_s - overlapped_s <= 1.25 * gather_s);
}

// DeepSpeed's BF16 optimizer (Plan::all_reduce_sharded_grads): the DP gradient collectives before the optimizer are
// all-reduces instead of the distributed optimizer's reduce-scatters (same count), the bf16 all-gathers stay; the
// all-reduce moves twice the bytes, so the step cannot get shorter.
TEST_CASE("model::build_step_graph: BF16-optimizer gradient all-reduce", "[validate]") {
  const cuboid::model::ModelSpec spec = cuboid::model::find_model("gpt3-175b");
  const cuboid::model::ClusterSpec cluster = cuboid::model::make_cluster("a100-80gb", 128, 0, "test");
  cuboid::model::Plan plan = gpt3_128_gpu_plan();
  plan.distributed_optimizer = true;
  auto count = [](const cuboid::model::TaskGraph& graph, cuboid::model::CollectiveKind kind) {
    return std::count_if(graph.tasks().begin(), graph.tasks().end(), [kind](const cuboid::model::Task& task) {
      return task.kind == cuboid::model::TaskKind::Collective && task.group == cuboid::model::GroupKind::Dp &&
             task.collective == kind; // gpt3-175b ties its embeddings: the embedding group's all-reduce is not DP
    });
  };
  using cuboid::model::CollectiveKind;
  const auto scatter = cuboid::model::build_step_graph(spec, cluster, plan, cuboid::model::Instantiation::RankClasses);
  plan.all_reduce_sharded_grads = true;
  const auto reduce = cuboid::model::build_step_graph(spec, cluster, plan, cuboid::model::Instantiation::RankClasses);
  REQUIRE(count(scatter, CollectiveKind::ReduceScatter) > 0);
  CHECK(count(scatter, CollectiveKind::AllReduce) == 0);
  CHECK(count(reduce, CollectiveKind::ReduceScatter) == 0);
  CHECK(count(reduce, CollectiveKind::AllReduce) == count(scatter, CollectiveKind::ReduceScatter));
  CHECK(count(reduce, CollectiveKind::AllGather) == count(scatter, CollectiveKind::AllGather));
  const cuboid::model::CostModel cost(cluster, cuboid::model::default_profile("a100-80gb"), plan);
  CHECK(cuboid::sim::simulate(reduce, cost).step_time_s >= cuboid::sim::simulate(scatter, cost).step_time_s);
}

// The whole published_runs.csv: prints the table (run with -s). Hidden ([.]) because it simulates ~70 clusters of up
// to 6144 GPUs; `cuboid_sim_tests "[validation-run]" -s` is the validation command.
TEST_CASE("sim::analysis::validate_runs: all published runs", "[.][validation-run]") {
  const ValidationReport report =
      validate_runs(std::string(CUBOID_SOURCE_DIR) + "/scenarios/validation/published_runs.csv", {});
  WARN(format_table(report));
  CHECK(report.ok > 0);
}

// --- validation accuracy --- SC21-era Megatron-LM / Megatron-DeepSpeed pipeline sends (Plan::blocking_p2p): every
// send is followed by an edge into a compute task of its own rank, so the step cannot get shorter; Megatron's
// scatter/gather (Plan::p2p_scatter_gather) sends 1/tp of the b*s*h activation; fp16 plans all-reduce 2-byte grads.
TEST_CASE("model::build_step_graph: blocking and scattered pipeline sends, fp16 gradient all-reduce", "[validate]") {
  const cuboid::model::ModelSpec spec = cuboid::model::find_model("gpt3-175b");
  const cuboid::model::ClusterSpec cluster = cuboid::model::make_cluster("a100-80gb", 128, 0, "test");
  cuboid::model::Plan plan = gpt3_128_gpu_plan();
  using cuboid::model::TaskKind;
  const auto inst = cuboid::model::Instantiation::RankClasses;
  const auto plain = cuboid::model::build_step_graph(spec, cluster, plan, inst);
  plan.blocking_p2p = true;
  const auto blocking = cuboid::model::build_step_graph(spec, cluster, plan, inst);
  plan.p2p_scatter_gather = true;
  const auto scattered = cuboid::model::build_step_graph(spec, cluster, plan, inst);
  auto sends_into_own_compute = [](const cuboid::model::TaskGraph& graph) {
    return std::count_if(graph.edges().begin(), graph.edges().end(), [&graph](const auto& edge) {
      const auto& from = graph.task(edge.first);
      const auto& to = graph.task(edge.second);
      return from.kind == TaskKind::P2P && to.kind == TaskKind::Compute && to.rank == from.rank;
    });
  };
  const double full_bytes = 2048.0 * 12288.0 * 2.0; // b*s*h bf16, mbs 1
  std::size_t sends = 0;
  for (const auto& task : plain.tasks()) {
    if (task.kind == TaskKind::P2P) {
      ++sends;
      CHECK_THAT(task.msg_bytes, WithinRel(full_bytes, 1e-12));
    }
  }
  for (const auto& task : scattered.tasks()) {
    if (task.kind == TaskKind::P2P) {
      CHECK_THAT(task.msg_bytes, WithinRel(full_bytes / 8.0, 1e-12));
    }
  }
  REQUIRE(sends > 0);
  CHECK(sends_into_own_compute(plain) == 0);
  CHECK(sends_into_own_compute(blocking) > 0);
  const cuboid::model::CostModel cost(cluster, cuboid::model::default_profile("a100-80gb"), plan);
  CHECK(cuboid::sim::simulate(blocking, cost).step_time_s >= cuboid::sim::simulate(plain, cost).step_time_s);
  // DP all-reduce bytes: fp16 half of bf16's fp32 main grads.
  auto dp_bytes = [](const cuboid::model::TaskGraph& graph) {
    double bytes = 0.0;
    for (const auto& task : graph.tasks()) {
      bytes += task.kind == TaskKind::Collective && task.group == cuboid::model::GroupKind::Dp ? task.msg_bytes : 0.0;
    }
    return bytes;
  };
  plan.precision = cuboid::model::Precision::Fp16;
  const auto fp16 = cuboid::model::build_step_graph(spec, cluster, plan, inst);
  REQUIRE(dp_bytes(scattered) > 0.0);
  CHECK_THAT(dp_bytes(fp16), WithinRel(dp_bytes(scattered) / 2.0, 1e-12));
}

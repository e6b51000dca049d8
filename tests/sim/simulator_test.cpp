// simulate() on TaskGraphs from the miniature builder (toy_graph.hpp): pipeline bubbles, rank classes vs all ranks,
// invariants, memory, deadlock messages, trace output.
#include "sim/simulator.hpp"

#include "model/errors.hpp"
#include "model/timeline.hpp"
#include "sim/engine.hpp"
#include "sim/lowering.hpp"
#include "tests/sim/invariants.hpp"
#include "tests/sim/toy_graph.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

using namespace cuboid;
using namespace cuboid::sim;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {

constexpr double FREE_BW = 1e30; // bytes/s: communication is free

model::ClusterSpec a100_cluster(int num_gpus, int gpus_per_node) {
  model::ClusterSpec cluster;
  cluster.name = "toy-a100";
  cluster.gpu.name = "a100-80gb";
  cluster.gpu.bf16_flops_per_s = 312e12;
  cluster.gpu.fp16_flops_per_s = 312e12;
  cluster.gpu.hbm_bytes = 80e9;
  cluster.gpu.hbm_bw_bytes_per_s = 2.0e12;
  cluster.gpu.nvlink_bw_bytes_per_s = 300e9;
  cluster.num_gpus = num_gpus;
  cluster.gpus_per_node = gpus_per_node;
  cluster.nvlink_bw_bytes_per_s = 300e9;
  cluster.nvlink_latency_s = 5e-6;
  cluster.nic_bw_bytes_per_s = 25e9;
  cluster.net_latency_s = 10e-6;
  return cluster;
}

model::CostProfile profile() {
  model::CostProfile prof;
  prof.name = "toy";
  prof.gpu = "a100-80gb";
  return prof;
}

model::Plan plan_of(int tp, int dp, int pp, int microbatches, model::Schedule schedule) {
  model::Plan plan;
  plan.tp = tp;
  plan.dp = dp;
  plan.pp = pp;
  plan.micro_batch_size = 1;
  plan.global_batch_size = microbatches * dp;
  plan.schedule = schedule;
  return plan;
}

double breakdown_sum(const Breakdown& out) {
  return out.compute_s + out.recompute_s + out.tp_comm_exposed_s + out.pp_comm_exposed_s + out.dp_comm_exposed_s +
         out.bubble_s + out.optimizer_s + out.cp_comm_exposed_s + out.ep_comm_exposed_s;
}

/// Simulates and checks the invariants on the lowered program; returns the result.
SimResult simulate_checked(const model::TaskGraph& graph, const model::CostModel& cost) {
  const SimProgram program = lower(graph, cost);
  const EngineResult run = run_engine(program);
  testing::check_invariants(program, run);
  const SimResult result = simulate(graph, cost);
  REQUIRE(result.step_time_s == run.makespan_s);
  CHECK_THAT(breakdown_sum(result.breakdown), WithinRel(result.step_time_s, 1e-9));
  REQUIRE(result.timeline.size() == graph.num_tasks());
  return result;
}

} // namespace

TEST_CASE("sim::simulate: pipeline bubble = (p-1)/(m+p-1) when communication is free", "[sim]") {
  // Uniform stages, free P2P (huge bandwidth, zero latency), no DP, no optimizer: both GPipe and 1F1B leave every
  // stage idle for (p-1) forward+backward slots out of (m+p-1) (Narayanan et al. 2021, section 2.2), and the
  // bottleneck rank (stage 0, its last backward ends last) idles only in bubbles.
  const int pp = GENERATE(2, 4);
  const int m = GENERATE(1, 4, 8);
  const auto schedule = GENERATE(model::Schedule::GPipe, model::Schedule::OneFOneB);
  testing::ToySpec spec;
  spec.plan = plan_of(1, 1, pp, m, schedule);
  spec.cluster = a100_cluster(pp, 8);
  spec.cluster.nvlink_bw_bytes_per_s = FREE_BW;
  spec.cluster.nic_bw_bytes_per_s = FREE_BW;
  spec.cluster.nvlink_latency_s = 0.0;
  spec.cluster.net_latency_s = 0.0;
  spec.optimizer = false;
  model::CostProfile prof = profile();
  prof.nvlink_latency_s = 0.0;
  prof.net_latency_s = 0.0;
  const model::CostModel cost(spec.cluster, prof, spec.plan);
  for (const auto inst : {model::Instantiation::AllRanks, model::Instantiation::RankClasses}) {
    const model::TaskGraph graph = testing::build_toy_graph(spec, inst);
    const SimResult result = simulate_checked(graph, cost);
    const double expected = static_cast<double>(pp - 1) / static_cast<double>(m + pp - 1);
    CHECK_THAT(result.bubble_fraction, WithinRel(expected, 1e-9) || Catch::Matchers::WithinAbs(expected, 1e-12));
    CHECK(result.bottleneck_rank == 0);
    CHECK(result.breakdown.pp_comm_exposed_s == Approx(0.0).margin(1e-12 * result.step_time_s));
  }
}

TEST_CASE("sim::simulate: rank classes and all ranks give the same step time", "[sim]") {
  // DESIGN.md: on a symmetric cluster the representative of each stage sees exactly what every rank of its stage
  // sees (same flows on its own ports, same collective phases inferred from the full group), so step time,
  // breakdown and peak memory must agree. Small nodes (2 GPUs) force DP and PP traffic across the network.
  struct Case {
    int tp, dp, pp, gpus_per_node;
    double gemm_size;
  };
  const Case c = GENERATE(Case{1, 1, 1, 8, 1024}, Case{1, 2, 1, 8, 1024}, Case{2, 2, 1, 8, 1024},
                          Case{2, 2, 2, 8, 1024}, Case{1, 2, 1, 1, 1024}, Case{2, 2, 2, 2, 1024},
                          // GPT-3-like layout: tp 8 in a node, dp 4 and pp 4 across nodes, big GEMMs.
                          Case{8, 4, 4, 8, 12288});
  const auto schedule = GENERATE(model::Schedule::GPipe, model::Schedule::OneFOneB);
  testing::ToySpec spec;
  spec.plan = plan_of(c.tp, c.dp, c.pp, 8, schedule);
  spec.cluster = a100_cluster(c.tp * c.dp * c.pp, c.gpus_per_node);
  spec.gemm_size = c.gemm_size;
  const model::CostModel cost(spec.cluster, profile(), spec.plan);
  const SimResult all = simulate_checked(testing::build_toy_graph(spec, model::Instantiation::AllRanks), cost);
  const SimResult classes = simulate_checked(testing::build_toy_graph(spec, model::Instantiation::RankClasses), cost);
  INFO("tp " << c.tp << " dp " << c.dp << " pp " << c.pp << " gpus/node " << c.gpus_per_node);
  CHECK_THAT(classes.step_time_s, WithinRel(all.step_time_s, 1e-12));
  CHECK_THAT(classes.breakdown.bubble_s + classes.breakdown.dp_comm_exposed_s + classes.breakdown.pp_comm_exposed_s,
             WithinRel(all.breakdown.bubble_s + all.breakdown.dp_comm_exposed_s + all.breakdown.pp_comm_exposed_s,
                       1e-9));
  CHECK_THAT(classes.peak_memory_bytes, WithinRel(all.peak_memory_bytes, 1e-12));
  CHECK_THAT(classes.tokens_per_s, WithinRel(all.tokens_per_s, 1e-12));
}

TEST_CASE("sim::simulate: DP traffic across nodes slows the step", "[sim]") {
  // Same plan (dp 4), DP group inside one node (NVLink 300 GB/s) vs one member per node (NIC 25 GB/s): the 200 MB
  // all-reduce takes ~12x longer on the NIC and is exposed before the optimizer, so the step is longer and
  // dp_comm_exposed grows.
  testing::ToySpec spec;
  spec.plan = plan_of(1, 4, 1, 4, model::Schedule::OneFOneB);
  spec.cluster = a100_cluster(4, 8);
  const model::CostModel intra_cost(spec.cluster, profile(), spec.plan);
  const SimResult intra = simulate_checked(testing::build_toy_graph(spec, model::Instantiation::AllRanks), intra_cost);
  spec.cluster = a100_cluster(4, 1);
  const model::CostModel inter_cost(spec.cluster, profile(), spec.plan);
  const SimResult inter = simulate_checked(testing::build_toy_graph(spec, model::Instantiation::AllRanks), inter_cost);
  CHECK(inter.step_time_s > intra.step_time_s);
  CHECK(inter.breakdown.dp_comm_exposed_s > 5.0 * intra.breakdown.dp_comm_exposed_s);
}

TEST_CASE("sim::simulate: 1F1B keeps at most p - s micro-batches of activations", "[sim]") {
  // 1F1B on 4 stages, 8 micro-batches, 1 GB of activations per micro-batch, 2 GB static: stage 0 peaks at
  // 2 + 4 GB; GPipe holds all 8 micro-batches: 2 + 8 GB. The peak rank is stage 0 (world rank 0).
  for (const auto& [schedule, in_flight] : {std::pair{model::Schedule::OneFOneB, 4.0}, std::pair{model::Schedule::GPipe, 8.0}}) {
    testing::ToySpec spec;
    spec.plan = plan_of(1, 1, 4, 8, schedule);
    spec.cluster = a100_cluster(4, 8);
    const model::CostModel cost(spec.cluster, profile(), spec.plan);
    const SimResult result = simulate_checked(testing::build_toy_graph(spec, model::Instantiation::RankClasses), cost);
    CHECK(result.peak_memory_rank == 0);
    CHECK_THAT(result.peak_memory_bytes, WithinRel(2e9 + in_flight * 1e9, 1e-12));
    CHECK_THAT(result.peak_memory_breakdown[static_cast<std::size_t>(model::MemTag::Activations)],
               WithinRel(in_flight * 1e9, 1e-12));
    CHECK(result.fits);
    CHECK(result.hbm_bytes == 80e9);
  }
}

TEST_CASE("sim::simulate: OOM is reported with rank, sizes and breakdown", "[sim]") {
  testing::ToySpec spec;
  spec.plan = plan_of(1, 1, 2, 4, model::Schedule::GPipe);
  spec.cluster = a100_cluster(2, 8);
  spec.cluster.gpu.hbm_bytes = 4e9; // 2 GB weights + 4 x 1 GB activations = 6 GB > 4 GB
  const model::CostModel cost(spec.cluster, profile(), spec.plan);
  const SimResult result = simulate(testing::build_toy_graph(spec, model::Instantiation::AllRanks), cost);
  CHECK(!result.fits);
  CHECK_THAT(result.oom_reason, Contains("rank 0") && Contains("6.00 GB") && Contains("4.00 GB"));
}

TEST_CASE("sim::simulate: deadlocks name the stuck tasks by label", "[sim]") {
  testing::ToySpec spec;
  spec.plan = plan_of(1, 1, 2, 1, model::Schedule::GPipe);
  spec.cluster = a100_cluster(2, 8);
  const model::CostModel cost(spec.cluster, profile(), spec.plan);
  SECTION("cycle") {
    // Adding bwd(stage 0) -> fwd(stage 0) closes a cycle fwd -> send -> fwd -> bwd -> send -> bwd -> fwd.
    model::TaskGraph graph = testing::build_toy_graph(spec, model::Instantiation::AllRanks);
    graph.add_edge(1, 0);
    REQUIRE_THROWS_AS(simulate(graph, cost), InfeasibleError);
    REQUIRE_THROWS_WITH(simulate(graph, cost), Contains("deadlock") && Contains(graph.label(0)));
  }
  SECTION("P2P whose predecessor never runs") {
    model::TaskGraph graph = testing::build_toy_graph(spec, model::Instantiation::AllRanks);
    // Two tasks waiting on each other never run, so neither does what depends on them.
    model::Task orphan;
    orphan.rank = 0;
    const model::TaskId never = graph.add_task(orphan);
    const model::TaskId partner = graph.add_task(orphan);
    graph.add_edge(never, partner);
    graph.add_edge(partner, never);
    model::Task send;
    send.kind = model::TaskKind::P2P;
    send.stream = model::Stream::PpComm;
    send.rank = 0;
    send.peer = 1;
    send.msg_bytes = 1e6;
    const model::TaskId p2p = graph.add_task(send);
    graph.add_edge(never, p2p);
    REQUIRE_THROWS_WITH(simulate(graph, cost), Contains(graph.label(p2p)) && Contains(graph.label(never)));
  }
}

TEST_CASE("sim::to_timeline: trace has one X event per task", "[sim]") {
  testing::ToySpec spec;
  spec.plan = plan_of(2, 2, 2, 4, model::Schedule::OneFOneB);
  spec.cluster = a100_cluster(8, 4);
  const model::CostModel cost(spec.cluster, profile(), spec.plan);
  const model::TaskGraph graph = testing::build_toy_graph(spec, model::Instantiation::AllRanks);
  const SimResult result = simulate(graph, cost);
  const std::vector<model::TimelineEvent> events = to_timeline(graph, result);
  REQUIRE(events.size() == graph.num_tasks());
  const std::filesystem::path path = std::filesystem::temp_directory_path() / "cuboid_sim_trace_test.json";
  model::write_chrome_trace(path.string(), {model::TraceSet{"predicted", events}});
  std::ifstream in(path);
  const nlohmann::json trace = nlohmann::json::parse(in);
  std::vector<int> seen(graph.num_tasks(), 0);
  for (const auto& event : trace.at("traceEvents")) {
    if (event.at("ph") == "X") {
      ++seen.at(event.at("args").at("task_id").get<std::size_t>());
    }
  }
  CHECK(std::all_of(seen.begin(), seen.end(), [](int count) { return count == 1; }));
  std::filesystem::remove(path);
}

TEST_CASE("sim::simulate: GPT-3 175B-shaped step on 1024 GPUs, timing", "[.perf]") {
  // tp 8 x dp 16 x pp 8 on 128 nodes of 8 GPUs, 96 micro-batches (global batch 1536), 12 layers per stage, 1F1B.
  // Prints the wall time of simulate() for rank classes (~20 k tasks) and all ranks (~2.6 M tasks).
  testing::ToySpec spec;
  spec.plan = plan_of(8, 16, 8, 96, model::Schedule::OneFOneB);
  spec.cluster = a100_cluster(1024, 8);
  spec.gemm_size = 12288;
  spec.layers_per_stage = 12;
  spec.act_bytes = 2048.0 * 12288 * 2;
  spec.grad_bytes = 175e9 / 64 * 2;
  const model::CostModel cost(spec.cluster, profile(), spec.plan);
  SimOptions options;
  options.record_memory_timeline = false;
  double step_s[2] = {0.0, 0.0};
  int slot = 0;
  for (const auto inst : {model::Instantiation::RankClasses, model::Instantiation::AllRanks}) {
    const auto t0 = std::chrono::steady_clock::now();
    const model::TaskGraph graph = testing::build_toy_graph(spec, inst);
    const auto t1 = std::chrono::steady_clock::now();
    const SimResult result = simulate(graph, cost, options);
    const auto t2 = std::chrono::steady_clock::now();
    std::printf("%s: %zu tasks, build %.3f s, simulate %.4f s, step %.4f s, %zu events\n",
                inst == model::Instantiation::AllRanks ? "all ranks" : "rank classes", graph.num_tasks(),
                std::chrono::duration<double>(t1 - t0).count(), std::chrono::duration<double>(t2 - t1).count(),
                result.step_time_s, result.num_events);
    step_s[slot++] = result.step_time_s;
  }
  CHECK_THAT(step_s[0], WithinRel(step_s[1], 1e-12));
}

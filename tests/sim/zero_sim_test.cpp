// ZeRO stages in the simulator and the search bounds: the per-unit all-gathers and reduce-scatters of ZeRO-3 run on
// the DP stream, overlapped with compute; peak memory falls stage by stage; rank classes give the all-ranks step
// time; the search's analytic memory estimate never exceeds the simulated peak (so pruning stays correct).
#include "model/cost_model.hpp"
#include "model/cost_profile.hpp"
#include "model/errors.hpp"
#include "model/hardware_catalog.hpp"
#include "model/model_catalog.hpp"
#include "model/step_builder.hpp"
#include "sim/analysis/search.hpp"
#include "sim/analysis/search_bounds.hpp"
#include "sim/simulator.hpp"

#include <catch2/catch.hpp>

using namespace cuboid;
using Catch::Matchers::WithinRel;

namespace {
// 16-layer GPT, h = 2048, on two 8-GPU A100 nodes: DP groups cross the network, so ZeRO traffic is not free.
model::ModelSpec zero_model() {
  model::ModelSpec spec = model::find_model("gpt-tiny");
  spec.name = "gpt-zero-test";
  spec.num_layers = 16;
  spec.hidden_size = 2048;
  spec.num_attention_heads = 16;
  spec.num_query_groups = 16;
  spec.head_dim = 128;
  spec.ffn_hidden_size = 8192;
  spec.seq_length = 1024;
  spec.vocab_size = 32000;
  return spec;
}

model::Plan zero_plan(int stage) {
  model::Plan plan;
  plan.tp = 2;
  plan.pp = 2;
  plan.dp = 4;
  plan.micro_batch_size = 1;
  plan.global_batch_size = 32;
  model::set_zero_stage(plan, stage, "test", "--zero");
  return plan;
}

sim::SimResult run(const model::ModelSpec& spec, const model::ClusterSpec& cluster, const model::Plan& plan,
                   model::Instantiation inst) {
  const model::CostModel cost(cluster, model::default_profile("a100-80gb"), plan);
  return sim::simulate(model::build_step_graph(spec, cluster, plan, inst), cost);
}
} // namespace

TEST_CASE("sim::simulate: ZeRO stages 0-3 lower the peak memory and keep the step time of rank classes",
          "[sim][zero]") {
  const model::ModelSpec spec = zero_model();
  const model::ClusterSpec cluster = model::make_cluster("dgx-a100", 16, 0, "test");
  std::vector<sim::SimResult> results;
  for (const int stage : {0, 1, 2, 3}) {
    results.push_back(run(spec, cluster, zero_plan(stage), model::Instantiation::RankClasses));
  }
  // Each stage shards one more of optimizer state (12 B/param), grads (4) and params (2) over dp = 4: with the
  // transient unit buffers of stages 2/3 (a few layers' worth) the peak still drops at every stage.
  for (std::size_t stage = 1; stage < results.size(); ++stage) {
    CHECK(results[stage].peak_memory_bytes < results[stage - 1].peak_memory_bytes);
  }
  // ZeRO-3 moves more over DP (2 gathers of the parameters per micro-batch plus m reduce-scatters) than ZeRO-1
  // (one reduce-scatter and one all-gather per step), so its DP stream is busy longer; its step need not be longer
  // (the gathers hide behind compute, ZeRO-1's end-of-step all-gather does not), but it stays below compute plus
  // all of that DP time (some of it overlaps).
  double dp_busy_s[4] = {};
  for (const int stage : {1, 3}) {
    const model::TaskGraph graph =
        model::build_step_graph(spec, cluster, zero_plan(stage), model::Instantiation::RankClasses);
    const model::CostModel cost(cluster, model::default_profile("a100-80gb"), zero_plan(stage));
    const sim::SimResult timed = sim::simulate(graph, cost);
    std::size_t gathers = 0;
    for (const sim::TaskTiming& timing : timed.timeline) {
      const model::Task& task = graph.task(timing.id);
      if (task.rank != timed.bottleneck_rank || task.kind != model::TaskKind::Collective ||
          task.group != model::GroupKind::Dp) {
        continue;
      }
      CHECK(task.stream == model::Stream::DpComm);
      CHECK(timing.end_s > timing.start_s);
      dp_busy_s[stage] += timing.end_s - timing.start_s;
      gathers += task.collective == model::CollectiveKind::AllGather ? 1U : 0U;
    }
    CHECK(gathers > 0);
    if (stage == 3) {
      CHECK(timed.step_time_s < timed.breakdown.compute_s + timed.breakdown.optimizer_s + dp_busy_s[3]);
    }
  }
  CHECK(dp_busy_s[3] > dp_busy_s[1]);
  // Rank classes and all ranks: the same step on a symmetric cluster (DESIGN.md "The IR").
  for (const int stage : {2, 3}) {
    const sim::SimResult all = run(spec, cluster, zero_plan(stage), model::Instantiation::AllRanks);
    CHECK_THAT(all.step_time_s, WithinRel(results[static_cast<std::size_t>(stage)].step_time_s, 1e-9));
    CHECK_THAT(all.peak_memory_bytes, WithinRel(results[static_cast<std::size_t>(stage)].peak_memory_bytes, 1e-9));
  }
}

TEST_CASE("sim::analysis::classify_plan: the ZeRO memory estimate stays below the simulated peak", "[sim][zero]") {
  const model::ModelSpec spec = zero_model();
  const model::ClusterSpec cluster = model::make_cluster("dgx-a100", 16, 0, "test");
  for (const int stage : {0, 1, 2, 3}) {
    sim::analysis::PlanOutcome outcome;
    outcome.plan = zero_plan(stage);
    outcome.num_gpus = 16;
    sim::analysis::classify_plan(spec, cluster, outcome);
    REQUIRE(outcome.status == sim::analysis::PlanStatus::Pruned);
    const sim::SimResult result = run(spec, cluster, outcome.plan, model::Instantiation::RankClasses);
    CHECK(outcome.memory_estimate_bytes <= result.peak_memory_bytes);
  }
}

TEST_CASE("sim::analysis::enumerate_space: --zero lists each stage, ZeRO >= 1 only with dp > 1", "[sim][zero]") {
  const model::ModelSpec spec = zero_model();
  const model::ClusterSpec cluster = model::make_cluster("dgx-a100", 16, 0, "test");
  sim::analysis::SearchSpace space;
  space.global_batch_size = 32;
  space.tp = {2};
  space.pp = {2};
  space.micro_batch_size = {1};
  space.schedules = {model::Schedule::OneFOneB};
  space.recompute = {model::Recompute::None};
  space.sequence_parallel = {false};
  space.zero_stages = {0, 1, 2, 3};
  const auto plans = sim::analysis::enumerate_space(spec, cluster, space);
  REQUIRE(plans.size() == 4U);
  for (std::size_t idx = 0; idx < plans.size(); ++idx) {
    CHECK(plans[idx].plan.get_zero_stage() == static_cast<int>(idx));
    CHECK(plans[idx].plan.distributed_optimizer == (idx >= 1));
  }
  CHECK(sim::analysis::plan_key(plans[3].plan, 16) != sim::analysis::plan_key(plans[1].plan, 16));
  space.zero_stages = {4};
  REQUIRE_THROWS_AS(sim::analysis::enumerate_space(spec, cluster, space), InputError);
}

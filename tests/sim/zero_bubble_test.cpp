// Zero-bubble schedules in the simulator: GPT-3 175B on pp = 8 (tp = 8, dp = 1). Expectation (Qi et al. 2024,
// section 3): splitting the backward and deferring W shrinks the bubble, zb-h1 below 1F1B, zb-v (two V-shaped
// chunks, near-zero bubble when F = B = W) below zb-h1, and neither runs longer than 1F1B: they do the same work.
#include "model/hardware_catalog.hpp"
#include "model/model_catalog.hpp"
#include "model/step_builder.hpp"
#include "sim/analysis/search.hpp"
#include "sim/simulator.hpp"

#include <catch2/catch.hpp>

using namespace cuboid;

namespace {

struct Outcome {
  double step_s = 0.0;
  double bubble_fraction = 0.0;
  double peak_activation_bytes = 0.0;
};

Outcome run(model::Schedule schedule, std::int64_t global_batch_size) {
  const model::ModelSpec spec = model::find_model("gpt3-175b");
  model::Plan plan;
  plan.tp = 8;
  plan.pp = 8;
  plan.schedule = schedule;
  plan.vp = schedule == model::Schedule::ZbV ? 2 : 1;
  plan.global_batch_size = global_batch_size;
  const model::ClusterSpec cluster = model::make_cluster("dgx-a100", plan.world_size(), 8, "test");
  model::validate(plan, spec, cluster, "test");
  const model::TaskGraph graph = model::build_step_graph(spec, cluster, plan, model::Instantiation::RankClasses);
  const model::CostModel cost(cluster, model::default_profile("a100-80gb"), plan);
  const sim::SimResult result = sim::simulate(graph, cost);
  return {result.step_time_s, result.bubble_fraction,
          result.peak_memory_breakdown[static_cast<std::size_t>(model::MemTag::Activations)]};
}

} // namespace

TEST_CASE("sim: zero-bubble schedules shrink the pipeline bubble (GPT-3 175B, pp = 8)", "[sim][schedule]") {
  const std::int64_t global_batch = GENERATE(16, 64);
  const Outcome one_f_one_b = run(model::Schedule::OneFOneB, global_batch);
  const Outcome zb_h1 = run(model::Schedule::ZbH1, global_batch);
  const Outcome zb_v = run(model::Schedule::ZbV, global_batch);
  INFO("m = " << global_batch << ": bubble 1f1b " << one_f_one_b.bubble_fraction << ", zb-h1 " << zb_h1.bubble_fraction
              << ", zb-v " << zb_v.bubble_fraction);
  CHECK(zb_h1.bubble_fraction < one_f_one_b.bubble_fraction);
  CHECK(zb_v.bubble_fraction < zb_h1.bubble_fraction);
  // Same FLOPs per rank: a schedule that only reorders work may not be slower (1e-9 relative for rounding).
  CHECK(zb_h1.step_s <= one_f_one_b.step_s * (1.0 + 1e-9));
  CHECK(zb_v.step_s <= one_f_one_b.step_s * (1.0 + 1e-9));
  // ZB-H1 keeps 1F1B's in-flight micro-batches but holds the W inputs and output gradients longer: its activation
  // peak is at least 1F1B's, and below two pp-deep pipelines' worth.
  CHECK(zb_h1.peak_activation_bytes >= one_f_one_b.peak_activation_bytes);
  CHECK(zb_h1.peak_activation_bytes < 2.0 * one_f_one_b.peak_activation_bytes);
}

TEST_CASE("sim::analysis::enumerate_space: zb-h1 and zb-v are searched, zb-v with vp = 2", "[search][schedule]") {
  // gpt-tiny has 4 layers: zb-v fits pp = 2 only (4 divisible by 2 pp), zb-h1 every pp > 1 dividing 4.
  const model::ModelSpec spec = model::find_model("gpt-tiny");
  const model::ClusterSpec cluster = model::make_cluster("dgx-a100", 4, 8, "test");
  sim::analysis::SearchSpace space;
  space.global_batch_size = 8;
  space.schedules = {model::Schedule::ZbH1, model::Schedule::ZbV};
  int zb_v = 0;
  int zb_h1 = 0;
  for (const sim::analysis::PlanOutcome& outcome : sim::analysis::enumerate_space(spec, cluster, space)) {
    if (outcome.plan.schedule == model::Schedule::ZbV) {
      ++zb_v;
      CHECK(outcome.plan.vp == 2);
      CHECK(outcome.plan.pp == 2);
    } else if (outcome.plan.schedule == model::Schedule::ZbH1) {
      ++zb_h1;
      CHECK(outcome.plan.vp == 1);
    }
  }
  CHECK(zb_v > 0);
  CHECK(zb_h1 > zb_v);
}

TEST_CASE("sim: zero-bubble rank classes and all ranks give the same step time", "[sim][schedule]") {
  // DESIGN.md: on a symmetric cluster one representative per stage must predict the all-ranks step exactly.
  const model::ModelSpec spec = model::find_model("gpt-tiny");
  model::Plan plan;
  plan.tp = 2;
  plan.dp = 2;
  plan.pp = 2;
  plan.schedule = GENERATE(model::Schedule::ZbH1, model::Schedule::ZbV);
  plan.vp = plan.schedule == model::Schedule::ZbV ? 2 : 1;
  plan.global_batch_size = 16;
  plan.grad_bucket_bytes = 1e5; // several DP buckets
  const model::ClusterSpec cluster = model::make_cluster("dgx-a100", plan.world_size(), 8, "test");
  model::validate(plan, spec, cluster, "test");
  const model::CostModel cost(cluster, model::default_profile("a100-80gb"), plan);
  const double classes =
      sim::simulate(model::build_step_graph(spec, cluster, plan, model::Instantiation::RankClasses), cost).step_time_s;
  const double all =
      sim::simulate(model::build_step_graph(spec, cluster, plan, model::Instantiation::AllRanks), cost).step_time_s;
  CHECK_THAT(classes, Catch::Matchers::WithinRel(all, 1e-9));
}

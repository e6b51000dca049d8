// Mixture of experts in the simulator and the search: the EP all-to-all shows in the breakdown and grows when the
// EP group leaves the node, rank classes and all ranks agree on a MoE plan, load imbalance slows the step, and the
// search tries ep for MoE models only.
#include "model/cost_model.hpp"
#include "model/cost_profile.hpp"
#include "model/hardware_catalog.hpp"
#include "model/model_catalog.hpp"
#include "model/step_builder.hpp"
#include "sim/analysis/search.hpp"
#include "sim/simulator.hpp"

#include <catch2/catch.hpp>

#include <set>

using namespace cuboid;
using Catch::Matchers::WithinRel;

namespace {
// Mixtral's layout shrunk to simulate quickly: 4 layers, h 1024, 8 experts of 2048, top-2, seq 1024.
model::ModelSpec small_mixtral() {
  model::ModelSpec spec = model::find_model("mixtral-8x7b");
  spec.name = "mixtral-small-test";
  spec.num_layers = 4;
  spec.hidden_size = 1024;
  spec.num_attention_heads = 16;
  spec.num_query_groups = 8;
  spec.head_dim = 64;
  spec.ffn_hidden_size = 2048;
  spec.moe_ffn_hidden_size = 2048;
  spec.seq_length = 1024;
  return spec;
}

sim::SimResult run(const model::ModelSpec& spec, const model::Plan& plan, int num_gpus,
                   model::Instantiation inst = model::Instantiation::RankClasses) {
  const model::ClusterSpec cluster = model::make_cluster("dgx-h100", num_gpus, 0, "test");
  const model::CostModel cost(cluster, model::default_profile("h100-sxm"), plan);
  return sim::simulate(model::build_step_graph(spec, cluster, plan, inst), cost);
}

model::Plan plan_of(int tp, int dp, int ep) {
  model::Plan plan;
  plan.tp = tp;
  plan.dp = dp;
  plan.ep = ep;
  plan.global_batch_size = 4 * dp;
  return plan;
}
} // namespace

TEST_CASE("sim: EP all-to-all in the breakdown, slower across nodes than inside one", "[sim][moe]") {
  const model::ModelSpec spec = small_mixtral();
  const sim::SimResult no_ep = run(spec, plan_of(1, 8, 1), 8);
  CHECK(no_ep.breakdown.ep_comm_exposed_s == 0.0);
  // ep = 8 with tp = 1: the EP group is one DGX node (NVLink). With tp = 8 every EP peer is on another node.
  const sim::SimResult intra = run(spec, plan_of(1, 8, 8), 8);
  const sim::SimResult inter = run(spec, plan_of(8, 8, 8), 64);
  CHECK(intra.breakdown.ep_comm_exposed_s > 0.0);
  CHECK(inter.breakdown.ep_comm_exposed_s > 4.0 * intra.breakdown.ep_comm_exposed_s);
  // The breakdown still sums to the step.
  const sim::Breakdown& b = intra.breakdown;
  CHECK_THAT(b.compute_s + b.recompute_s + b.tp_comm_exposed_s + b.pp_comm_exposed_s + b.dp_comm_exposed_s +
                 b.bubble_s + b.optimizer_s + b.ep_comm_exposed_s,
             WithinRel(intra.step_time_s, 1e-9));
  SECTION("ep divides the expert weights: less static memory per rank") {
    CHECK(intra.peak_memory_bytes < no_ep.peak_memory_bytes);
  }
  SECTION("load imbalance makes the busiest rank, and the step, slower") {
    model::Plan skewed = plan_of(1, 8, 8);
    skewed.moe_imbalance = 2.0;
    CHECK(run(spec, skewed, 8).step_time_s > intra.step_time_s);
  }
}

// DESIGN.md: both instantiations must give the same step time on a symmetric cluster (here with expert-DP groups
// of 2 and a pipeline of 2).
TEST_CASE("sim: a MoE plan simulates the same with rank classes and all ranks", "[sim][moe]") {
  const model::ModelSpec spec = small_mixtral();
  model::Plan plan = plan_of(2, 4, 2);
  plan.pp = 2;
  plan.global_batch_size = 16;
  plan.distributed_optimizer = GENERATE(false, true);
  const sim::SimResult classes = run(spec, plan, 16);
  const sim::SimResult all = run(spec, plan, 16, model::Instantiation::AllRanks);
  CHECK_THAT(all.step_time_s, WithinRel(classes.step_time_s, 1e-9));
  CHECK_THAT(all.peak_memory_bytes, WithinRel(classes.peak_memory_bytes, 1e-9));
}

TEST_CASE("sim::analysis::enumerate_space: ep is searched for MoE models only", "[sim][search][moe]") {
  const model::ClusterSpec cluster = model::make_cluster("dgx-h100", 8, 0, "test");
  sim::analysis::SearchSpace space;
  space.global_batch_size = 16;
  space.tp = {1};
  space.pp = {1};
  space.micro_batch_size = {1};
  space.recompute = {model::Recompute::None};
  space.distributed_optimizer = {false};
  std::set<int> eps;
  for (const auto& outcome : sim::analysis::enumerate_space(small_mixtral(), cluster, space)) {
    eps.insert(outcome.plan.ep);
  }
  CHECK(eps == std::set<int>{1, 2, 4, 8}); // dp = 8 and 8 experts
  model::ModelSpec dense = small_mixtral();
  dense.num_experts = dense.moe_top_k = dense.moe_ffn_hidden_size = 0;
  std::set<int> dense_eps;
  for (const auto& outcome : sim::analysis::enumerate_space(dense, cluster, space)) {
    dense_eps.insert(outcome.plan.ep);
  }
  CHECK(dense_eps == std::set<int>{1});
  SECTION("the search picks a simulated best plan with its ep") {
    sim::analysis::SearchOptions options;
    options.top_k = 1;
    options.jobs = 1;
    const auto result =
        sim::analysis::run_search(small_mixtral(), cluster, model::default_profile("h100-sxm"), space, options);
    REQUIRE(result.top.size() == 1);
    CHECK(result.plans[result.top.front()].result.has_value());
  }
}

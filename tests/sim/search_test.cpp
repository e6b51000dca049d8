// Layout search: the bound-and-simulate search must find exactly what brute force over the same space finds, list
// every plan once, and not depend on how many threads run it.
#include "model/cost_profile.hpp"
#include "model/hardware_catalog.hpp"
#include "model/model_catalog.hpp"
#include "sim/analysis/csv.hpp"
#include "sim/analysis/search.hpp"
#include "sim/analysis/search_csv.hpp"

#include <catch2/catch.hpp>

#include <limits>
#include <set>
#include <sstream>

using namespace cuboid;
using sim::analysis::PlanStatus;

namespace {
// A small GPT (8 layers) on two 8-GPU A100 nodes: big enough for every kind of plan (TP in a node, PP, DP across
// nodes, interleaving), small enough to brute-force.
model::ModelSpec small_model() {
  model::ModelSpec spec = model::find_model("gpt-tiny");
  spec.name = "gpt-small-test";
  spec.num_layers = 8;
  spec.hidden_size = 1024;
  spec.num_attention_heads = 16;
  spec.num_query_groups = 16;
  spec.head_dim = 64;
  spec.ffn_hidden_size = 4096;
  spec.seq_length = 1024;
  spec.vocab_size = 32000;
  return spec;
}

std::string csv_text(const sim::analysis::SearchResult& result) {
  std::string text;
  for (const auto& outcome : result.plans) {
    text += sim::analysis::csv_join(sim::analysis::outcome_to_csv(outcome)) + "\n";
  }
  return text;
}
} // namespace

TEST_CASE("sim::analysis::run_search: same best plan as brute force, every plan once, thread-independent",
          "[sim][search]") {
  const model::ModelSpec spec = small_model();
  const model::ClusterSpec cluster = model::make_cluster("dgx-a100", 16, 0, "test");
  const model::CostProfile profile = model::default_profile("a100-80gb");
  sim::analysis::SearchSpace space;
  space.global_batch_size = 32;

  sim::analysis::SearchOptions options;
  options.top_k = 3;
  options.jobs = 1;
  const sim::analysis::SearchResult result = sim::analysis::run_search(spec, cluster, profile, space, options);
  REQUIRE(!result.top.empty());
  REQUIRE(result.num_simulated < result.plans.size()); // the bounds pruned something

  SECTION("brute force over the same candidates finds the same best time and plan") {
    std::vector<sim::analysis::PlanOutcome> candidates;
    for (const auto& outcome : sim::analysis::enumerate_space(spec, cluster, space)) {
      if (outcome.status == PlanStatus::Pruned) { // still a candidate after the cheap checks
        candidates.push_back(outcome);
      }
    }
    const auto brute = sim::analysis::evaluate_plans(spec, cluster, profile, candidates, 2);
    double best = std::numeric_limits<double>::infinity();
    std::string best_key;
    for (const auto& outcome : brute) {
      if (outcome.status == PlanStatus::Simulated && outcome.result->step_time_s < best) {
        best = outcome.result->step_time_s;
        best_key = sim::analysis::plan_key(outcome.plan, outcome.num_gpus);
      }
    }
    const auto& found = result.plans[result.top.front()];
    CHECK(found.result->step_time_s == Approx(best).epsilon(1e-12));
    CHECK(sim::analysis::plan_key(found.plan, found.num_gpus) == best_key);
  }

  SECTION("the CSV lists every plan of the space exactly once") {
    std::set<std::string> keys;
    for (const auto& outcome : result.plans) {
      keys.insert(sim::analysis::plan_key(outcome.plan, outcome.num_gpus));
    }
    CHECK(keys.size() == result.plans.size());
    CHECK(result.plans.size() == sim::analysis::enumerate_space(spec, cluster, space).size());
    std::istringstream in(sim::analysis::csv_join(sim::analysis::search_csv_header()) + "\n" + csv_text(result));
    CHECK(sim::analysis::read_search_csv(in, "memory").size() == result.plans.size());
  }

  SECTION("more threads give the identical result") {
    options.jobs = 2;
    const auto threaded = sim::analysis::run_search(spec, cluster, profile, space, options);
    CHECK(csv_text(threaded) == csv_text(result));
  }

  SECTION("resuming from known outcomes reproduces the same CSV") {
    sim::analysis::SearchOptions resumed = options;
    std::size_t taken = 0;
    for (const auto& outcome : result.plans) {
      if (outcome.status == PlanStatus::Simulated && taken++ % 2 == 0) {
        resumed.known[sim::analysis::plan_key(outcome.plan, outcome.num_gpus)] = outcome;
      }
    }
    REQUIRE(!resumed.known.empty());
    CHECK(csv_text(sim::analysis::run_search(spec, cluster, profile, space, resumed)) == csv_text(result));
  }
}

TEST_CASE("sim::analysis::enumerate_space: constraints and uneven pipelines", "[sim][search]") {
  model::ModelSpec spec = small_model();
  const model::ClusterSpec cluster = model::make_cluster("dgx-a100", 16, 0, "test");
  sim::analysis::SearchSpace space;
  space.global_batch_size = 32;
  const auto plans = sim::analysis::enumerate_space(spec, cluster, space);
  for (const auto& outcome : plans) {
    const model::Plan& plan = outcome.plan;
    // TP stays inside a node, heads divide, dp * tp * pp = GPUs, batch splits over DP and micro-batches.
    CHECK(plan.tp <= cluster.gpus_per_node);
    CHECK(spec.num_attention_heads % plan.tp == 0);
    CHECK(plan.tp * plan.pp * plan.dp == outcome.num_gpus);
    CHECK(plan.global_batch_size % (plan.dp * plan.micro_batch_size) == 0);
    CHECK((plan.schedule == model::Schedule::Interleaved) == (plan.vp > 1));
  }
  SECTION("layers that do not divide by pp get Megatron first/last stage sizes (126 layers on PP16: 7+14x8+7)") {
    spec.num_layers = 126;
    space.pp = {16};
    space.num_gpus = {128};
    const auto uneven = sim::analysis::enumerate_space(spec, model::make_cluster("dgx-a100", 128, 0, "test"), space);
    REQUIRE(!uneven.empty());
    CHECK(uneven.front().plan.first_stage_layers == 7);
    CHECK(uneven.front().plan.last_stage_layers == 7);
  }
}

// Context parallelism in sim/: rank classes == all ranks for cp plans, the exposed ring exchange (what the attention
// step does not hide), the CP ring crossing nodes, and the search enumerating cp.
#include "model/cost_model.hpp"
#include "model/cost_profile.hpp"
#include "model/hardware_catalog.hpp"
#include "model/model_catalog.hpp"
#include "model/op_catalog.hpp"
#include "model/step_builder.hpp"
#include "sim/analysis/search.hpp"
#include "sim/simulator.hpp"

#include <catch2/catch.hpp>

#include <algorithm>

using namespace cuboid;
using Catch::Matchers::WithinRel;

namespace {

// A small Llama-shaped model with a long sequence (CP's use case): 4 layers, h = 1024, GQA 16/4, s = 8192.
model::ModelSpec long_seq_model() {
  model::ModelSpec spec = model::find_model("gpt-tiny");
  spec.name = "llama-cp-test";
  spec.num_layers = 4;
  spec.hidden_size = 1024;
  spec.num_attention_heads = 16;
  spec.num_query_groups = 4;
  spec.head_dim = 64;
  spec.ffn_hidden_size = 3584;
  spec.gated_mlp = true;
  spec.learned_position_embedding = false;
  spec.seq_length = 8192;
  spec.vocab_size = 32000;
  return spec;
}

model::Plan cp_plan(int tp, int cp, int dp, int pp) {
  model::Plan plan;
  plan.tp = tp;
  plan.cp = cp;
  plan.dp = dp;
  plan.pp = pp;
  plan.global_batch_size = 4 * dp * pp;
  plan.sequence_parallel = tp > 1;
  plan.distributed_optimizer = dp * cp > 1;
  return plan;
}

} // namespace

TEST_CASE("sim::simulate: cp plans give the same step time in rank classes and all ranks", "[sim][cp]") {
  // DESIGN.md: every CP rank of a stage does the same work (load-balanced split), so one representative per stage
  // must see what every rank sees; small nodes (2 GPUs) put the CP ring and the dp*cp gradient group on the network.
  struct Case {
    int tp, cp, dp, pp, gpus_per_node;
  };
  const Case c = GENERATE(Case{1, 2, 1, 1, 8}, Case{1, 2, 2, 1, 8}, Case{2, 2, 1, 2, 8}, Case{1, 4, 1, 2, 8},
                          Case{1, 2, 2, 1, 2}, Case{2, 2, 2, 1, 2});
  const model::ModelSpec spec = long_seq_model();
  const model::Plan plan = cp_plan(c.tp, c.cp, c.dp, c.pp);
  const model::ClusterSpec cluster = model::make_cluster("a100-80gb", plan.world_size(), c.gpus_per_node, "test");
  const model::CostModel cost(cluster, model::default_profile(cluster.gpu.name), plan);
  const sim::SimResult all =
      sim::simulate(model::build_step_graph(spec, cluster, plan, model::Instantiation::AllRanks), cost);
  const sim::SimResult classes =
      sim::simulate(model::build_step_graph(spec, cluster, plan, model::Instantiation::RankClasses), cost);
  INFO("tp " << c.tp << " cp " << c.cp << " dp " << c.dp << " pp " << c.pp << " gpus/node " << c.gpus_per_node);
  CHECK_THAT(classes.step_time_s, WithinRel(all.step_time_s, 1e-9));
  CHECK_THAT(classes.peak_memory_bytes, WithinRel(all.peak_memory_bytes, 1e-12));
}

TEST_CASE("model::CostModel: the CP ring is exposed only beyond the attention step", "[sim][cp]") {
  // One exchange: latency + bytes / link bandwidth (NVLink inside a node). Exposed per step = max(0, ring - attention
  // step): with a long sequence the attention step (s^2 work against s bytes) hides it completely.
  const model::ModelSpec base = long_seq_model();
  for (const std::int64_t seq : {std::int64_t{512}, std::int64_t{32768}}) {
    model::ModelSpec spec = base;
    spec.seq_length = seq;
    const model::Plan plan = cp_plan(1, 2, 1, 1);
    const model::ClusterSpec cluster = model::make_cluster("a100-80gb", 2, 8, "test");
    const model::CostModel cost(cluster, model::default_profile(cluster.gpu.name), plan);
    const model::OpBlock fwd = model::make_step_blocks(spec, plan).layer_fwd;
    const auto ring = std::find_if(fwd.ops.begin(), fwd.ops.end(),
                                   [](const model::Op& op) { return op.kind == model::OpKind::CpRing; });
    REQUIRE(ring != fwd.ops.end());
    const double ring_s = cost.op_time_s(*ring);
    const model::LinkParams link = cost.nvlink();
    CHECK_THAT(ring_s, WithinRel(link.latency_s + ring->msg_bytes / link.bw_bytes_per_s, 1e-12));
    const double attention_s = cost.op_time_s(*(ring + 1), model::Phase::Forward);
    INFO("seq " << seq << " ring " << ring_s << " attention step " << attention_s);
    CHECK_THAT(cost.block_cost(fwd).cp_comm_s + 1.0, WithinRel(std::max(0.0, ring_s - attention_s) + 1.0, 1e-12));
    if (seq == 32768) {
      CHECK(cost.block_cost(fwd).cp_comm_s == 0.0); // 16k local queries x 16k keys per step hide 8 MB easily
    }
  }
}

TEST_CASE("model::CostModel: a CP ring across nodes uses the network", "[sim][cp]") {
  const model::Plan plan = cp_plan(4, 4, 1, 1); // tp*cp = 16 > 8 GPUs per node
  const model::ClusterSpec cluster = model::make_cluster("a100-80gb", 16, 8, "test");
  const model::CostModel cost(cluster, model::default_profile(cluster.gpu.name), plan);
  REQUIRE_FALSE(cost.is_cp_intra_node());
  model::Op op;
  op.kind = model::OpKind::CpRing;
  op.msg_bytes = 64e6;
  CHECK_THAT(cost.op_time_s(op), WithinRel(cost.network().latency_s + 64e6 / cost.network().bw_bytes_per_s, 1e-12));
  const model::CostModel inside(model::make_cluster("a100-80gb", 4, 8, "test"),
                                model::default_profile(cluster.gpu.name), cp_plan(1, 4, 1, 1));
  REQUIRE(inside.is_cp_intra_node());
}

TEST_CASE("sim::analysis::enumerate_space: cp values that divide seq/2 and the GPUs", "[sim][cp]") {
  const model::ModelSpec spec = long_seq_model();
  const model::ClusterSpec cluster = model::make_cluster("a100-80gb", 8, 8, "test");
  sim::analysis::SearchSpace space;
  space.global_batch_size = 8;
  space.tp = {1};
  space.recompute = {model::Recompute::None};
  space.schedules = {model::Schedule::OneFOneB};
  space.cp = {1, 2, 3, 4};
  const auto plans = sim::analysis::enumerate_space(spec, cluster, space);
  std::vector<int> cps;
  for (const auto& outcome : plans) {
    REQUIRE(outcome.plan.world_size() == 8);
    cps.push_back(outcome.plan.cp);
  }
  REQUIRE(std::count(cps.begin(), cps.end(), 3) == 0); // 3 divides neither 8 GPUs nor 4096
  REQUIRE(std::count(cps.begin(), cps.end(), 2) > 0);
  REQUIRE(std::count(cps.begin(), cps.end(), 4) > 0);
  SECTION("default: cp 1 only") {
    space.cp.clear();
    for (const auto& outcome : sim::analysis::enumerate_space(spec, cluster, space)) {
      REQUIRE(outcome.plan.cp == 1);
    }
  }
}

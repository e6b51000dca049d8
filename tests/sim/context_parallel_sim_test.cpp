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
#include <map>
#include <set>
#include <string>

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

// --- cp_comm_type (Megatron --cp-comm-type) ---

TEST_CASE("model::CostModel: allgather and a2a CP collectives are exposed in full", "[sim][cp]") {
  const model::ModelSpec spec = long_seq_model();
  const model::ClusterSpec cluster = model::make_cluster("a100-80gb", 4, 8, "test");
  for (const model::CpCommType type : {model::CpCommType::AllGather, model::CpCommType::A2A}) {
    model::Plan plan = cp_plan(1, 4, 1, 1);
    plan.cp_comm_type = type;
    const model::CostModel cost(cluster, model::default_profile(cluster.gpu.name), plan);
    const model::StepBlocks blocks = model::make_step_blocks(spec, plan);
    for (const model::OpBlock* block : {&blocks.layer_fwd, &blocks.layer_bwd}) {
      double expected_s = 0.0;
      for (const model::Op& op : block->ops) {
        if (op.kind == model::OpKind::CpCollective) {
          // Ring collective over the 4 CP ranks on NVLink: 3 alphas + 3/4 of the buffer (all-gather output, reduce-
          // scatter input, all-to-all send buffer) over the link.
          const model::LinkParams link = cost.nvlink();
          const double op_s = 3.0 * link.latency_s + 0.75 * op.msg_bytes / link.bw_bytes_per_s;
          CHECK_THAT(cost.op_time_s(op), WithinRel(op_s, 1e-12));
          expected_s += op_s;
        }
      }
      INFO(model::to_string(type) << " " << block->name);
      REQUIRE(expected_s > 0.0);
      CHECK_THAT(cost.block_cost(*block).cp_comm_s, WithinRel(expected_s, 1e-12));
    }
  }
}

TEST_CASE("sim::simulate: the p2p ring hides what allgather exposes; step time and memory by cp_comm_type",
          "[sim][cp]") {
  // Long sequence, cp 4 on one node: each p2p ring step hides behind an attention step, while the all-gather and the
  // all-to-alls sit on the critical path. allgather holds the whole sequence's K/V: more memory than the ring (a small
  // vocabulary keeps the logits' backward workspace below the layers').
  model::ModelSpec spec = long_seq_model();
  spec.vocab_size = 1024;
  const model::ClusterSpec cluster = model::make_cluster("a100-80gb", 4, 8, "test");
  std::map<model::CpCommType, sim::SimResult> results;
  for (const model::CpCommType type : {model::CpCommType::P2P, model::CpCommType::AllGather, model::CpCommType::A2A}) {
    model::Plan plan = cp_plan(1, 4, 1, 1);
    plan.cp_comm_type = type;
    const model::CostModel cost(cluster, model::default_profile(cluster.gpu.name), plan);
    results.emplace(type, sim::simulate(
                              model::build_step_graph(spec, cluster, plan, model::Instantiation::RankClasses), cost));
  }
  const sim::SimResult& p2p = results.at(model::CpCommType::P2P);
  const sim::SimResult& gather = results.at(model::CpCommType::AllGather);
  const sim::SimResult& ulysses = results.at(model::CpCommType::A2A);
  INFO("p2p " << p2p.step_time_s << " allgather " << gather.step_time_s << " a2a " << ulysses.step_time_s);
  CHECK(gather.step_time_s > p2p.step_time_s);
  CHECK(ulysses.step_time_s > p2p.step_time_s);
  CHECK(gather.peak_memory_bytes > p2p.peak_memory_bytes);
  // Same model FLOPs per step whichever way K/V travel.
  CHECK_THAT(gather.model_tflops_per_gpu * gather.step_time_s, WithinRel(p2p.model_tflops_per_gpu * p2p.step_time_s,
                                                                          1e-9));
}

TEST_CASE("model::CostModel: unfused attention of a CP tile prices queries x keys", "[sim][cp]") {
  // Without FlashAttention the scores go through HBM: p2p's cp tiles of s/cp x s/cp and allgather's two chunks of
  // s/2cp x s hold the same s^2/cp scores, so their attention times agree to the GEMM shapes' efficiency.
  const model::ModelSpec spec = long_seq_model();
  const model::ClusterSpec cluster = model::make_cluster("a100-80gb", 2, 8, "test");
  const auto attention_s = [&](model::CpCommType type, int cp) {
    model::Plan plan = cp_plan(1, cp, 1, 1);
    plan.flash_attention = false;
    plan.cp_comm_type = type;
    const model::CostModel cost(model::make_cluster("a100-80gb", cp, 8, "test"),
                                model::default_profile(cluster.gpu.name), plan);
    double total = 0.0;
    for (const model::Op& op : model::make_step_blocks(spec, plan).layer_fwd.ops) {
      total += op.kind == model::OpKind::Attention ? cost.op_time_s(op, model::Phase::Forward) : 0.0;
    }
    return total;
  };
  const double whole = attention_s(model::CpCommType::P2P, 1);
  const double ring = attention_s(model::CpCommType::P2P, 2);
  const double gather = attention_s(model::CpCommType::AllGather, 2);
  INFO("cp 1 " << whole << " p2p " << ring << " allgather " << gather);
  CHECK_THAT(gather, WithinRel(ring, 0.25));
  CHECK(gather < 0.75 * whole); // half the scores of the unsplit rank, not all of them
}

TEST_CASE("sim::analysis::enumerate_space: cp_comm_types multiply cp > 1 plans; a2a only where heads split",
          "[sim][cp]") {
  const model::ModelSpec spec = long_seq_model(); // 16 heads, 4 query groups
  const model::ClusterSpec cluster = model::make_cluster("a100-80gb", 8, 8, "test");
  sim::analysis::SearchSpace space;
  space.global_batch_size = 8;
  space.tp = {1};
  space.pp = {1};
  space.recompute = {model::Recompute::None};
  space.schedules = {model::Schedule::OneFOneB};
  space.distributed_optimizer = {false};
  space.micro_batch_size = {1};
  space.cp = {1, 2, 8};
  space.cp_comm_types = {model::CpCommType::P2P, model::CpCommType::AllGather, model::CpCommType::A2A};
  std::map<int, std::set<model::CpCommType>> by_cp;
  std::set<std::string> keys;
  for (const auto& outcome : sim::analysis::enumerate_space(spec, cluster, space)) {
    by_cp[outcome.plan.cp].insert(outcome.plan.cp_comm_type);
    REQUIRE(keys.insert(sim::analysis::plan_key(outcome.plan, outcome.num_gpus)).second); // keys stay unique
  }
  CHECK(by_cp[1] == std::set<model::CpCommType>{model::CpCommType::P2P});
  CHECK(by_cp[2] == std::set<model::CpCommType>{model::CpCommType::P2P, model::CpCommType::AllGather,
                                                model::CpCommType::A2A});
  // 4 query groups do not split over 8 CP ranks: no a2a plan.
  CHECK(by_cp[8] == std::set<model::CpCommType>{model::CpCommType::P2P, model::CpCommType::AllGather});
  CHECK(std::count_if(keys.begin(), keys.end(), [](const std::string& key) { return key.ends_with("cp2-a2a"); }) ==
        1);
}

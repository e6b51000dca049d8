// FLOP counts of the op catalog and the step graph against the published closed forms:
// model FLOPs 72 B s L h^2 (1 + s/(6h) + V/(12 L h)) (Korthikanti et al. 2022) and hardware FLOPs with full
// recompute 96 B s L h^2 (1 + s/(6h) + V/(16 L h)) (Narayanan et al. SC21 eq. 3).
#include "ir_fixtures.hpp"

#include "model/op_catalog.hpp"
#include "model/step_builder.hpp"

#include <catch2/catch.hpp>

using namespace cuboid::model;
using namespace cuboid::model::testing;
using Catch::Matchers::WithinRel;

namespace {

constexpr double EXACT = 1e-9;

double korthikanti_model_flops(double batch, double s, double layers, double h, double vocab) {
  return 72.0 * batch * s * layers * h * h * (1.0 + s / (6.0 * h) + vocab / (12.0 * layers * h));
}

double narayanan_hw_flops_full(double batch, double s, double layers, double h, double vocab) {
  return 96.0 * batch * s * layers * h * h * (1.0 + s / (6.0 * h) + vocab / (16.0 * layers * h));
}

// Sum over the graph's tasks of the block FLOPs, times each rank's multiplicity: all ranks of the step.
std::pair<double, double> graph_flops(const TaskGraph& graph) {
  double model = 0.0;
  double hw = 0.0;
  for (const Task& task : graph.tasks()) {
    if (task.block < 0) {
      continue;
    }
    const OpBlock& block = graph.blocks()[static_cast<std::size_t>(task.block)];
    const double multiplicity = graph.ranks()[static_cast<std::size_t>(graph.rank_index(task.rank))].multiplicity;
    model += block.model_flops * multiplicity;
    hw += block.hw_flops * multiplicity;
  }
  return {model, hw};
}

} // namespace

TEST_CASE("model::model_flops_per_step matches Korthikanti et al. 2022 for GPT shapes", "[ir]") {
  // GPT-3 sizes of Brown et al. 2020 Table 2.1 (layers, hidden, heads), s = 2048, V = 51200, B = 1536.
  const auto [layers, hidden, heads] = GENERATE(table<int, int, int>(
      {{12, 768, 12}, {24, 2048, 16}, {32, 4096, 32}, {40, 5120, 40}, {96, 12288, 96}}));
  const ModelSpec spec = gpt_model(layers, hidden, heads);
  Plan plan = make_plan(1, 1, 1, 1536);
  CHECK_THAT(model_flops_per_step(spec, plan), WithinRel(korthikanti_model_flops(1536, 2048, layers, hidden, 51200),
                                                         EXACT));
  plan.recompute = Recompute::None;
  CHECK_THAT(hw_flops_per_step(spec, plan), WithinRel(model_flops_per_step(spec, plan), EXACT));
  plan.recompute = Recompute::Full;
  CHECK_THAT(hw_flops_per_step(spec, plan), WithinRel(narayanan_hw_flops_full(1536, 2048, layers, hidden, 51200),
                                                      EXACT));
  // Selective recompute reruns only QK^T and AV forward: 4 s h FLOPs per token and layer.
  plan.recompute = Recompute::Selective;
  CHECK_THAT(hw_flops_per_step(spec, plan) - model_flops_per_step(spec, plan),
             WithinRel(1536.0 * 2048 * layers * 4.0 * 2048 * hidden, EXACT));
}

TEST_CASE("model::make_step_blocks: per-rank block FLOPs are 1/tp of the layer's, backward = 2x forward", "[ir]") {
  // One GPT-3 layer, b = 2, s = 2048: forward GEMM + attention FLOPs 24 b s h^2 + 4 b s^2 h (Korthikanti 6.1).
  const ModelSpec spec = gpt3_175b();
  const int tp = GENERATE(1, 2, 8);
  Plan plan = make_plan(tp, 1, 1, 2, 2);
  plan.sequence_parallel = GENERATE(false, true);
  const StepBlocks blocks = make_step_blocks(spec, plan);
  const double b = 2.0;
  const double s = 2048.0;
  const double h = 12288.0;
  const double fwd = (24.0 * b * s * h * h + 4.0 * b * s * s * h) / tp;
  CHECK_THAT(blocks.layer_fwd.model_flops, WithinRel(fwd, EXACT));
  CHECK_THAT(blocks.layer_bwd.model_flops, WithinRel(2.0 * fwd, EXACT));
  CHECK_THAT(blocks.head_fwd.model_flops, WithinRel(2.0 * b * s * h * 51200.0 / tp, EXACT));
  CHECK_THAT(blocks.head_bwd.model_flops, WithinRel(4.0 * b * s * h * 51200.0 / tp, EXACT));
  CHECK(blocks.embed_fwd.model_flops == 0.0);
  // TP collectives: none at tp = 1; two per layer direction otherwise, with the full b*s*h bf16 message.
  int collectives = 0;
  for (const Op& op : blocks.layer_fwd.ops) {
    if (op.kind == OpKind::TpCollective) {
      ++collectives;
      CHECK(op.msg_bytes == b * s * h * 2.0);
    }
  }
  CHECK(collectives == (tp == 1 ? 0 : (plan.sequence_parallel ? 4 : 2)));
}

TEST_CASE("model::make_step_blocks: recompute flags and backward op names", "[ir]") {
  const ModelSpec spec = gpt_model(4, 1024, 16, 1024, 32000);
  Plan plan = make_plan(2, 1, 1, 4);
  plan.recompute = Recompute::Selective;
  const StepBlocks selective = make_step_blocks(spec, plan);
  REQUIRE(selective.layer_bwd.ops.front().name == "attn");
  CHECK(selective.layer_bwd.ops.front().recompute);
  CHECK(selective.layer_bwd.hw_flops - selective.layer_bwd.model_flops ==
        selective.layer_fwd.ops[2].flops); // ln1, qkv, attn: the attention core's forward FLOPs
  plan.recompute = Recompute::Full;
  const StepBlocks full = make_step_blocks(spec, plan);
  CHECK_THAT(full.layer_bwd.hw_flops - full.layer_bwd.model_flops, WithinRel(full.layer_fwd.model_flops, EXACT));
  bool has_dgrad = false;
  bool has_wgrad = false;
  for (const Op& op : full.layer_bwd.ops) {
    has_dgrad = has_dgrad || op.name == "fc1.dgrad";
    has_wgrad = has_wgrad || op.name == "fc1.wgrad";
  }
  CHECK((has_dgrad && has_wgrad));
}

TEST_CASE("model::build_step_graph: graph FLOPs equal the analytic step FLOPs in both instantiations", "[ir]") {
  // Summed over tasks x multiplicity, for every recompute mode, GPT and Llama (GQA, SwiGLU) shapes.
  const Recompute recompute = GENERATE(Recompute::None, Recompute::Selective, Recompute::Full);
  const Instantiation inst = GENERATE(Instantiation::AllRanks, Instantiation::RankClasses);
  const bool llama = GENERATE(false, true);
  const ModelSpec spec = llama ? llama_model(8, 1024, 16, 4, 2816, 1024, 32000) : gpt_model(8, 1024, 16, 1024, 32000);
  Plan plan = make_plan(2, 2, 2, 16, 2, 2);
  plan.recompute = recompute;
  plan.sequence_parallel = llama;
  const TaskGraph graph = build_step_graph(spec, test_cluster(plan.world_size()), plan, inst);
  const auto [model, hw] = graph_flops(graph);
  CHECK_THAT(model, WithinRel(model_flops_per_step(spec, plan), EXACT));
  CHECK_THAT(hw, WithinRel(hw_flops_per_step(spec, plan), EXACT));
  CHECK(graph.model_flops_per_step == model_flops_per_step(spec, plan));
  CHECK(graph.hw_flops_per_step == hw_flops_per_step(spec, plan));
}

// Zero-bubble schedules (Qi et al. 2024, arXiv 2401.10241): the per-stage B/W orders of zb-h1 and zb-v, the split
// of the backward blocks, and the dependencies of the split step graph (W after its B, P2P gradients from B only,
// DP gradient reduction after W).
#include "model/errors.hpp"
#include "model/hardware_catalog.hpp"
#include "model/memory_model.hpp"
#include "model/model_catalog.hpp"
#include "model/op_catalog.hpp"
#include "model/schedule.hpp"
#include "model/step_builder.hpp"

#include <boost/graph/topological_sort.hpp>
#include <catch2/catch.hpp>

#include <map>
#include <tuple>

using cuboid::InfeasibleError;
using cuboid::InputError;
using namespace cuboid::model;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {

// Every (micro-batch, chunk) runs F, then B, then W, each exactly once.
void require_complete(const std::vector<ScheduleStep>& order, int num_microbatches, int vp) {
  std::map<std::pair<int, int>, int> seen; // (mb, chunk) -> steps done so far (0 F, 1 B, 2 W)
  for (const ScheduleStep& step : order) {
    int& done = seen[{step.microbatch, step.chunk}];
    const int expected = step.phase == Phase::Forward ? 0 : step.phase == Phase::Backward ? 1 : 2;
    REQUIRE(done == expected);
    ++done;
  }
  REQUIRE(seen.size() == static_cast<std::size_t>(num_microbatches * vp));
  for (const auto& [key, done] : seen) {
    REQUIRE(done == 3);
  }
}

std::string text(const std::vector<ScheduleStep>& order) {
  std::string out;
  for (const ScheduleStep& step : order) {
    out += step.phase == Phase::Forward ? "F" : step.phase == Phase::Backward ? "B" : "W";
    out += std::to_string(step.microbatch);
    out += step.chunk == 1 ? "'" : "";
    out += " ";
  }
  return out;
}

Plan small_plan(Schedule schedule, int pp, int num_microbatches) {
  Plan plan;
  plan.pp = pp;
  plan.schedule = schedule;
  plan.vp = schedule == Schedule::ZbV ? 2 : 1;
  plan.global_batch_size = num_microbatches;
  return plan;
}

} // namespace

TEST_CASE("model::stage_order: zb-h1 per-stage order (Qi et al. 2024 Fig. 3 top, pp = 4)", "[schedule]") {
  // Stage s: pp - s warm-up forwards, s (B, F) pairs whose W is deferred, steady (B, W, F), cool-down (B, W), then
  // the s deferred W passes. Stage 0 is 1F1B with W right after its B; stage 3 defers W0..W2 to fill the cool-down.
  CHECK(text(stage_order(Schedule::ZbH1, 4, 0, 6, 1)) ==
        "F0 F1 F2 F3 B0 W0 F4 B1 W1 F5 B2 W2 B3 W3 B4 W4 B5 W5 ");
  CHECK(text(stage_order(Schedule::ZbH1, 4, 3, 6, 1)) ==
        "F0 B0 F1 B1 F2 B2 F3 B3 W3 F4 B4 W4 F5 B5 W5 W0 W1 W2 ");
  const int pp = GENERATE(1, 2, 4, 8);
  const int m = GENERATE(8, 13, 32);
  for (int stage = 0; stage < pp; ++stage) {
    const auto order = stage_order(Schedule::ZbH1, pp, stage, m, 1);
    require_complete(order, m, 1);
    // The same activation memory as 1F1B: at most pp micro-batches between F and W, pp on stage 0.
    CHECK(peak_in_flight(order) <= pp);
    if (stage == 0) {
      CHECK(peak_in_flight(order) == std::min(pp, m));
    }
  }
  REQUIRE_THROWS_AS(stage_order(Schedule::ZbH1, 4, 0, 3, 1), InfeasibleError);
}

TEST_CASE("model::stage_order: zb-v per-stage order (V shape, two chunks)", "[schedule]") {
  // PyTorch's ScheduleZBVZeroBubble for pp = 4: stage 0 starts with 2*4 - 1 = 7 forwards of chunk 0, then
  // (F, B, W) of chunk 1; the last stage alternates the chunks from the start (it holds the turn of the V).
  CHECK(text(stage_order(Schedule::ZbV, 4, 0, 8, 2)).rfind("F0 F1 F2 F3 F4 F5 F6 F0' B0' W0' F1' B1' W1' ", 0) == 0);
  CHECK(text(stage_order(Schedule::ZbV, 4, 3, 8, 2)).rfind("F0 F0' F1 F1' F2 F2' F3 F3' B0' W0' ", 0) == 0);
  const int pp = GENERATE(1, 2, 4, 8);
  const int m = GENERATE(1, 3, 8, 16, 33);
  for (int stage = 0; stage < pp; ++stage) {
    const auto order = stage_order(Schedule::ZbV, pp, stage, m, 2);
    require_complete(order, m, 2);
    // Each chunk holds half a stage: 2 pp chunk-micro-batches = 1F1B's pp micro-batches of a whole stage.
    CHECK(peak_in_flight(order) <= 2 * pp);
  }
}

TEST_CASE("model::chunk_layouts: zb-v places the chunks in a V", "[schedule]") {
  // 16 layers, pp = 4: chunk 0 of stage s is virtual stage s, chunk 1 is 7 - s; 2 layers per chunk.
  Plan plan = small_plan(Schedule::ZbV, 4, 8);
  const auto stage0 = chunk_layouts(plan, 16, 0);
  CHECK(stage0[0].first_layer == 0);
  CHECK(stage0[0].has_embedding);
  CHECK(stage0[1].first_layer == 14);
  CHECK(stage0[1].has_head);
  const auto stage3 = chunk_layouts(plan, 16, 3);
  CHECK(stage3[0].first_layer == 6);
  CHECK(stage3[1].first_layer == 8);
  for (int v = 0; v < 8; ++v) {
    const StageChunk at = locate_virtual_stage(plan, v);
    CHECK(virtual_stage_of(plan, at.stage, at.chunk) == v);
  }
}

TEST_CASE("model::make_step_blocks: B + W split the backward without changing it", "[ir]") {
  const ModelSpec spec = find_model("gpt3-175b");
  Plan plan;
  plan.tp = GENERATE(1, 8);
  plan.sequence_parallel = plan.tp > 1;
  plan.recompute = GENERATE(Recompute::None, Recompute::Full);
  const StepBlocks blocks = make_step_blocks(spec, plan);
  // Same ops, so the same FLOPs (and the same per-op costs) as the unsplit block.
  CHECK(blocks.layer_bwd_input.ops.size() + blocks.layer_bwd_weight.ops.size() == blocks.layer_bwd.ops.size());
  CHECK_THAT(blocks.layer_bwd_input.hw_flops + blocks.layer_bwd_weight.hw_flops,
             WithinRel(blocks.layer_bwd.hw_flops, 1e-12));
  CHECK_THAT(blocks.head_bwd_input.model_flops + blocks.head_bwd_weight.model_flops,
             WithinRel(blocks.head_bwd.model_flops, 1e-12));
  // W holds exactly the wgrad GEMMs, whose FLOPs equal the forward GEMMs' (dW = X^T dY); attention has no weights.
  double forward_gemm_flops = 0.0;
  for (const Op& op : blocks.layer_fwd.ops) {
    forward_gemm_flops += op.kind == OpKind::Gemm ? op.flops : 0.0;
  }
  CHECK_THAT(blocks.layer_bwd_weight.model_flops, WithinRel(forward_gemm_flops, 1e-12));
  for (const Op& op : blocks.layer_bwd_weight.ops) {
    CHECK_THAT(op.name, Contains(".wgrad"));
  }
  CHECK(blocks.embed_bwd_weight.ops.size() == blocks.embed_bwd.ops.size());
}

TEST_CASE("model::build_step_graph: zero-bubble dependencies", "[ir]") {
  ModelSpec spec = find_model("gpt-tiny");
  spec.num_layers = 8; // divisible by 2 pp for every pp below
  const Schedule schedule = GENERATE(Schedule::ZbH1, Schedule::ZbV);
  const int pp = GENERATE(2, 4);
  const int m = GENERATE(4, 9);
  Plan plan = small_plan(schedule, pp, m);
  plan.dp = 2;
  plan.global_batch_size = 2 * m;
  const ClusterSpec cluster = make_cluster("a100-80gb", plan.world_size(), 8, "test");
  validate(plan, spec, cluster, "t");
  const TaskGraph graph = build_step_graph(spec, cluster, plan, Instantiation::AllRanks);
  // A deadlock-free schedule is an acyclic graph.
  std::vector<TaskGraph::Graph::vertex_descriptor> sorted;
  REQUIRE_NOTHROW(boost::topological_sort(graph.graph(), std::back_inserter(sorted)));

  // Position of every compute task in its rank's chain; W of (rank, mb, layer, chunk) after its B.
  using Key = std::tuple<int, int, int, int, std::int32_t>; // rank, mb, chunk, layer, block-kind (layer or head)
  std::map<Key, std::size_t> backward_at;
  std::map<Key, std::size_t> weight_at;
  std::map<int, std::size_t> next_position;
  double act_alloc = 0.0;
  double act_free = 0.0;
  std::size_t weight_tasks = 0;
  for (TaskId id = 0; id < graph.num_tasks(); ++id) {
    const Task& task = graph.task(id);
    act_alloc += task.alloc_at_start[static_cast<std::size_t>(MemTag::Activations)];
    act_free += task.free_at_end[static_cast<std::size_t>(MemTag::Activations)];
    if (task.kind != TaskKind::Compute) {
      continue;
    }
    const std::string& block = graph.blocks()[static_cast<std::size_t>(task.block)].name;
    const Key key{task.rank, task.microbatch, task.chunk, task.layer, block.rfind("head", 0) == 0 ? 1 : 0};
    const std::size_t position = next_position[task.rank]++;
    if (task.phase == Phase::Backward) {
      CHECK_THAT(block, Contains(".igrad.bwd"));
      backward_at[key] = position;
    } else if (task.phase == Phase::WeightGrad) {
      CHECK_THAT(block, Contains(".wgrad.bwd"));
      weight_at[key] = position;
      ++weight_tasks;
    }
  }
  CHECK(weight_tasks > 0);
  for (const auto& [key, position] : weight_at) {
    if (std::get<3>(key) < 0 && std::get<4>(key) == 0) {
      continue; // the embedding's backward is all weight gradient: no B task
    }
    REQUIRE(backward_at.count(key) == 1);
    CHECK(backward_at.at(key) < position);
  }
  CHECK_THAT(act_free, WithinRel(act_alloc, 1e-9)); // every activation byte allocated is freed
  const auto& g = graph.graph();
  for (TaskId id = 0; id < graph.num_tasks(); ++id) {
    const Task& task = graph.task(id);
    if (task.kind == TaskKind::P2P) {
      // Gradients sent upstream come from B (input gradient) tasks only, never from W.
      for (auto [it, end] = boost::in_edges(id, g); it != end; ++it) {
        const Task& source = graph.task(static_cast<TaskId>(boost::source(*it, g)));
        CHECK(source.phase == task.phase);
      }
    }
    if (task.kind == TaskKind::Collective && task.group == GroupKind::Dp &&
        task.collective != CollectiveKind::AllGather) {
      // A gradient bucket's reduction waits for a weight-gradient task of its chunk (plus the previous bucket).
      bool after_weight_grad = false;
      for (auto [it, end] = boost::in_edges(id, g); it != end; ++it) {
        const Task& source = graph.task(static_cast<TaskId>(boost::source(*it, g)));
        after_weight_grad = after_weight_grad || (source.kind == TaskKind::Compute && source.phase ==
                                                  Phase::WeightGrad && source.chunk == task.chunk);
      }
      CHECK(after_weight_grad);
    }
  }
}

TEST_CASE("model::validate: zero-bubble plan rules", "[spec]") {
  const ModelSpec spec = find_model("gpt-tiny");
  Plan plan = small_plan(Schedule::ZbV, 2, 4);
  const ClusterSpec cluster = make_cluster("a100-80gb", plan.world_size(), 8, "test");
  plan.vp = 1;
  REQUIRE_THROWS_WITH(validate(plan, spec, cluster, "t"), Contains("plan.vp") && Contains("vp = 2"));
  plan = small_plan(Schedule::ZbH1, 2, 4);
  plan.vp = 2;
  REQUIRE_THROWS_AS(validate(plan, spec, cluster, "t"), InputError);
  plan = small_plan(Schedule::ZbH1, 2, 1);
  REQUIRE_THROWS_WITH(validate(plan, spec, cluster, "t"), Contains("zb-h1") && Contains(">= pp"));
}

// Lowering the step's TaskGraph gives every rank the same schedule as the plan says (compared with the independent
// internal schedules: same compute order, same messages), and the lowered programs cannot deadlock.
#include "program_check.hpp"
#include "test_models.hpp"

#include "exec/internal_schedule.hpp"
#include "exec/lowering.hpp"
#include "model/step_builder.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <string>
#include <tuple>

namespace cuboid::exec {
namespace {

using ComputeKey = std::tuple<InstrKind, UnitKind, int, int, int>; // kind, unit, layer, chunk, micro-batch
using MessageKey = std::tuple<InstrKind, int, int, Direction, int>; // kind, peer, tag, direction, chunk

std::vector<ComputeKey> compute_order(const Program& program) {
  std::vector<ComputeKey> out;
  for (const Instr& i : program.instrs) {
    if (i.kind == InstrKind::Forward || i.kind == InstrKind::Backward) {
      out.emplace_back(i.kind, i.unit, i.layer, i.chunk, i.microbatch);
    }
  }
  return out;
}

std::vector<MessageKey> messages(const Program& program) {
  std::vector<MessageKey> out;
  for (const Instr& i : program.instrs) {
    if (i.kind == InstrKind::Send || i.kind == InstrKind::Recv) {
      out.emplace_back(i.kind, i.peer, i.tag, i.direction, i.chunk);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST_CASE("exec::lower_to_program: the IR schedule is the plan's schedule", "[exec]") {
  const model::ModelSpec spec = test::gpt_tiny_shape(); // 4 layers
  struct Case {
    model::Schedule schedule;
    int tp;
    int dp;
    int pp;
    int vp;
    std::int64_t microbatches;
  };
  const Case c = GENERATE(Case{model::Schedule::GPipe, 2, 2, 2, 1, 4}, Case{model::Schedule::OneFOneB, 2, 2, 2, 1, 4},
                          Case{model::Schedule::OneFOneB, 1, 1, 4, 1, 3}, Case{model::Schedule::Interleaved, 1, 2, 2, 2, 4},
                          Case{model::Schedule::OneFOneB, 2, 2, 1, 1, 2});
  model::Plan plan;
  plan.tp = c.tp;
  plan.dp = c.dp;
  plan.pp = c.pp;
  plan.vp = c.vp;
  plan.schedule = c.schedule;
  plan.micro_batch_size = 1;
  plan.global_batch_size = c.microbatches * c.dp;
  plan.grad_bucket_bytes = 1e6; // several buckets per rank
  model::ClusterSpec cluster;
  cluster.num_gpus = plan.world_size();
  cluster.gpus_per_node = plan.world_size();
  const model::TaskGraph graph = model::build_step_graph(spec, cluster, plan, model::Instantiation::AllRanks);
  const std::vector<Program> lowered = lower_all_ranks(graph);
  REQUIRE(lowered.size() == static_cast<std::size_t>(plan.world_size()));
  CHECK(test::runs_to_completion(lowered));
  for (int rank = 0; rank < plan.world_size(); ++rank) {
    INFO("rank " << rank);
    const Program internal = build_internal_program(spec, plan, rank);
    const Program& ir = lowered[static_cast<std::size_t>(rank)];
    CHECK(compute_order(ir) == compute_order(internal));
    CHECK(messages(ir) == messages(internal));
    CHECK(ir.instrs.back().kind == InstrKind::OptimizerStep);
    CHECK(test::no_use_after_free(ir));
    CHECK(ir.bucket_weights.empty() == (plan.dp == 1)); // one weight per DP gradient bucket
    for (const Instr& instr : ir.instrs) {
      if (instr.kind != InstrKind::Free) {
        CHECK(instr.task != NO_TASK);
      }
    }
  }
}

// --- mixture of experts ---
// moe-tiny (MoE layers 1-3) on pp 2: each chunk with MoE layers gets one expert-DP reduction of its routed experts,
// started after the chunk's last backward and waited for before the optimizer, and never a DP bucket of its own —
// when expert-DP groups have more than one rank (dp 4, ep 2); with ep = dp (expert-DP groups of one) there is none.
// The distributed optimizer's expert all-gather lowers to a no-op (expert_chunk -1).
TEST_CASE("exec::lower_to_program: MoE expert gradients are reduced once per chunk over the expert-DP group", "[exec]") {
  const int ep = GENERATE(2, 4);
  const bool distributed_optimizer = GENERATE(false, true);
  const model::ModelSpec spec = test::moe_tiny_shape();
  model::Plan plan;
  plan.dp = 4;
  plan.pp = 2;
  plan.ep = ep;
  plan.distributed_optimizer = distributed_optimizer;
  plan.micro_batch_size = 1;
  plan.global_batch_size = 8;
  model::ClusterSpec cluster;
  cluster.num_gpus = plan.world_size();
  cluster.gpus_per_node = plan.world_size();
  const model::TaskGraph graph = model::build_step_graph(spec, cluster, plan, model::Instantiation::AllRanks);
  const std::vector<Program> lowered = lower_all_ranks(graph);
  CHECK(test::runs_to_completion(lowered));
  for (const Program& program : lowered) {
    INFO("rank " << program.rank << " ep " << ep);
    int starts = 0;
    int waits = 0;
    int last_backward = -1;
    int start_at = -1;
    int wait_at = -1;
    int optimizer_at = -1;
    for (int pos = 0; pos < static_cast<int>(program.instrs.size()); ++pos) {
      const Instr& instr = program.instrs[static_cast<std::size_t>(pos)];
      if (instr.kind == InstrKind::Backward) {
        last_backward = pos;
      }
      if (instr.kind == InstrKind::OptimizerStep) {
        optimizer_at = pos;
      }
      if (instr.expert_chunk >= 0) {
        CHECK(instr.expert_chunk == 0);
        CHECK(instr.bucket == -1);
        starts += instr.kind == InstrKind::CollectiveStart ? 1 : 0;
        waits += instr.kind == InstrKind::CollectiveWait ? 1 : 0;
        (instr.kind == InstrKind::CollectiveStart ? start_at : wait_at) = pos;
      }
    }
    const int expected = ep == plan.dp ? 0 : 1; // both stages hold MoE layers (1 | 2, 3)
    CHECK(starts == expected);
    CHECK(waits == expected);
    if (expected == 1) {
      CHECK(start_at > last_backward);
      CHECK(wait_at > start_at);
      CHECK(wait_at < optimizer_at);
    }
  }
}

TEST_CASE("exec::lower_to_program: rank-class graphs are rejected", "[exec]") {
  model::Plan plan = test::single_rank_plan(1, 2);
  plan.pp = 2;
  model::ClusterSpec cluster;
  cluster.num_gpus = 2;
  cluster.gpus_per_node = 2;
  const model::TaskGraph graph =
      model::build_step_graph(test::gpt_tiny_shape(), cluster, plan, model::Instantiation::RankClasses);
  REQUIRE_THROWS_WITH(lower_to_program(graph, 0), Catch::Matchers::Contains("AllRanks"));
}

} // namespace
} // namespace cuboid::exec

namespace cuboid::exec {
namespace {

// --- zero-bubble schedules ---
// zb-h1 / zb-v lower to programs with a WeightGrad after every Backward of the same unit and micro-batch, that
// complete under blocking receives (no deadlock), and whose compute is every F, B, W exactly once.
TEST_CASE("exec::lower_to_program: zero-bubble programs", "[exec]") {
  const model::ModelSpec spec = test::gpt_tiny_shape(); // 4 layers
  model::Plan plan;
  plan.schedule = GENERATE(model::Schedule::ZbH1, model::Schedule::ZbV);
  plan.vp = plan.schedule == model::Schedule::ZbV ? 2 : 1;
  plan.tp = GENERATE(1, 2);
  plan.dp = 2;
  plan.pp = 2;
  plan.micro_batch_size = 1;
  plan.global_batch_size = GENERATE(4, 16);
  plan.grad_bucket_bytes = 1e6;
  model::ClusterSpec cluster;
  cluster.num_gpus = plan.world_size();
  cluster.gpus_per_node = plan.world_size();
  const model::TaskGraph graph = model::build_step_graph(spec, cluster, plan, model::Instantiation::AllRanks);
  const std::vector<Program> lowered = lower_all_ranks(graph);
  std::string listing;
  for (const Program& program : lowered) {
    listing += "rank " + std::to_string(program.rank) + ":";
    for (const Instr& instr : program.instrs) {
      listing += " [" + instr.label + "]";
    }
    listing += "\n";
  }
  INFO(listing);
  CHECK(test::runs_to_completion(lowered));
  for (const Program& program : lowered) {
    std::map<std::tuple<UnitKind, int, int, int>, int> done; // unit, layer, chunk, mb -> 1 after B, 2 after W
    int weight_grads = 0;
    for (const Instr& instr : program.instrs) {
      const std::tuple<UnitKind, int, int, int> key{instr.unit, instr.layer, instr.chunk, instr.microbatch};
      if (instr.kind == InstrKind::Backward) {
        CHECK(done[key] == 0);
        done[key] = 1;
      } else if (instr.kind == InstrKind::WeightGrad) {
        ++weight_grads;
        if (instr.unit != UnitKind::Embedding) {
          CHECK(done[key] == 1);
        }
        done[key] = 2;
      }
    }
    CHECK(weight_grads > 0);
    for (const auto& [key, state] : done) {
      CHECK(state == 2);
    }
    CHECK(test::no_use_after_free(program));
  }
}

} // namespace
} // namespace cuboid::exec

// A miniature step builder for simulator tests, independent of model/step_builder: one layer block per stage,
// GPipe or 1F1B order, P2P between stages, one DP all-reduce per rank after its last backward, then the optimizer.
// It builds both instantiations (all ranks; rank classes with one representative per stage) so the simulator's
// symmetry handling can be checked against an oracle that does not share code with the real builder.
#pragma once

#include "model/rank_grid.hpp"
#include "model/task_graph.hpp"

#include <algorithm>
#include <vector>

namespace cuboid::sim::testing {

struct ToySpec {
  model::Plan plan;
  model::ClusterSpec cluster;
  double gemm_size = 2048;       // fwd block: one (gemm_size)^3 GEMM; bwd: two
  double act_bytes = 8e6;        // P2P message per micro-batch
  double grad_bytes = 200e6;     // DP all-reduce per rank
  double act_alloc_bytes = 1e9;  // activations kept from fwd to bwd per micro-batch
  bool optimizer = true;         // append an optimizer task after the DP all-reduce
  int layers_per_stage = 1;      // each forward / backward is a chain of this many layer tasks
};

/// Order of (is_forward, micro-batch) on a stage.
inline std::vector<std::pair<bool, int>> stage_order(model::Schedule schedule, int stage, int pp, int m) {
  std::vector<std::pair<bool, int>> order;
  if (schedule == model::Schedule::GPipe) {
    for (int mb = 0; mb < m; ++mb) {
      order.emplace_back(true, mb);
    }
    for (int mb = 0; mb < m; ++mb) {
      order.emplace_back(false, mb);
    }
    return order;
  }
  // 1F1B (PipeDream-Flush, Narayanan et al. 2021): warm-up of (pp - stage - 1) forwards, then alternate.
  const int warmup = std::min(pp - stage - 1, m);
  int next_fwd = 0;
  int next_bwd = 0;
  for (; next_fwd < warmup; ++next_fwd) {
    order.emplace_back(true, next_fwd);
  }
  while (next_bwd < m) {
    if (next_fwd < m) {
      order.emplace_back(true, next_fwd++);
    }
    order.emplace_back(false, next_bwd++);
  }
  return order;
}

inline model::TaskGraph build_toy_graph(const ToySpec& spec, model::Instantiation inst) {
  using namespace model;
  const Plan& plan = spec.plan;
  ModelSpec toy_model;
  toy_model.name = "toy";
  toy_model.num_layers = static_cast<std::int64_t>(plan.pp) * spec.layers_per_stage;
  toy_model.seq_length = 1024;
  TaskGraph graph(toy_model, spec.cluster, plan, inst);
  const RankGrid grid(plan.tp, plan.cp, plan.dp, plan.pp);
  const int m = static_cast<int>(plan.num_microbatches());
  const double size = spec.gemm_size;

  auto gemm_block = [size](const std::string& name, int count) {
    OpBlock block;
    block.name = name;
    for (int idx = 0; idx < count; ++idx) {
      Op op;
      op.name = "fc";
      op.kind = OpKind::Gemm;
      op.m = op.n = op.k = static_cast<std::int64_t>(size);
      op.flops = 2.0 * size * size * size;
      op.hbm_bytes = 3.0 * 2.0 * size * size;
      block.ops.push_back(op);
    }
    block.model_flops = block.hw_flops = 2.0 * size * size * size * count;
    return block;
  };
  const std::int32_t fwd_block = graph.add_block(gemm_block("layer.fwd", 1));
  const std::int32_t bwd_block = graph.add_block(gemm_block("layer.bwd", 2));
  OpBlock opt;
  opt.name = "optimizer";
  Op adam;
  adam.name = "adam";
  adam.kind = OpKind::Elementwise;
  adam.hbm_bytes = 16.0 * spec.grad_bytes;
  opt.ops.push_back(adam);
  const std::int32_t opt_block = graph.add_block(opt);
  graph.model_flops_per_step = 3.0 * 2.0 * size * size * size * m * plan.world_size() * spec.layers_per_stage;
  graph.hw_flops_per_step = graph.model_flops_per_step;

  // Materialised ranks: all, or the (tp 0, dp 0) representative of each stage.
  std::vector<int> ranks;
  for (int rank = 0; rank < grid.world_size(); ++rank) {
    const RankCoord coord = grid.coord_of(rank);
    if (inst == Instantiation::AllRanks || (coord.tp_rank == 0 && coord.dp_rank == 0)) {
      ranks.push_back(rank);
      RankInfo info;
      info.rank = rank;
      info.stage = coord.pp_rank;
      info.multiplicity = inst == Instantiation::AllRanks ? 1.0 : plan.tp * plan.dp;
      info.static_bytes[static_cast<std::size_t>(MemTag::Weights)] = 2e9;
      graph.add_rank(info);
    }
  }
  auto materialised = [&ranks](int rank) { return std::find(ranks.begin(), ranks.end(), rank) != ranks.end(); };

  // Tasks per rank, in schedule order; fwd/bwd ids per (rank, mb) for the P2P wiring afterwards.
  const std::size_t world = static_cast<std::size_t>(grid.world_size());
  std::vector<std::vector<TaskId>> fwd(world, std::vector<TaskId>(static_cast<std::size_t>(m)));
  std::vector<std::vector<TaskId>> bwd(world, std::vector<TaskId>(static_cast<std::size_t>(m)));
  std::vector<std::vector<TaskId>> fwd_end = fwd;
  std::vector<std::vector<TaskId>> bwd_end = bwd;
  std::vector<TaskId> last(world);
  for (const int rank : ranks) {
    const RankCoord coord = grid.coord_of(rank);
    const auto r = static_cast<std::size_t>(rank);
    bool first = true;
    TaskId prev = 0;
    // fwd[r][mb] / bwd[r][mb] hold the first task of the chain (P2P receive side); *_end the last (send side).
    for (const auto& [is_fwd, mb] : stage_order(plan.schedule, coord.pp_rank, plan.pp, m)) {
      for (int layer = 0; layer < spec.layers_per_stage; ++layer) {
        Task task;
        task.kind = TaskKind::Compute;
        task.phase = is_fwd ? Phase::Forward : Phase::Backward;
        task.rank = rank;
        task.stage = coord.pp_rank;
        task.microbatch = mb;
        task.layer = coord.pp_rank * spec.layers_per_stage + layer;
        task.block = is_fwd ? fwd_block : bwd_block;
        (is_fwd ? task.alloc_at_start : task.free_at_end)[static_cast<std::size_t>(MemTag::Activations)] =
            spec.act_alloc_bytes / spec.layers_per_stage;
        const TaskId id = graph.add_task(task);
        if (layer == 0) {
          (is_fwd ? fwd : bwd)[r][static_cast<std::size_t>(mb)] = id;
        }
        (is_fwd ? fwd_end : bwd_end)[r][static_cast<std::size_t>(mb)] = id;
        if (!first) {
          graph.add_edge(prev, id);
        } else {
          first = false;
        }
        prev = id;
      }
    }
    for (int mb = 0; mb < m; ++mb) {
      graph.add_edge(fwd_end[r][static_cast<std::size_t>(mb)], bwd[r][static_cast<std::size_t>(mb)]);
    }
    last[r] = prev;
  }
  // P2P: forward activations stage s -> s+1, backward gradients s+1 -> s, between same (tp, dp) coordinates.
  for (const int rank : ranks) {
    const RankCoord coord = grid.coord_of(rank);
    if (coord.pp_rank + 1 >= plan.pp) {
      continue;
    }
    const int next = grid.rank_of(RankCoord{coord.tp_rank, coord.dp_rank, coord.pp_rank + 1});
    if (!materialised(next)) {
      continue;
    }
    for (int mb = 0; mb < m; ++mb) {
      const auto mbi = static_cast<std::size_t>(mb);
      for (const bool forward : {true, false}) {
        Task send;
        send.kind = TaskKind::P2P;
        send.stream = Stream::PpComm;
        send.phase = forward ? Phase::Forward : Phase::Backward;
        send.rank = forward ? rank : next;
        send.peer = forward ? next : rank;
        send.stage = forward ? coord.pp_rank : coord.pp_rank + 1;
        send.microbatch = mb;
        send.msg_bytes = spec.act_bytes;
        const TaskId id = graph.add_task(send);
        const auto from = static_cast<std::size_t>(forward ? rank : next);
        const auto to = static_cast<std::size_t>(forward ? next : rank);
        graph.add_edge(forward ? fwd_end[from][mbi] : bwd_end[from][mbi], id);
        graph.add_edge(id, forward ? fwd[to][mbi] : bwd[to][mbi]);
      }
    }
  }
  // DP all-reduce (one task per materialised member) then the optimizer.
  std::vector<std::int32_t> group_of(world, -1);
  for (const int rank : ranks) {
    const auto r = static_cast<std::size_t>(rank);
    if (group_of[r] < 0) {
      std::vector<int> members;
      for (const int member : grid.dp_group(rank)) {
        if (materialised(member)) {
          members.push_back(member);
        }
      }
      const std::int32_t gi = graph.add_group(members);
      for (const int member : members) {
        group_of[static_cast<std::size_t>(member)] = gi;
      }
    }
    Task reduce;
    reduce.kind = TaskKind::Collective;
    reduce.stream = Stream::DpComm;
    reduce.rank = rank;
    reduce.stage = grid.coord_of(rank).pp_rank;
    reduce.collective = CollectiveKind::AllReduce;
    reduce.group = GroupKind::Dp;
    reduce.group_index = group_of[r];
    reduce.group_size = plan.dp;
    reduce.msg_bytes = spec.grad_bytes;
    const TaskId reduce_id = graph.add_task(reduce);
    graph.add_edge(last[r], reduce_id);
    if (!spec.optimizer) {
      continue;
    }
    Task step;
    step.kind = TaskKind::Optimizer;
    step.rank = rank;
    step.stage = reduce.stage;
    step.block = opt_block;
    const TaskId step_id = graph.add_task(step);
    graph.add_edge(reduce_id, step_id);
  }
  return graph;
}

} // namespace cuboid::sim::testing

// TaskGraph -> per-rank Program (see lowering.hpp for the placement rules).
#include "exec/lowering.hpp"

#include "model/schedule.hpp"

#include "model/errors.hpp"

#include <boost/graph/adjacency_list.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <queue>
#include <set>

namespace cuboid::exec {

namespace {

using model::Task;
using model::TaskGraph;
using model::TaskId;
using model::TaskKind;

// Kahn's algorithm with the smallest ready task id first: deterministic, and equal to builder order when the
// builder creates tasks in schedule order.
std::vector<TaskId> topological_order(const TaskGraph& graph) {
  const auto& g = graph.graph();
  const std::size_t n = graph.num_tasks();
  std::vector<std::size_t> indegree(n, 0);
  for (std::size_t v = 0; v < n; ++v) {
    indegree[v] = boost::in_degree(static_cast<TaskGraph::Graph::vertex_descriptor>(v), g);
  }
  std::priority_queue<TaskId, std::vector<TaskId>, std::greater<>> ready;
  for (std::size_t v = 0; v < n; ++v) {
    if (indegree[v] == 0) {
      ready.push(static_cast<TaskId>(v));
    }
  }
  std::vector<TaskId> order;
  order.reserve(n);
  while (!ready.empty()) {
    const TaskId id = ready.top();
    ready.pop();
    order.push_back(id);
    for (auto [it, end] = boost::out_edges(id, g); it != end; ++it) {
      const auto target = boost::target(*it, g);
      if (--indegree[target] == 0) {
        ready.push(static_cast<TaskId>(target));
      }
    }
  }
  CUBOID_ASSERT(order.size() == n, "task graph has a cycle: {} of {} tasks sorted", order.size(), n);
  return order;
}

// Whether a non-layer compute task is the embedding or the head: by its block name ("embed.fwd", "head.bwd", the
// TaskGraph::label convention), else by the ops it contains.
bool block_is(const TaskGraph& graph, const Task& task, const char* prefix, std::initializer_list<const char*> ops) {
  if (task.block < 0) {
    return false;
  }
  const auto& block = graph.blocks().at(static_cast<std::size_t>(task.block));
  if (block.name.rfind(prefix, 0) == 0) {
    return true;
  }
  return std::any_of(block.ops.begin(), block.ops.end(), [&](const model::Op& op) {
    return std::any_of(ops.begin(), ops.end(), [&](const char* name) { return op.name == name; });
  });
}

class Lowerer {
public:
  Lowerer(const TaskGraph& graph, const std::vector<TaskId>& order, int rank)
      : graph_(graph), order_(order), rank_(rank), vp_(graph.get_plan().vp) {
    position_.assign(graph.num_tasks(), 0);
    for (std::size_t pos = 0; pos < order.size(); ++pos) {
      position_[order[pos]] = pos;
    }
  }

  Program lower() {
    program_.rank = rank_;
    // 1. The rank's own stream-ordered work: compute, optimizer, DP collectives (starts), in topological order.
    std::vector<TaskId> local;
    for (const TaskId id : order_) {
      const Task& t = graph_.task(id);
      if (t.rank == rank_ && t.kind != TaskKind::P2P) {
        if (t.kind == TaskKind::Collective && t.group != model::GroupKind::Dp &&
            t.group != model::GroupKind::ExpertDp) {
          continue; // TP collectives run inside the compute blocks
        }
        local.push_back(id);
      }
    }
    // 2. P2P receives go right before their first local consumer; sends right after their last local producer.
    std::map<std::size_t, std::vector<TaskId>> recv_before; // index into local -> P2P tasks
    std::map<std::size_t, std::vector<TaskId>> send_after;
    std::map<TaskId, std::size_t> local_index;
    for (std::size_t idx = 0; idx < local.size(); ++idx) {
      local_index[local[idx]] = idx;
    }
    const auto& g = graph_.graph();
    for (const TaskId id : order_) {
      const Task& t = graph_.task(id);
      if (t.kind != TaskKind::P2P) {
        continue;
      }
      if (t.peer == rank_) {
        std::size_t first = local.size();
        for (auto [it, end] = boost::out_edges(id, g); it != end; ++it) {
          const auto found = local_index.find(static_cast<TaskId>(boost::target(*it, g)));
          if (found != local_index.end()) {
            first = std::min(first, found->second);
          }
        }
        recv_before[first].push_back(id);
      }
      if (t.rank == rank_) {
        std::size_t last = 0;
        bool any = false;
        for (auto [it, end] = boost::in_edges(id, g); it != end; ++it) {
          const auto found = local_index.find(static_cast<TaskId>(boost::source(*it, g)));
          if (found != local_index.end()) {
            last = any ? std::max(last, found->second) : found->second;
            any = true;
          }
        }
        CUBOID_ASSERT(any, "P2P task {} has no producer on its sender rank {}", graph_.label(id), rank_);
        send_after[last].push_back(id);
      }
    }
    // 3. DP collectives: wait right before the first local successor.
    std::map<std::size_t, std::vector<TaskId>> wait_before;
    for (const TaskId id : local) {
      const Task& t = graph_.task(id);
      if (t.kind != TaskKind::Collective) {
        continue;
      }
      std::size_t first = local.size();
      for (auto [it, end] = boost::out_edges(id, g); it != end; ++it) {
        const auto found = local_index.find(static_cast<TaskId>(boost::target(*it, g)));
        if (found != local_index.end()) {
          first = std::min(first, found->second);
        }
      }
      wait_before[first].push_back(id);
    }
    for (std::size_t idx = 0; idx <= local.size(); ++idx) {
      for (const TaskId id : wait_before[idx]) {
        emit_wait(id);
      }
      for (const TaskId id : recv_before[idx]) {
        emit_p2p(id, InstrKind::Recv);
      }
      if (idx == local.size()) {
        break;
      }
      emit_local(local[idx]);
      for (const TaskId id : send_after[idx]) {
        emit_p2p(id, InstrKind::Send);
      }
    }
    add_frees();
    return std::move(program_);
  }

private:
  void add(Instr instr) {
    if (instr.label.empty()) {
      instr.label = describe(instr);
    }
    program_.instrs.push_back(std::move(instr));
  }

  void emit_local(TaskId id) {
    const Task& t = graph_.task(id);
    Instr instr;
    instr.task = id;
    instr.stream = t.stream;
    instr.label = graph_.label(id);
    switch (t.kind) {
    case TaskKind::Optimizer:
      instr.kind = InstrKind::OptimizerStep;
      add(instr);
      return;
    case TaskKind::Collective:
      instr.kind = InstrKind::CollectiveStart;
      if (t.group == model::GroupKind::ExpertDp) {
        instr.expert_chunk = expert_chunk_of(t);
        add(instr);
        return;
      }
      if (is_zero_collective(t)) {
        emit_zero(id, instr);
        return;
      }
      instr.bucket = bucket_of(id);
      add(instr);
      return;
    case TaskKind::Compute: emit_compute(id, instr); return;
    case TaskKind::P2P: break;
    }
    CUBOID_ASSERT(false, "unexpected task {} in the local stream", graph_.label(id));
  }

  void emit_compute(TaskId id, Instr instr) {
    const Task& t = graph_.task(id);
    CUBOID_ASSERT(t.phase != model::Phase::None, "compute task {} has no phase", graph_.label(id));
    instr.kind = t.phase == model::Phase::Forward    ? InstrKind::Forward
                 : t.phase == model::Phase::Backward ? InstrKind::Backward
                                                     : InstrKind::WeightGrad;
    instr.chunk = t.chunk;
    instr.microbatch = t.microbatch;
    const bool embed = block_is(graph_, t, "embed", {"embed", "embedding"});
    const bool head = block_is(graph_, t, "head", {"logits", "loss"});
    std::vector<std::pair<UnitKind, int>> units;
    if (embed) {
      units.emplace_back(UnitKind::Embedding, -1);
    }
    if (t.layer >= 0) {
      units.emplace_back(UnitKind::Layer, t.layer);
    }
    if (head) {
      units.emplace_back(UnitKind::Head, -1);
    }
    CUBOID_ASSERT(!units.empty(), "compute task {} is neither a layer, the embedding nor the head", graph_.label(id));
    if (instr.kind != InstrKind::Forward) {
      std::reverse(units.begin(), units.end());
    }
    emit_local_move(t, units.front().first, units.front().second);
    for (const auto& [unit, layer] : units) {
      Instr part = instr;
      part.unit = unit;
      part.layer = layer;
      add(part);
    }
  }

  // --- zero-bubble schedules ---
  // zb-v turns the pipeline on stage pp - 1: its chunk 0 feeds its own chunk 1 (and chunk 1's input gradient flows
  // back to chunk 0) through an IR edge, not a P2P task. Before the first unit of such a forward / input-gradient
  // step, move the tensor between the chunks' states.
  void emit_local_move(const Task& t, UnitKind unit, int layer) {
    const auto& plan = graph_.get_plan();
    if (plan.schedule != model::Schedule::ZbV || t.phase == model::Phase::WeightGrad) {
      return;
    }
    const bool forward = t.phase == model::Phase::Forward;
    const model::ChunkLayout lay =
        model::chunk_layouts(plan, graph_.get_model().num_layers, t.stage)[static_cast<std::size_t>(t.chunk)];
    const bool first_unit = forward ? (lay.has_embedding ? unit == UnitKind::Embedding
                                                         : unit == UnitKind::Layer && layer == lay.first_layer)
                                    : (lay.has_head ? unit == UnitKind::Head
                                                    : unit == UnitKind::Layer &&
                                                          layer == lay.first_layer + lay.num_layers - 1);
    const int virtual_stage = model::virtual_stage_of(plan, t.stage, t.chunk);
    const int neighbour = forward ? virtual_stage - 1 : virtual_stage + 1;
    if (!first_unit || neighbour < 0 || neighbour >= plan.pp * plan.vp) {
      return;
    }
    const model::StageChunk from = model::locate_virtual_stage(plan, neighbour);
    if (from.stage != t.stage) {
      return;
    }
    Instr move;
    move.kind = InstrKind::LocalMove;
    move.direction = forward ? Direction::Forward : Direction::Backward;
    move.chunk = from.chunk;
    move.peer = t.chunk;
    move.microbatch = t.microbatch;
    add(move);
  }

  // --- ZeRO / FSDP ---
  // ZeRO-2/3 collectives are the per-micro-batch DP ones (step_builder.cpp): a ZeRO-3 all-gather carries the block
  // and layer of the compute task it feeds; a reduce-scatter reduces what ran backward before it.
  static bool is_zero_collective(const Task& t) { return t.group == model::GroupKind::Dp && t.microbatch >= 0; }

  void emit_zero(TaskId id, Instr instr) {
    const Task& t = graph_.task(id);
    instr.chunk = t.chunk;
    instr.microbatch = t.microbatch;
    if (t.collective == model::CollectiveKind::ReduceScatter) {
      instr.zero = ZeroOp::ScatterGrads;
      add(instr);
      return;
    }
    CUBOID_ASSERT(t.collective == model::CollectiveKind::AllGather, "ZeRO collective {} is neither a gather nor a "
                  "reduce-scatter", graph_.label(id));
    instr.zero = ZeroOp::GatherParams;
    instr.layer = t.layer;
    instr.unit = t.layer >= 0 ? UnitKind::Layer
                              : (block_is(graph_, t, "embed", {"embed", "embedding"}) ? UnitKind::Embedding
                                                                                       : UnitKind::Head);
    add(instr);
  }

  void emit_p2p(TaskId id, InstrKind kind) {
    const Task& t = graph_.task(id);
    const auto direction = t.phase == model::Phase::Backward ? Direction::Backward : Direction::Forward;
    const int sender_stage = graph_.task(id).stage;
    const auto& grid_plan = graph_.get_plan();
    // The P2P task carries the sender's stage and chunk; the receiver's chunk changes where the pipeline wraps
    // (interleaved: stage pp-1 chunk c feeds stage 0 chunk c+1 forward, and back).
    // zb-v: the receiver is the neighbouring virtual stage of the V (model::locate_virtual_stage).
    const int sender_virtual = model::virtual_stage_of(grid_plan, sender_stage, t.chunk);
    const int receiver_chunk =
        model::locate_virtual_stage(grid_plan, sender_virtual + (direction == Direction::Forward ? 1 : -1)).chunk;
    Instr instr;
    instr.kind = kind;
    instr.task = id;
    instr.stream = model::Stream::PpComm;
    instr.direction = direction;
    instr.microbatch = t.microbatch;
    instr.chunk = kind == InstrKind::Send ? t.chunk : receiver_chunk;
    instr.peer = kind == InstrKind::Send ? t.peer : t.rank;
    instr.tag = p2p_tag(t.microbatch, t.chunk, vp_, direction);
    instr.label = graph_.label(id);
    add(instr);
  }

  // --- mixture of experts --- The expert-DP reduction of a chunk's routed-expert gradients (the reduce-scatter of
  // the distributed optimizer runs as an all-reduce, as the DP buckets do); its all-gather moves nothing (-1).
  static int expert_chunk_of(const Task& t) {
    return t.collective == model::CollectiveKind::AllGather ? -1 : t.chunk;
  }

  void emit_wait(TaskId id) {
    if (is_zero_collective(graph_.task(id))) {
      return; // ZeRO collectives complete at their start on the CPU backend (blocking MPI collectives)
    }
    Instr instr;
    instr.kind = InstrKind::CollectiveWait;
    instr.task = id;
    instr.stream = graph_.task(id).stream;
    if (graph_.task(id).group == model::GroupKind::ExpertDp) {
      instr.expert_chunk = expert_chunk_of(graph_.task(id));
      instr.label = graph_.label(id);
      add(instr);
      return;
    }
    instr.bucket = bucket_of(id);
    instr.label = graph_.label(id);
    add(instr);
  }

  // Gradient buckets are the DP all-reduces (or the reduce-scatters of the distributed optimizer); the distributed
  // optimizer's parameter all-gathers get bucket -1: the CPU runtime keeps full replicas (all-reduce + full AdamW,
  // the same numbers as sharded AdamW + all-gather), so they have nothing to move; the CUDA runtime shards the
  // optimizer state and all-gathers the bf16 copy at the end of its optimizer step (exec/cuda/cuda_runtime.cpp).
  int bucket_of(TaskId id) {
    if (graph_.task(id).collective == model::CollectiveKind::AllGather) {
      return -1;
    }
    const auto [it, inserted] = buckets_.emplace(id, static_cast<int>(buckets_.size()));
    if (inserted) {
      program_.bucket_weights.push_back(std::max(graph_.task(id).msg_bytes, 1.0));
    }
    return it->second;
  }

  // Free each (chunk, micro-batch) after the last instruction that uses it (its last backward, or the send of the
  // gradient that follows it).
  void add_frees() {
    std::map<std::pair<int, int>, std::size_t> last_backward;
    std::map<std::pair<int, int>, std::size_t> last_use;
    for (std::size_t idx = 0; idx < program_.instrs.size(); ++idx) {
      const Instr& instr = program_.instrs[idx];
      if (instr.microbatch >= 0) {
        last_use[{instr.chunk, instr.microbatch}] = idx;
      }
      if (instr.kind == InstrKind::Backward) {
        last_backward[{instr.chunk, instr.microbatch}] = idx;
      }
    }
    for (auto& [key, idx] : last_backward) {
      idx = last_use[key];
    }
    std::vector<Instr> out;
    out.reserve(program_.instrs.size() + last_backward.size());
    std::set<std::size_t> free_after;
    for (const auto& [key, idx] : last_backward) {
      free_after.insert(idx);
    }
    for (std::size_t idx = 0; idx < program_.instrs.size(); ++idx) {
      out.push_back(program_.instrs[idx]);
      if (free_after.contains(idx)) {
        Instr free;
        free.kind = InstrKind::Free;
        free.chunk = program_.instrs[idx].chunk;
        free.microbatch = program_.instrs[idx].microbatch;
        free.label = describe(free);
        out.push_back(free);
      }
    }
    program_.instrs = std::move(out);
  }

  const TaskGraph& graph_;
  const std::vector<TaskId>& order_;
  int rank_;
  int vp_;
  std::vector<std::size_t> position_;
  std::map<TaskId, int> buckets_;
  Program program_;
};

void check_instantiation(const TaskGraph& graph) {
  if (graph.get_instantiation() != model::Instantiation::AllRanks) {
    throw InputError("exec: the task graph must be built with Instantiation::AllRanks to be run (rank classes "
                     "materialise one representative per stage only)");
  }
}

} // namespace

Program lower_to_program(const TaskGraph& graph, int rank) {
  check_instantiation(graph);
  const std::vector<TaskId> order = topological_order(graph);
  return Lowerer(graph, order, rank).lower();
}

std::vector<Program> lower_all_ranks(const TaskGraph& graph) {
  check_instantiation(graph);
  const std::vector<TaskId> order = topological_order(graph);
  std::vector<Program> programs;
  const int world = graph.get_plan().world_size();
  for (int rank = 0; rank < world; ++rank) {
    programs.push_back(Lowerer(graph, order, rank).lower());
  }
  return programs;
}

} // namespace cuboid::exec

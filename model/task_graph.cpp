// TaskGraph implementation: task, edge, block, group and rank storage plus stable labels (see task_graph.hpp).
// Labels are built on demand only (the builder never formats strings per task).
#include "model/task_graph.hpp"

#include "model/errors.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace cuboid::model {

TaskGraph::TaskGraph(ModelSpec model, ClusterSpec cluster, Plan plan, Instantiation instantiation)
    : model_(std::move(model)), cluster_(std::move(cluster)), plan_(plan), instantiation_(instantiation) {}

void advise_huge_pages(const void* data, std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t HUGE_PAGE_BYTES = std::uintptr_t{2} << 20;
  const auto begin = reinterpret_cast<std::uintptr_t>(data);
  const std::uintptr_t first = (begin + HUGE_PAGE_BYTES - 1) & ~(HUGE_PAGE_BYTES - 1);
  const std::uintptr_t last = (begin + bytes) & ~(HUGE_PAGE_BYTES - 1);
  if (data != nullptr && last > first) {
    // Advice only: on failure (THP off, old kernel) the pages stay 4 KiB, with the same contents.
    static_cast<void>(madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE));
  }
#else
  static_cast<void>(data);
  static_cast<void>(bytes);
#endif
}

void TaskGraph::reserve(std::size_t num_tasks) {
  tasks_.reserve(num_tasks);
  edges_.reserve(2 * num_tasks);
  advise_huge_pages(tasks_.data(), tasks_.capacity() * sizeof(Task));
  advise_huge_pages(edges_.data(), edges_.capacity() * sizeof(Edge));
}

const TaskGraph::Graph& TaskGraph::GraphCache::get(std::size_t num_vertices, const std::vector<Edge>& edges) {
  const std::lock_guard<std::mutex> lock(mutex_);
  if (!graph_) {
    // Counting sort by source (and by target for the in-edges): stable, so each vertex's edges keep insertion order.
    graph_ = std::make_shared<const Graph>(boost::edges_are_unsorted_multi_pass, edges.begin(), edges.end(),
                                           num_vertices);
  }
  return *graph_;
}

const TaskGraph::Graph& TaskGraph::graph() const { return graph_cache_.get(tasks_.size(), edges_); }

TaskId TaskGraph::add_task(const Task& task) {
  CUBOID_ASSERT(tasks_.size() < static_cast<std::size_t>(UINT32_MAX), "too many tasks: {}", tasks_.size());
  const auto id = static_cast<TaskId>(tasks_.size());
  tasks_.push_back(task);
  graph_cache_.reset_if_built();
  return id;
}

void TaskGraph::add_edge(TaskId from, TaskId to) {
  CUBOID_ASSERT(from < tasks_.size() && to < tasks_.size() && from != to, "bad edge {} -> {} ({} tasks)", from, to,
                tasks_.size());
  edges_.emplace_back(from, to);
  graph_cache_.reset_if_built();
}

std::int32_t TaskGraph::add_block(OpBlock block) {
  blocks_.push_back(std::move(block));
  return static_cast<std::int32_t>(blocks_.size() - 1);
}

std::int32_t TaskGraph::add_group(std::vector<int> members) {
  groups_.push_back(std::move(members));
  return static_cast<std::int32_t>(groups_.size() - 1);
}

void TaskGraph::add_rank(const RankInfo& info) {
  CUBOID_ASSERT(info.rank >= 0, "negative rank {}", info.rank);
  const auto rank = static_cast<std::size_t>(info.rank);
  if (rank_index_.size() <= rank) {
    rank_index_.resize(std::max(rank + 1, static_cast<std::size_t>(std::max(cluster_.num_gpus, 0))), -1);
  }
  CUBOID_ASSERT(rank_index_[rank] < 0, "rank {} added twice", info.rank);
  rank_index_[rank] = static_cast<int>(ranks_.size());
  ranks_.push_back(info);
}

int TaskGraph::rank_index(int rank) const {
  if (rank < 0 || static_cast<std::size_t>(rank) >= rank_index_.size()) {
    return -1;
  }
  return rank_index_[static_cast<std::size_t>(rank)];
}

std::string TaskGraph::label(TaskId id) const {
  const Task& t = tasks_.at(id);
  const char* dir = t.phase == Phase::Backward ? "bwd" : t.phase == Phase::WeightGrad ? "wgrad" : "fwd";
  switch (t.kind) {
  case TaskKind::Compute: {
    std::string what;
    if (t.layer >= 0) {
      what = fmt::format("L{}", t.layer);
    } else if (t.block >= 0) {
      // "embed.fwd" -> "embed", "head.bwd" -> "head"
      const std::string& name = blocks_[static_cast<std::size_t>(t.block)].name;
      what = name.substr(0, name.find('.'));
    }
    return fmt::format("{} {} mb{} s{}c{} r{}", dir, what, t.microbatch, t.stage, t.chunk, t.rank);
  }
  case TaskKind::P2P:
    return fmt::format("send {} mb{} s{}c{} r{}->r{}", dir, t.microbatch, t.stage, t.chunk, t.rank, t.peer);
  case TaskKind::Collective: {
    const char* group = t.group == GroupKind::Tp ? "tp"
                        : t.group == GroupKind::Dp ? "dp"
                        : t.group == GroupKind::ExpertDp ? "edp"
                        : t.group == GroupKind::Embedding ? "embed"
                                                         : "pp";
    if (t.microbatch >= 0) {
      // ZeRO-2/3 per-micro-batch collectives: "dp.allgather fwd L5 mb3 r0" (the unit it gathers for / reduces).
      std::string what = t.layer >= 0 ? fmt::format("L{}", t.layer) : fmt::format("b{}", t.bucket);
      if (t.layer < 0 && t.block >= 0) {
        const std::string& name = blocks_[static_cast<std::size_t>(t.block)].name;
        what = name.substr(0, name.find('.'));
      }
      return fmt::format("{}.{} {} {} mb{} r{}", group, to_string(t.collective), dir, what, t.microbatch, t.rank);
    }
    return fmt::format("{}.{} b{} r{}", group, to_string(t.collective), t.bucket, t.rank);
  }
  case TaskKind::Optimizer:
    return fmt::format("optimizer s{} r{}", t.stage, t.rank);
  }
  return fmt::format("task{}", id);
}

std::string to_string(TaskKind kind) {
  switch (kind) {
  case TaskKind::Compute: return "compute";
  case TaskKind::Collective: return "collective";
  case TaskKind::P2P: return "p2p";
  case TaskKind::Optimizer: return "optimizer";
  }
  return "unknown";
}

std::string to_string(MemTag tag) {
  switch (tag) {
  case MemTag::Weights: return "weights";
  case MemTag::Grads: return "grads";
  case MemTag::Optimizer: return "optimizer";
  case MemTag::Activations: return "activations";
  case MemTag::Workspace: return "workspace";
  case MemTag::CommBuffers: return "comm_buffers";
  }
  return "unknown";
}

std::string to_string(Stream stream) {
  switch (stream) {
  case Stream::Compute: return "compute";
  case Stream::TpComm: return "tp_comm";
  case Stream::DpComm: return "dp_comm";
  case Stream::PpComm: return "pp_comm";
  }
  return "unknown";
}

std::string to_string(CollectiveKind kind) {
  switch (kind) {
  case CollectiveKind::AllReduce: return "allreduce";
  case CollectiveKind::ReduceScatter: return "reducescatter";
  case CollectiveKind::AllGather: return "allgather";
  case CollectiveKind::AllToAll: return "alltoall";
  }
  return "unknown";
}

std::string to_string(Phase phase) {
  switch (phase) {
  case Phase::Forward: return "forward";
  case Phase::Backward: return "backward";
  case Phase::None: return "none";
  case Phase::WeightGrad: return "weight-grad";
  }
  return "unknown";
}

std::string to_string(OpKind kind) {
  switch (kind) {
  case OpKind::Gemm: return "gemm";
  case OpKind::Attention: return "attention";
  case OpKind::Elementwise: return "elementwise";
  case OpKind::Norm: return "norm";
  case OpKind::Embedding: return "embedding";
  case OpKind::Loss: return "loss";
  case OpKind::TpCollective: return "tp_collective";
  case OpKind::EpCollective: return "ep_collective";
  case OpKind::CpRing: return "cp_ring";
  case OpKind::CpCollective: return "cp_collective";
  }
  return "unknown";
}

} // namespace cuboid::model

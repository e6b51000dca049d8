// TaskGraph: the IR at the centre of cuboid. One DAG per training step of forward / backward compute, TP collectives
// (inside compute blocks), PP send/recv, DP gradient collectives and the optimizer step, with memory effects.
// Built by build_step_graph() (step_builder.hpp); replayed by sim/, lowered to per-rank programs by exec/.
// Edges are data and ordering dependencies: a schedule (GPipe, 1F1B, interleaved) is just edges.
#pragma once

#include "model/gpu_spec.hpp"
#include "model/model_spec.hpp"
#include "model/plan.hpp"

#include <boost/graph/compressed_sparse_row_graph.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace cuboid::model {

using TaskId = std::uint32_t;

enum class TaskKind { Compute, Collective, P2P, Optimizer };
/// Backward is the whole backward, or with a zero-bubble schedule (plan.hpp) only its input-gradient part (B);
/// WeightGrad is the weight-gradient part (W) that such schedules split off and defer.
enum class Phase { Forward, Backward, None, WeightGrad };
/// Streams a rank executes on; tasks on one stream of one rank run one at a time, in readiness order.
enum class Stream { Compute, TpComm, DpComm, PpComm };
constexpr int NUM_STREAMS = 4;
enum class CollectiveKind { AllReduce, ReduceScatter, AllGather, AllToAll };
// ExpertDp (mixture of experts): the dp/ep ranks holding the same experts, which reduce the expert gradients.
// Embedding: the two ranks (same tp/cp/dp coordinates) holding the word embedding and the tied output layer on
// different pipeline stages, which all-reduce its gradient (Megatron's embedding group).
enum class GroupKind { Tp, Dp, Pp, ExpertDp, Embedding };

/// Memory tags of DESIGN.md; index into MemBytes.
enum class MemTag { Weights, Grads, Optimizer, Activations, Workspace, CommBuffers };
constexpr int NUM_MEM_TAGS = 6;
using MemBytes = std::array<double, NUM_MEM_TAGS>;

// EpCollective (mixture of experts): an all-to-all over the expert-parallel group inside a MoE layer's block.
// CpRing (context parallelism): one step of the ring attention exchange inside a layer block (K/V, and in backward
// dK/dV, sent to the next CP rank and received from the previous one), overlapped with the attention step it feeds.
// CpCollective (context parallelism, cp_comm_type allgather / a2a): an all-gather, reduce-scatter or all-to-all over
// the CP group inside a layer block, exposed (Transformer Engine runs it on the compute stream before the attention).
enum class OpKind {
  Gemm,
  Attention,
  Elementwise,
  Norm,
  Embedding,
  Loss,
  TpCollective,
  EpCollective,
  CpRing,
  CpCollective
};
/// Which kernel of the CPU backend (exec/cpu/norm, exec/cpu/activation) a Norm / Elementwise op is, so that a CPU
/// cost profile can price it per element (CostProfile cpu_*_s_per_element); GPU profiles leave those 0 and price the
/// op by its bytes, so the tag changes no GPU prediction. None: priced by bytes on every device.
enum class CpuKernel {
  None,
  LayerNormFwd,
  LayerNormBwd,
  RmsNormFwd,
  RmsNormBwd,
  GeluFwd,
  GeluBwd,
  SwigluFwd,
  SwigluBwd
};

/// One kernel-level operation inside a compute block, sized for one rank (one TP shard).
struct Op {
  std::string name;          // "qkv", "attn", "proj", "fc1", "act", "fc2", "ln1", "ln2", "embed", "logits", "loss"
  OpKind kind = OpKind::Gemm;
  // GEMM: C(M,N) = A(M,K) * B(K,N), repeated `batch` times. Attention: M = N = seq, K = head_dim, batch = b*heads.
  std::int64_t m = 0;
  std::int64_t n = 0;
  std::int64_t k = 0;
  std::int64_t batch = 1;
  double flops = 0.0;        // per rank
  double hbm_bytes = 0.0;    // minimal bytes through HBM per rank (inputs read once, outputs written once)
  bool recompute = false;    // a recomputed forward op inside backward: counted in hardware FLOPs only
  CollectiveKind collective = CollectiveKind::AllReduce; // TpCollective / EpCollective / CpCollective only
  double msg_bytes = 0.0;    // Tp/Ep/CpCollective: per-rank buffer (all-reduce input / all-gather output / all-to-all
                             // send buffer); CpRing: bytes each rank sends (= receives) in this ring step
  // --- CPU prediction across models (branch cpux) ---
  CpuKernel cpu_kernel = CpuKernel::None; // Norm / Elementwise: the CPU backend kernel; its elements are `m`
  double rope_elements = 0.0; // Attention: query and key values rotated by RoPE before (forward) / after (backward)
                              // this op on the CPU backend (0: learned positions); priced only by a CPU profile
};

/// The ops of one compute task (e.g. one layer's forward for one micro-batch). Shared by identical tasks.
struct OpBlock {
  std::string name;          // "layer.fwd", "layer.bwd", "embed.fwd", "head.bwd", ...
  std::vector<Op> ops;
  double model_flops = 0.0;  // per rank, excludes recompute
  double hw_flops = 0.0;     // per rank, includes recompute
};

struct Task {
  TaskKind kind = TaskKind::Compute;
  Phase phase = Phase::None;
  Stream stream = Stream::Compute;
  int rank = 0;              // executing rank (representative in rank-class mode); P2P: the sender
  int peer = -1;             // P2P: the receiver
  int stage = 0;             // pipeline rank
  int chunk = 0;             // model chunk (virtual stage) on this pipeline rank
  int microbatch = -1;       // -1 when not per micro-batch
  int layer = -1;            // global layer index; -1 for non-layer tasks
  int bucket = -1;           // Collective: gradient bucket index on this rank
  std::int32_t block = -1;   // Compute/Optimizer: index into TaskGraph::blocks()
  // Collective and P2P:
  CollectiveKind collective = CollectiveKind::AllReduce;
  GroupKind group = GroupKind::Dp;
  std::int32_t group_index = -1; // Collective: index into TaskGraph::groups() (materialised members)
  int group_size = 1;            // full group size (the same in both instantiations)
  double msg_bytes = 0.0;        // Collective: per-rank buffer; P2P: message size
  // Memory effects on `rank` (and for P2P recv buffers on `peer`): applied at start / end of the task.
  MemBytes alloc_at_start{};
  MemBytes free_at_end{};
};

enum class Instantiation { AllRanks, RankClasses };

/// A materialised rank. In rank-class mode one representative per pipeline stage stands for `multiplicity` ranks.
struct RankInfo {
  int rank = 0;
  int stage = 0;
  double multiplicity = 1.0;
  MemBytes static_bytes{};   // allocated before the step: weights, grads, optimizer state, comm buffers
};

class TaskGraph {
public:
  /// Boost.Graph view of the DAG (vertex = TaskId), bidirectional, out- and in-edges of a vertex in insertion order.
  using Graph = boost::compressed_sparse_row_graph<boost::bidirectionalS, boost::no_property, boost::no_property,
                                                   boost::no_property, TaskId, std::size_t>;
  using Edge = std::pair<TaskId, TaskId>;

  TaskGraph(ModelSpec model, ClusterSpec cluster, Plan plan, Instantiation instantiation);

  /// Capacity hint before building (no effect on the graph's contents).
  void reserve(std::size_t num_tasks);
  TaskId add_task(const Task& task);
  /// `to` may start only after `from` has finished.
  void add_edge(TaskId from, TaskId to);
  std::int32_t add_block(OpBlock block);
  std::int32_t add_group(std::vector<int> members);
  void add_rank(const RankInfo& info);

  [[nodiscard]] std::size_t num_tasks() const { return tasks_.size(); }
  [[nodiscard]] std::size_t num_edges() const { return edges_.size(); }
  [[nodiscard]] const Task& task(TaskId id) const { return tasks_[id]; }
  [[nodiscard]] const std::vector<Task>& tasks() const { return tasks_; }
  /// Edges (from, to) in insertion order: what the simulator replays.
  [[nodiscard]] const std::vector<Edge>& edges() const { return edges_; }
  /// The Boost.Graph view, built on first use after the last add_task/add_edge (thread-safe; O(V + E)).
  [[nodiscard]] const Graph& graph() const;
  [[nodiscard]] const std::vector<OpBlock>& blocks() const { return blocks_; }
  [[nodiscard]] const std::vector<std::vector<int>>& groups() const { return groups_; }
  [[nodiscard]] const std::vector<RankInfo>& ranks() const { return ranks_; }
  /// Position of `rank` in ranks(), or -1 if it is not materialised.
  [[nodiscard]] int rank_index(int rank) const;

  [[nodiscard]] const ModelSpec& get_model() const { return model_; }
  [[nodiscard]] const ClusterSpec& get_cluster() const { return cluster_; }
  [[nodiscard]] const Plan& get_plan() const { return plan_; }
  [[nodiscard]] Instantiation get_instantiation() const { return instantiation_; }

  /// Whole-step FLOPs summed over all ranks (model: no recompute; hardware: with recompute).
  double model_flops_per_step = 0.0;
  double hw_flops_per_step = 0.0;

  /// Human-readable, stable label: "fwd L5 mb3 s0c0 r0", "dp.allreduce b2 r0", "send mb3 s0->s1".
  [[nodiscard]] std::string label(TaskId id) const;

private:
  ModelSpec model_;
  ClusterSpec cluster_;
  Plan plan_;
  Instantiation instantiation_;
  // The building path only appends to edges_ (one vector push per edge: a per-vertex adjacency list allocated on
  // every edge and dominated the cost of building a 200k-task graph); graph() compresses it once on demand.
  class GraphCache {
  public:
    GraphCache() = default;
    GraphCache(const GraphCache&) {}
    GraphCache& operator=(const GraphCache&) {
      reset();
      return *this;
    }
    GraphCache(GraphCache&& other) noexcept : graph_(std::move(other.graph_)) {}
    GraphCache& operator=(GraphCache&& other) noexcept {
      graph_ = std::move(other.graph_);
      return *this;
    }
    ~GraphCache() = default;
    void reset() { graph_.reset(); }
    void reset_if_built() {
      if (graph_) {
        graph_.reset();
      }
    }
    const Graph& get(std::size_t num_vertices, const std::vector<Edge>& edges);

  private:
    std::mutex mutex_;
    std::shared_ptr<const Graph> graph_;
  };

  std::vector<Task> tasks_;
  std::vector<Edge> edges_;
  mutable GraphCache graph_cache_;
  std::vector<OpBlock> blocks_;
  std::vector<std::vector<int>> groups_;
  std::vector<RankInfo> ranks_;
  std::vector<int> rank_index_; // world rank -> position in ranks_, -1 if absent
};

/// Asks the kernel to back the 2 MiB-aligned part of [data, data + bytes) with transparent huge pages (Linux with
/// THP in "madvise" mode; elsewhere, or for less than one huge page, nothing). Performance only: the step graph of a
/// 3072-GPU plan fills ~33 MB of fresh tasks, and first-touch faults of 4 KiB pages cost more than building them.
void advise_huge_pages(const void* data, std::size_t bytes);

std::string to_string(TaskKind kind);
std::string to_string(MemTag tag);
std::string to_string(Stream stream);
std::string to_string(CollectiveKind kind);
std::string to_string(Phase phase);
std::string to_string(OpKind kind);

} // namespace cuboid::model

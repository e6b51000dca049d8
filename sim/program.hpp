// SimProgram: the flat, cost-annotated form of a TaskGraph that the discrete-event engine replays. Lowering
// (lowering.hpp) fills it from a TaskGraph and a CostModel; tests may build one by hand with ProgramBuilder.
// Everything is indexed by task id / executor id in flat vectors: no maps in the engine's hot loop.
#pragma once

#include "model/cost_model.hpp"
#include "model/task_graph.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace cuboid::sim {

constexpr std::uint32_t NO_INDEX = std::numeric_limits<std::uint32_t>::max();

/// What a task's time counts as in the breakdown.
enum class TaskCategory : std::uint8_t { Compute, Optimizer, PpComm, DpComm };

/// Fixed: runs for duration_s on its executor(s). Comm: joins a communication instance (see CommInstance).
enum class SimTaskKind : std::uint8_t { Fixed, Comm };

struct SimTask {
  SimTaskKind kind = SimTaskKind::Fixed;
  TaskCategory category = TaskCategory::Compute;
  std::uint32_t executor = 0;          // rank_idx * NUM_STREAMS + stream
  std::uint32_t executor2 = NO_INDEX;  // second executor held at the same time (P2P receiver), or NO_INDEX
  double duration_s = 0.0;             // Fixed only
  std::uint32_t instance = NO_INDEX;   // Comm only: index into SimProgram::instances
  std::uint32_t block_cost = NO_INDEX; // index into SimProgram::block_costs (compute / recompute / tp split)
  std::uint32_t alloc_rank = NO_INDEX; // rank index whose memory alloc_at_start applies to
  std::uint32_t free_rank = NO_INDEX;  // rank index whose memory free_at_end applies to
  std::uint32_t alloc_effect = NO_INDEX; // index into SimProgram::mem_effects of alloc_at_start; NO_INDEX: none
  std::uint32_t free_effect = NO_INDEX;  // index into SimProgram::mem_effects of free_at_end; NO_INDEX: none
};

/// A point-to-point message or one collective: `participants` tasks (one per materialised member executing it)
/// must all have started before phase 0 begins; phases run one after the other; all participants end together.
struct CommInstance {
  std::uint32_t participants = 0;
  std::uint32_t phase_begin = 0;  // [phase_begin, phase_end) in SimProgram::phases
  std::uint32_t phase_end = 0;
  std::uint32_t task_begin = 0;   // [task_begin, task_end) in SimProgram::instance_tasks
  std::uint32_t task_end = 0;
};

/// A latency (alpha) wait followed by concurrent flows; the phase ends when all its flows have ended.
struct CommPhase {
  double latency_s = 0.0;
  std::uint32_t flow_begin = 0;   // [flow_begin, flow_end) in SimProgram::flows
  std::uint32_t flow_end = 0;
};

struct FlowSpec {
  double bytes = 0.0;
  std::uint32_t port_out = NO_INDEX;
  std::uint32_t port_in = NO_INDEX;
};

/// Port numbering: rank_idx * PORTS_PER_RANK + PortKind.
enum class PortKind : std::uint32_t { NvlinkOut, NvlinkIn, NicOut, NicIn };
constexpr std::uint32_t PORTS_PER_RANK = 4;
[[nodiscard]] inline std::uint32_t port_id(std::uint32_t rank_idx, PortKind kind) {
  return rank_idx * PORTS_PER_RANK + static_cast<std::uint32_t>(kind);
}
constexpr std::uint32_t STREAMS_PER_RANK = static_cast<std::uint32_t>(model::NUM_STREAMS);
/// Executor numbering: rank_idx * STREAMS_PER_RANK + Stream.
[[nodiscard]] inline std::uint32_t executor_id(std::uint32_t rank_idx, model::Stream stream) {
  return rank_idx * STREAMS_PER_RANK + static_cast<std::uint32_t>(stream);
}
[[nodiscard]] inline std::uint32_t rank_of_executor(std::uint32_t executor) { return executor / STREAMS_PER_RANK; }

struct SimProgram {
  std::uint32_t num_ranks = 0;             // materialised ranks; executors = num_ranks * NUM_STREAMS
  std::vector<SimTask> tasks;              // indexed by TaskId
  std::vector<std::uint32_t> pred_count;   // per task
  std::vector<std::uint32_t> succ_offsets; // CSR, size tasks + 1
  std::vector<std::uint32_t> succs;
  std::vector<std::uint32_t> pred_offsets; // CSR, size tasks + 1
  std::vector<std::uint32_t> preds;
  std::vector<CommInstance> instances;
  std::vector<std::uint32_t> instance_tasks;
  std::vector<CommPhase> phases;
  std::vector<FlowSpec> flows;
  std::vector<double> port_capacity;       // bytes/s, num_ranks * PORTS_PER_RANK
  std::vector<model::BlockCost> block_costs;
  /// Distinct non-zero memory effects (bytes by tag) referenced by SimTask::alloc_effect / free_effect: a table that
  /// stays in cache while the memory replay walks the tasks in simulated order (model::Task is 168 bytes).
  std::vector<model::MemBytes> mem_effects;

  [[nodiscard]] std::uint32_t num_executors() const {
    return num_ranks * STREAMS_PER_RANK;
  }
  /// Time a task would take alone on an idle cluster (no queueing, no bandwidth sharing, no waiting for peers).
  [[nodiscard]] double isolated_time_s(std::uint32_t task) const;
};

/// Fills SimProgram::mem_effects without duplicates in practice: an effect bitwise equal to one of the recent
/// distinct effects (a small table indexed by a hash of the bytes) gets that entry's index.
class MemoryEffectInterner {
public:
  MemoryEffectInterner() {
    recent_.fill(NO_INDEX);
    for (std::array<std::uint32_t, 2>& hits : last_) {
      hits.fill(NO_INDEX);
    }
  }
  /// Index of `bytes` in `effects` (appended when not found), or NO_INDEX when no byte count is non-zero.
  /// `channel` (0 or 1: allocations, frees) keeps its own last two hits.
  std::uint32_t intern(std::vector<model::MemBytes>& effects, const model::MemBytes& bytes, std::size_t channel = 0);
  /// Sets the task's alloc_effect / free_effect from its model::Task effects.
  void set_memory(SimProgram& program, std::uint32_t task, const model::MemBytes& alloc_at_start,
                  const model::MemBytes& free_at_end);

private:
  static constexpr unsigned RECENT_BITS = 6;
  static constexpr std::size_t RECENT = std::size_t{1} << RECENT_BITS;
  std::array<std::uint32_t, RECENT> recent_{};
  std::array<std::array<std::uint32_t, 2>, 2> last_{}; // per channel: the last two indices returned
};

/// Incremental construction of a SimProgram (used by lowering and by tests). finish() builds the CSR arrays.
class ProgramBuilder {
public:
  /// All ports get the NVLink or NIC capacity of `nvlink` / `nic` (bytes/s).
  ProgramBuilder(std::uint32_t num_ranks, double nvlink_bw_bytes_per_s, double nic_bw_bytes_per_s);

  std::uint32_t add_fixed(std::uint32_t rank_idx, model::Stream stream, double duration_s,
                          TaskCategory category = TaskCategory::Compute, std::uint32_t block_cost = NO_INDEX);
  /// Capacity hints (no effect on the program's contents).
  void reserve(std::size_t num_tasks, std::size_t num_edges);
  void reserve_comm(std::size_t num_instances, std::size_t num_phases, std::size_t num_flows,
                    std::size_t num_comm_tasks);
  /// Opens a communication instance with `participants` tasks still to be added with add_comm_task().
  std::uint32_t add_instance(std::uint32_t participants);
  void add_phase(std::uint32_t instance, double latency_s);
  /// Adds a flow to the last phase of the last instance (instances and their phases are filled in order).
  void add_flow(double bytes, std::uint32_t port_out, std::uint32_t port_in);
  std::uint32_t add_comm_task(std::uint32_t instance, std::uint32_t rank_idx, model::Stream stream,
                              TaskCategory category, std::uint32_t executor2 = NO_INDEX);
  /// A P2P message on `stream` (PpComm): one instance, one phase (latency, then one flow out of `src` into `dst` on
  /// NVLink or the NIC). `dst_rank_idx` may be NO_INDEX (receiver not materialised): the flow then uses the
  /// sender's port only. With `hold_receiver_stream` the task also occupies the receiver's stream.
  std::uint32_t add_p2p(std::uint32_t src_rank_idx, std::uint32_t dst_rank_idx, bool nvlink, double bytes,
                        double latency_s, bool hold_receiver_stream, model::Stream stream = model::Stream::PpComm);
  void add_edge(std::uint32_t from, std::uint32_t to);
  std::uint32_t add_block_cost(const model::BlockCost& cost);
  SimTask& task(std::uint32_t id) { return program_.tasks[id]; }
  void set_memory(std::uint32_t task, const model::MemBytes& alloc_at_start, const model::MemBytes& free_at_end) {
    interner_.set_memory(program_, task, alloc_at_start, free_at_end);
  }
  [[nodiscard]] const model::BlockCost& block_cost(std::uint32_t index) const { return program_.block_costs[index]; }
  /// Builds the CSR arrays and checks that every instance got its participants. The builder is spent afterwards.
  SimProgram finish();
  /// Same, with the edges given at once (in their order) instead of through add_edge(), without copying them.
  SimProgram finish(const std::vector<std::pair<std::uint32_t, std::uint32_t>>& edges);

private:
  SimProgram program_;
  MemoryEffectInterner interner_;
  std::vector<std::pair<std::uint32_t, std::uint32_t>> edges_;
  std::vector<std::pair<std::uint32_t, std::uint32_t>> instance_members_; // (instance, task)
};

} // namespace cuboid::sim

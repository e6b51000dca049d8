// MemoryTimeline: replays each materialised rank's alloc/free effects in simulated order and keeps the timeline,
// the peak and the breakdown by tag at the peak (DESIGN.md "Memory": peak memory is not a formula).
#pragma once

#include "model/task_graph.hpp"
#include "sim/engine.hpp"
#include "sim/program.hpp"
#include "sim/simulator.hpp"

#include <utility>
#include <vector>

namespace cuboid::sim {

class MemoryTimeline {
public:
  /// One entry per materialised rank, starting at its static bytes at t = 0.
  explicit MemoryTimeline(const std::vector<model::RankInfo>& ranks, bool record_timeline);

  /// Applies every task's alloc_at_start at its start and free_at_end at its end, to the rank chosen by lowering
  /// (SimTask::alloc_rank / free_rank). At one instant: a task that hands its stream over to the next task frees
  /// first (the stream serialises them, so the order is known); all other frees at that instant come after the
  /// allocations (their order against concurrent streams is unknown: conservative peak). `tasks` is indexed like
  /// program.tasks.
  void replay(const SimProgram& program, const std::vector<model::Task>& tasks, const EngineResult& run);
  /// Same, with the effects the program carries (SimProgram::mem_effects, as lowering sets them).
  void replay(const SimProgram& program, const EngineResult& run);

  [[nodiscard]] const std::vector<RankMemory>& get_ranks() const { return ranks_; }
  /// Moves the per-rank results out (the timeline is spent afterwards).
  [[nodiscard]] std::vector<RankMemory> take_ranks() { return std::move(ranks_); }
  /// Index (into get_ranks()) of the rank with the highest peak; ties -> the lowest index.
  [[nodiscard]] std::size_t peak_index() const;

private:
  void apply(std::uint32_t rank_idx, double time_s, const model::MemBytes& bytes, double sign);
  void apply(std::uint32_t rank_idx, double time_s, const std::vector<model::MemBytes>& effects,
             std::uint32_t effect, double sign) {
    if (effect != NO_INDEX) {
      apply(rank_idx, time_s, effects[effect], sign);
    }
  }

  std::vector<RankMemory> ranks_;
  std::vector<model::MemBytes> current_;
  std::vector<std::uint8_t> starting_; // per executor: a task starts on it at the current instant
  bool record_timeline_ = true;
};

} // namespace cuboid::sim

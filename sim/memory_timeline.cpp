// MemoryTimeline implementation: a merge of the engine's start order and end order, both sorted by time, so the
// replay is linear in the number of tasks (no sort of millions of events).
#include "sim/memory_timeline.hpp"

#include "model/errors.hpp"

#include <algorithm>

namespace cuboid::sim {

namespace {
bool any_nonzero(const model::MemBytes& bytes) {
  for (const double value : bytes) {
    if (value != 0.0) {
      return true;
    }
  }
  return false;
}
double sum(const model::MemBytes& bytes) {
  double total = 0.0;
  for (const double value : bytes) {
    total += value;
  }
  return total;
}
} // namespace

MemoryTimeline::MemoryTimeline(const std::vector<model::RankInfo>& ranks, bool record_timeline)
    : record_timeline_(record_timeline) {
  ranks_.resize(ranks.size());
  current_.resize(ranks.size());
  for (std::size_t rank_idx = 0; rank_idx < ranks.size(); ++rank_idx) {
    RankMemory& mem = ranks_[rank_idx];
    mem.rank = ranks[rank_idx].rank;
    current_[rank_idx] = ranks[rank_idx].static_bytes;
    mem.at_peak = current_[rank_idx];
    mem.peak_bytes = sum(current_[rank_idx]);
    if (record_timeline_) {
      mem.timeline.emplace_back(0.0, mem.peak_bytes);
    }
  }
}

void MemoryTimeline::apply(std::uint32_t rank_idx, double time_s, const model::MemBytes& bytes, double sign) {
  if (rank_idx == NO_INDEX || !any_nonzero(bytes)) {
    return;
  }
  CUBOID_ASSERT(rank_idx < ranks_.size(), "memory effect on rank index {} of {}", rank_idx, ranks_.size());
  model::MemBytes& cur = current_[rank_idx];
  for (std::size_t tag = 0; tag < cur.size(); ++tag) {
    cur[tag] += sign * bytes[tag];
  }
  RankMemory& mem = ranks_[rank_idx];
  const double total = sum(cur);
  if (total > mem.peak_bytes) {
    mem.peak_bytes = total;
    mem.at_peak = cur;
  }
  if (record_timeline_) {
    mem.timeline.emplace_back(time_s, total);
  }
}

void MemoryTimeline::replay(const SimProgram& program, const std::vector<model::Task>& tasks,
                            const EngineResult& run) {
  CUBOID_ASSERT(tasks.size() == program.tasks.size(), "{} tasks vs {} in the program", tasks.size(),
                program.tasks.size());
  std::size_t next_start = 0;
  std::size_t next_end = 0;
  const std::size_t num_starts = run.start_order.size();
  const std::size_t num_ends = run.end_order.size();
  while (next_start < num_starts || next_end < num_ends) {
    double now_s = next_start < num_starts ? run.start_s[run.start_order[next_start]] : run.end_s[run.end_order[next_end]];
    if (next_end < num_ends) {
      now_s = std::min(now_s, run.end_s[run.end_order[next_end]]);
    }
    for (; next_start < num_starts && run.start_s[run.start_order[next_start]] == now_s; ++next_start) {
      const std::uint32_t task = run.start_order[next_start];
      apply(program.tasks[task].alloc_rank, now_s, tasks[task].alloc_at_start, 1.0);
    }
    for (; next_end < num_ends && run.end_s[run.end_order[next_end]] == now_s; ++next_end) {
      const std::uint32_t task = run.end_order[next_end];
      apply(program.tasks[task].free_rank, now_s, tasks[task].free_at_end, -1.0);
    }
  }
}

std::size_t MemoryTimeline::peak_index() const {
  std::size_t best = 0;
  for (std::size_t rank_idx = 1; rank_idx < ranks_.size(); ++rank_idx) {
    if (ranks_[rank_idx].peak_bytes > ranks_[best].peak_bytes) {
      best = rank_idx;
    }
  }
  return best;
}

} // namespace cuboid::sim

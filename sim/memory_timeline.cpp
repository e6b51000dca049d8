// MemoryTimeline implementation: a merge of the engine's start order and end order, both sorted by time, so the
// replay is linear in the number of tasks (no sort of millions of events).
#include "sim/memory_timeline.hpp"

#include "model/errors.hpp"

#include <algorithm>
#include <limits>

namespace cuboid::sim {

namespace {
constexpr std::size_t PREFETCH_AHEAD = 16;

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
  // All-zero effects have no table entry (MemoryEffectInterner): nothing to skip here.
  if (rank_idx == NO_INDEX) {
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
  SimProgram with_effects = program;
  with_effects.mem_effects.clear();
  MemoryEffectInterner interner;
  for (std::uint32_t task = 0; task < tasks.size(); ++task) {
    interner.set_memory(with_effects, task, tasks[task].alloc_at_start, tasks[task].free_at_end);
  }
  replay(with_effects, run);
}

void MemoryTimeline::replay(const SimProgram& program, const EngineResult& run) {
  const std::vector<model::MemBytes>& effects = program.mem_effects;
  starting_.assign(program.num_executors(), 0);
  auto hands_over = [this, &program](std::uint32_t task) {
    const SimTask& t = program.tasks[task];
    return starting_[t.executor] != 0 || (t.executor2 != NO_INDEX && starting_[t.executor2] != 0);
  };
  std::size_t next_start = 0;
  std::size_t next_end = 0;
  const std::size_t num_starts = run.start_order.size();
  const std::size_t num_ends = run.end_order.size();
  while (next_start < num_starts || next_end < num_ends) {
    // The orders jump between ranks' regions of the task arrays: fetch a few tasks ahead.
    if (next_start + PREFETCH_AHEAD < num_starts) {
      const std::uint32_t ahead = run.start_order[next_start + PREFETCH_AHEAD];
      __builtin_prefetch(&program.tasks[ahead]);
      __builtin_prefetch(&run.start_s[ahead]);
    }
    if (next_end + PREFETCH_AHEAD < num_ends) {
      const std::uint32_t ahead = run.end_order[next_end + PREFETCH_AHEAD];
      __builtin_prefetch(&program.tasks[ahead]);
      __builtin_prefetch(&run.end_s[ahead]);
    }
    double now_s = std::numeric_limits<double>::infinity();
    if (next_start < num_starts) {
      now_s = run.start_s[run.start_order[next_start]];
    }
    if (next_end < num_ends) {
      now_s = std::min(now_s, run.end_s[run.end_order[next_end]]);
    }
    std::size_t start_stop = next_start;
    for (; start_stop < num_starts && run.start_s[run.start_order[start_stop]] == now_s; ++start_stop) {
      const SimTask& t = program.tasks[run.start_order[start_stop]];
      starting_[t.executor] = 1;
      if (t.executor2 != NO_INDEX) {
        starting_[t.executor2] = 1;
      }
    }
    std::size_t end_stop = next_end;
    for (; end_stop < num_ends && run.end_s[run.end_order[end_stop]] == now_s; ++end_stop) {
      const std::uint32_t task = run.end_order[end_stop];
      if (hands_over(task)) {
        apply(program.tasks[task].free_rank, now_s, effects, program.tasks[task].free_effect, -1.0);
      }
    }
    for (std::size_t idx = next_start; idx < start_stop; ++idx) {
      const std::uint32_t task = run.start_order[idx];
      apply(program.tasks[task].alloc_rank, now_s, effects, program.tasks[task].alloc_effect, 1.0);
    }
    for (std::size_t idx = next_end; idx < end_stop; ++idx) {
      const std::uint32_t task = run.end_order[idx];
      if (!hands_over(task)) {
        apply(program.tasks[task].free_rank, now_s, effects, program.tasks[task].free_effect, -1.0);
      }
    }
    for (std::size_t idx = next_start; idx < start_stop; ++idx) {
      const SimTask& t = program.tasks[run.start_order[idx]];
      starting_[t.executor] = 0;
      if (t.executor2 != NO_INDEX) {
        starting_[t.executor2] = 0;
      }
    }
    next_start = start_stop;
    next_end = end_stop;
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

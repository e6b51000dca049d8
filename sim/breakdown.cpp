// Breakdown implementation: one pass over the tasks of the chosen rank, in start order.
#include "sim/breakdown.hpp"

#include <algorithm>
#include <cmath>

namespace cuboid::sim {

namespace {

constexpr double TIE_REL_TOLERANCE = 1e-12;

bool is_comm(TaskCategory category) { return category == TaskCategory::PpComm || category == TaskCategory::DpComm; }

double ready_time_s(const SimProgram& program, const EngineResult& run, std::uint32_t task) {
  double ready_s = 0.0;
  for (std::uint32_t idx = program.pred_offsets[task]; idx < program.pred_offsets[task + 1]; ++idx) {
    ready_s = std::max(ready_s, run.end_s[program.preds[idx]]);
  }
  return ready_s;
}

/// The last-finishing predecessor of a task (lowest id on ties), or NO_INDEX: the task that released it.
std::uint32_t critical_pred(const SimProgram& program, const EngineResult& run, std::uint32_t task) {
  std::uint32_t critical = NO_INDEX;
  for (std::uint32_t idx = program.pred_offsets[task]; idx < program.pred_offsets[task + 1]; ++idx) {
    const std::uint32_t pred = program.preds[idx];
    if (critical == NO_INDEX || run.end_s[pred] > run.end_s[critical]) {
      critical = pred;
    }
  }
  return critical;
}

/// Adds the idle interval [from_s, to_s) to the breakdown. The communication on the critical path into the interval
/// counts as exposed communication of its category: walking back from `comm` (the task that released the compute
/// stream), each communication task covers [its ready time, its end) and hands over to its own releasing task, so a
/// chain of serialised collectives (DP buckets after the backward) counts whole, not only its last bucket. The rest
/// of the interval is bubble.
void attribute_idle(const SimProgram& program, const EngineResult& run, std::uint32_t comm, double from_s, double to_s,
                    Breakdown& out) {
  const double gap_s = to_s - from_s;
  if (gap_s <= 0.0) {
    return;
  }
  double comm_total_s = 0.0;
  double upper_s = to_s;
  while (comm != NO_INDEX && is_comm(program.tasks[comm].category) && upper_s > from_s) {
    const double ready_s = ready_time_s(program, run, comm);
    const double comm_s = std::max(0.0, std::min(upper_s, run.end_s[comm]) - std::max(from_s, ready_s));
    (program.tasks[comm].category == TaskCategory::PpComm ? out.pp_comm_exposed_s : out.dp_comm_exposed_s) += comm_s;
    comm_total_s += comm_s;
    upper_s = std::min(upper_s, ready_s);
    comm = critical_pred(program, run, comm);
  }
  out.bubble_s += gap_s - comm_total_s;
}

void add_busy(const SimProgram& program, const EngineResult& run, std::uint32_t task, Breakdown& out) {
  const SimTask& t = program.tasks[task];
  const double duration_s = run.end_s[task] - run.start_s[task];
  switch (t.category) {
  case TaskCategory::Optimizer:
    out.optimizer_s += duration_s;
    return;
  case TaskCategory::PpComm:
    out.pp_comm_exposed_s += duration_s;
    return;
  case TaskCategory::DpComm:
    out.dp_comm_exposed_s += duration_s;
    return;
  case TaskCategory::Compute:
    break;
  }
  if (t.block_cost == NO_INDEX) {
    out.compute_s += duration_s;
    return;
  }
  // The block's parts sum to its total (= duration); whatever does not (rounding) stays with compute.
  const model::BlockCost& cost = program.block_costs[t.block_cost];
  out.recompute_s += cost.recompute_s;
  out.tp_comm_exposed_s += cost.tp_comm_s;
  out.cp_comm_exposed_s += cost.cp_comm_s; // --- context parallelism ---
  out.ep_comm_exposed_s += cost.ep_comm_s; // --- mixture of experts ---
  out.compute_s += duration_s - cost.recompute_s - cost.tp_comm_s - cost.cp_comm_s - cost.ep_comm_s;
}

} // namespace

std::uint32_t find_bottleneck_rank(const SimProgram& program, const EngineResult& run, const std::vector<int>& stages) {
  std::vector<double> last_end_s(program.num_ranks, 0.0);

  for (std::size_t task = 0; task < program.tasks.size(); ++task) {
    const SimTask& t = program.tasks[task];
    for (const std::uint32_t executor : {t.executor, t.executor2}) {
      if (executor != NO_INDEX && executor == executor_id(rank_of_executor(executor), model::Stream::Compute)) {
        const std::uint32_t rank_idx = rank_of_executor(executor);
        last_end_s[rank_idx] = std::max(last_end_s[rank_idx], run.end_s[task]);
      }
    }
  }
  std::uint32_t best = 0;
  for (std::uint32_t rank_idx = 1; rank_idx < program.num_ranks; ++rank_idx) {
    const double tolerance_s = TIE_REL_TOLERANCE * std::max(last_end_s[best], last_end_s[rank_idx]);
    const double diff_s = last_end_s[rank_idx] - last_end_s[best];
    if (diff_s > tolerance_s || (std::abs(diff_s) <= tolerance_s && stages[rank_idx] < stages[best])) {
      best = rank_idx;
    }
  }
  return best;
}

Breakdown compute_breakdown(const SimProgram& program, const EngineResult& run, std::uint32_t rank_idx,
                            double step_time_s) {
  Breakdown out;
  const std::uint32_t compute_exec = executor_id(rank_idx, model::Stream::Compute);
  double cursor_s = 0.0;
  std::uint32_t last_comm = NO_INDEX; // the rank's last-finishing communication task, for the idle tail
  for (const std::uint32_t task : run.start_order) {
    const SimTask& t = program.tasks[task];
    const bool on_rank = rank_of_executor(t.executor) == rank_idx ||
                         (t.executor2 != NO_INDEX && rank_of_executor(t.executor2) == rank_idx);
    if (!on_rank) {
      continue;
    }
    if (is_comm(t.category) && (last_comm == NO_INDEX || run.end_s[task] >= run.end_s[last_comm])) {
      last_comm = task;
    }
    if (t.executor != compute_exec && t.executor2 != compute_exec) {
      continue;
    }
    attribute_idle(program, run, critical_pred(program, run, task), cursor_s, run.start_s[task], out);
    add_busy(program, run, task, out);
    cursor_s = std::max(cursor_s, run.end_s[task]);
  }
  attribute_idle(program, run, last_comm, cursor_s, step_time_s, out);
  return out;
}

} // namespace cuboid::sim

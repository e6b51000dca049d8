// Invariants checked on every simulated program (STYLE.md section 6): each task runs once, events stay in time
// order, every task starts after its predecessors end, bytes sent == bytes received per fabric, and
// critical path <= makespan <= sum of isolated task times.
#pragma once

#include "sim/engine.hpp"
#include "sim/program.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <vector>

namespace cuboid::sim::testing {

/// Longest path through the DAG with isolated task times (tasks are in a topological order only by accident, so
/// relax in the engine's start order, which is a topological order).
inline double critical_path_s(const SimProgram& program, const EngineResult& run) {
  std::vector<double> finish(program.tasks.size(), 0.0);
  double longest = 0.0;
  for (const std::uint32_t task : run.start_order) {
    double ready = 0.0;
    for (std::uint32_t idx = program.pred_offsets[task]; idx < program.pred_offsets[task + 1]; ++idx) {
      ready = std::max(ready, finish[program.preds[idx]]);
    }
    finish[task] = ready + program.isolated_time_s(task);
    longest = std::max(longest, finish[task]);
  }
  return longest;
}

inline void check_invariants(const SimProgram& program, const EngineResult& run) {
  const std::size_t num_tasks = program.tasks.size();
  // Each task runs once.
  REQUIRE(run.start_order.size() == num_tasks);
  REQUIRE(run.end_order.size() == num_tasks);
  std::vector<int> started(num_tasks, 0);
  for (const std::uint32_t task : run.start_order) {
    ++started[task];
  }
  REQUIRE(std::all_of(started.begin(), started.end(), [](int count) { return count == 1; }));
  // Events in time order.
  for (std::size_t idx = 1; idx < num_tasks; ++idx) {
    REQUIRE(run.start_s[run.start_order[idx - 1]] <= run.start_s[run.start_order[idx]]);
    REQUIRE(run.end_s[run.end_order[idx - 1]] <= run.end_s[run.end_order[idx]]);
  }
  // Dependencies respected.
  double sum_isolated = 0.0;
  for (std::uint32_t task = 0; task < num_tasks; ++task) {
    REQUIRE(run.end_s[task] >= run.start_s[task]);
    for (std::uint32_t idx = program.pred_offsets[task]; idx < program.pred_offsets[task + 1]; ++idx) {
      REQUIRE(run.end_s[program.preds[idx]] <= run.start_s[task]);
    }
    sum_isolated += program.isolated_time_s(task);
  }
  // Bytes sent == bytes received, per fabric (NVLink out vs in, NIC out vs in), over all ranks.
  double nvlink_out = 0.0;
  double nvlink_in = 0.0;
  double nic_out = 0.0;
  double nic_in = 0.0;
  for (std::uint32_t rank_idx = 0; rank_idx < program.num_ranks; ++rank_idx) {
    nvlink_out += run.port_bytes[port_id(rank_idx, PortKind::NvlinkOut)];
    nvlink_in += run.port_bytes[port_id(rank_idx, PortKind::NvlinkIn)];
    nic_out += run.port_bytes[port_id(rank_idx, PortKind::NicOut)];
    nic_in += run.port_bytes[port_id(rank_idx, PortKind::NicIn)];
  }
  CHECK(nvlink_out == Approx(nvlink_in).epsilon(1e-12));
  CHECK(nic_out == Approx(nic_in).epsilon(1e-12));
  // critical path <= makespan <= sum of isolated times (relative slack for rounding).
  const double slack = 1e-9 * std::max(1.0, run.makespan_s);
  CHECK(critical_path_s(program, run) <= run.makespan_s + slack);
  CHECK(run.makespan_s <= sum_isolated + slack);
}

} // namespace cuboid::sim::testing

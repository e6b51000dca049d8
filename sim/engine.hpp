// Engine: the discrete-event replay of a SimProgram. One serial executor per (rank, stream); a task is queued on
// its executor(s) when its last predecessor ends (FIFO by ready time, ties by task id) and runs when it reaches the
// head. Communication instances run latency phases and network flows (network.hpp) once all participants started.
#pragma once

#include "sim/program.hpp"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace cuboid::sim {

struct EngineOptions {
  std::size_t max_events = 200'000'000; // InfeasibleError beyond this (bounded resources)
  /// Names a task in error messages (deadlock); defaults to "task <id>".
  std::function<std::string(std::uint32_t)> label;
};

struct EngineResult {
  std::vector<double> start_s;             // per task
  std::vector<double> end_s;               // per task
  std::vector<std::uint32_t> start_order;  // task ids in the order they started (non-decreasing start time)
  std::vector<std::uint32_t> end_order;    // task ids in the order they ended (non-decreasing end time)
  std::vector<double> port_bytes;          // bytes carried per port by finished flows
  double makespan_s = 0.0;
  std::size_t num_events = 0;
};

/// Runs the program to completion. Throws InfeasibleError when tasks remain that can never run (a dependency
/// cycle, a predecessor that never runs, a collective whose participants never all arrive), naming up to 5 stuck
/// tasks and their unfinished predecessors, or when more than max_events events would be processed.
EngineResult run_engine(const SimProgram& program, const EngineOptions& options = {});

} // namespace cuboid::sim

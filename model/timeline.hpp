// Timeline and Chrome/Perfetto trace writer shared by sim/ (predicted) and exec/ (measured): one process per rank,
// one thread (track) per stream, task ids in args, so predicted and measured runs line up task by task.
#pragma once

#include "model/task_graph.hpp"

#include <string>
#include <vector>

namespace cuboid::model {

struct TimelineEvent {
  TaskId id = 0;
  int rank = 0;
  Stream stream = Stream::Compute;
  double start_s = 0.0;
  double end_s = 0.0;
  std::string name;      // task label
  std::string category;  // "compute", "collective", "p2p", "optimizer" or an op name for op-level events
};

struct TraceSet {
  std::string title;                 // "predicted" or "measured"
  std::vector<TimelineEvent> events;
};

/// Writes one Chrome trace JSON (traceEvents, "X" complete events in microseconds, process/thread name metadata)
/// with every set as its own group of processes ("predicted rank 3", "measured rank 3"). Written to a temporary
/// file and renamed. Throws InputError if the file cannot be written.
void write_chrome_trace(const std::string& path, const std::vector<TraceSet>& sets);

} // namespace cuboid::model

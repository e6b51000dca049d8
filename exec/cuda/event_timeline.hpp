// EventTimeline: per-task timing on the GPU with CUDA events, in the measured-trace format of the CPU runtime
// (model::TimelineEvent: IR task id, rank, stream, start/end seconds relative to the step start). Events are recorded
// on the CUDA stream a task runs on, so timing adds no host synchronisation until collect(), which is called once
// per step after the step's work has been enqueued. Events are pooled and reused across steps.
#pragma once

#include "model/timeline.hpp"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>
#include <vector>

namespace cuboid::exec::cuda {

class EventTimeline {
public:
  explicit EventTimeline(int rank);
  ~EventTimeline();
  EventTimeline(const EventTimeline&) = delete;
  EventTimeline& operator=(const EventTimeline&) = delete;

  /// Starts a step: records the reference event on `stream`; earlier tasks are forgotten.
  void begin_step(cudaStream_t stream);
  /// Records the start of a task on `cuda_stream`; returns the handle for stop(). Legal only after begin_step().
  [[nodiscard]] std::size_t start(model::TaskId id, model::Stream stream, std::string name, std::string category,
                                  cudaStream_t cuda_stream);
  void stop(std::size_t handle, cudaStream_t cuda_stream);
  /// Waits for every recorded event and returns the step's tasks in start() order (host synchronisation).
  [[nodiscard]] std::vector<model::TimelineEvent> collect();

private:
  struct Task {
    model::TimelineEvent event;
    std::size_t start_event = 0;
    std::size_t stop_event = 0;
    bool stopped = false;
  };
  cudaEvent_t next_event();
  int rank_;
  std::vector<cudaEvent_t> pool_; // pool_[0] is the step reference
  std::size_t used_ = 0;
  bool started_ = false;
  std::vector<Task> tasks_;
};

} // namespace cuboid::exec::cuda

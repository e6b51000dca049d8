// CUDA-event task timing (see event_timeline.hpp).
#include "exec/cuda/event_timeline.hpp"

#include "exec/cuda/cuda_check.hpp"
#include "model/errors.hpp"

namespace cuboid::exec::cuda {

EventTimeline::EventTimeline(int rank) : rank_(rank) {}

EventTimeline::~EventTimeline() {
  for (cudaEvent_t e : pool_) {
    cudaEventDestroy(e);
  }
}

cudaEvent_t EventTimeline::next_event() {
  if (used_ == pool_.size()) {
    cudaEvent_t e = nullptr;
    CUDA_CHECK(cudaEventCreate(&e)); // default flags: timing enabled
    pool_.push_back(e);
  }
  return pool_[used_++];
}

void EventTimeline::begin_step(cudaStream_t stream) {
  used_ = 0;
  tasks_.clear();
  CUDA_CHECK(cudaEventRecord(next_event(), stream));
  started_ = true;
}

std::size_t EventTimeline::start(model::TaskId id, model::Stream stream, std::string name, std::string category,
                                 cudaStream_t cuda_stream) {
  CUBOID_ASSERT(started_, "EventTimeline::start({}) before begin_step()", id);
  Task task;
  task.event = {id, rank_, stream, 0.0, 0.0, std::move(name), std::move(category)};
  task.start_event = used_;
  CUDA_CHECK(cudaEventRecord(next_event(), cuda_stream));
  tasks_.push_back(std::move(task));
  return tasks_.size() - 1;
}

void EventTimeline::stop(std::size_t handle, cudaStream_t cuda_stream) {
  CUBOID_ASSERT(handle < tasks_.size() && !tasks_[handle].stopped, "EventTimeline::stop: bad handle {}", handle);
  tasks_[handle].stop_event = used_;
  CUDA_CHECK(cudaEventRecord(next_event(), cuda_stream));
  tasks_[handle].stopped = true;
}

std::vector<model::TimelineEvent> EventTimeline::collect() {
  CUBOID_ASSERT(started_, "EventTimeline::collect() before begin_step()");
  std::vector<model::TimelineEvent> out;
  out.reserve(tasks_.size());
  for (std::size_t idx = 0; idx < used_; ++idx) {
    CUDA_CHECK(cudaEventSynchronize(pool_[idx]));
  }
  for (const Task& task : tasks_) {
    CUBOID_ASSERT(task.stopped, "EventTimeline: task {} ({}) was started but never stopped", task.event.id,
                  task.event.name);
    float start_ms = 0.0f;
    float stop_ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&start_ms, pool_[0], pool_[task.start_event]));
    CUDA_CHECK(cudaEventElapsedTime(&stop_ms, pool_[0], pool_[task.stop_event]));
    model::TimelineEvent e = task.event;
    e.start_s = static_cast<double>(start_ms) * 1e-3;
    e.end_s = static_cast<double>(stop_ms) * 1e-3;
    out.push_back(std::move(e));
  }
  return out;
}

} // namespace cuboid::exec::cuda

// EventQueue: the time-ordered agenda of the discrete-event engine. Events at the same time come out in the order
// they were pushed (sequence tie-break), so a simulation is deterministic run to run and platform to platform.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace cuboid::sim {

enum class EventKind : std::uint8_t {
  TaskEnd,      // a fixed-duration task finished; a = task id
  PhaseLatency, // the latency (alpha) part of a communication phase elapsed; a = comm instance
  FlowEnd,      // a network flow may have finished; a = flow slot, b = flow version (stale if it differs)
};

struct Event {
  double time_s = 0.0;
  std::uint64_t seq = 0;
  EventKind kind = EventKind::TaskEnd;
  std::uint32_t a = 0;
  std::uint32_t b = 0;
};

/// Binary min-heap on (time_s, seq). Storage is one vector reused for the whole run (no per-event allocation once
/// it has grown to the largest number of pending events).
class EventQueue {
public:
  void reserve(std::size_t capacity) { heap_.reserve(capacity); }
  /// Schedules an event; `time_s` must not be earlier than the last popped event (not checked here: the engine
  /// only schedules at or after the current time).
  void push(double time_s, EventKind kind, std::uint32_t a, std::uint32_t b = 0);
  /// Earliest event. Precondition: !empty().
  [[nodiscard]] const Event& top() const { return heap_.front(); }
  Event pop();
  [[nodiscard]] bool empty() const { return heap_.empty(); }
  [[nodiscard]] std::size_t size() const { return heap_.size(); }
  /// Number of events ever pushed.
  [[nodiscard]] std::uint64_t get_pushed() const { return next_seq_; }

private:
  std::vector<Event> heap_;
  std::uint64_t next_seq_ = 0;
};

} // namespace cuboid::sim

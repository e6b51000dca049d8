// EventQueue: the time-ordered agenda of the discrete-event engine. Events at the same time come out in the order
// they were pushed (sequence tie-break), so a simulation is deterministic run to run and platform to platform.
#pragma once

#include <bit>
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

/// 4-ary min-heap on (time_s, seq) of 16-byte nodes (the time's bits and seq << SLOT_BITS | payload slot: two
/// integer compares order two events); the payloads (kind, a, b) sit in a side table of recycled slots. Storage is
/// reused for the whole run (no per-event allocation once it has grown to the largest number of pending events).
/// Times must be >= 0 (non-negative doubles order like their bit patterns).
class EventQueue {
public:
  void reserve(std::size_t capacity);
  /// Schedules an event; `time_s` must not be earlier than the last popped event (not checked here: the engine
  /// only schedules at or after the current time).
  void push(double time_s, EventKind kind, std::uint32_t a, std::uint32_t b = 0);
  /// Earliest event. Precondition: !empty().
  [[nodiscard]] Event top() const;
  /// Time of the earliest event. Precondition: !empty().
  [[nodiscard]] double top_time_s() const { return std::bit_cast<double>(heap_.front().time_bits); }
  Event pop();
  [[nodiscard]] bool empty() const { return heap_.empty(); }
  [[nodiscard]] std::size_t size() const { return heap_.size(); }
  /// Number of events ever pushed.
  [[nodiscard]] std::uint64_t get_pushed() const { return next_seq_; }

private:
  static constexpr unsigned SLOT_BITS = 24; // up to 16.7 M pending events, 2^40 pushes
  static constexpr std::uint64_t SLOT_MASK = (std::uint64_t{1} << SLOT_BITS) - 1;
  static constexpr std::size_t ARITY = 4;
  struct Node {
    std::uint64_t time_bits = 0;
    std::uint64_t order = 0; // seq << SLOT_BITS | slot
  };
  struct Payload {
    std::uint32_t a = 0;
    std::uint32_t b = 0;
    EventKind kind = EventKind::TaskEnd;
  };
  static bool before(const Node& lhs, const Node& rhs) {
    return lhs.time_bits < rhs.time_bits || (lhs.time_bits == rhs.time_bits && lhs.order < rhs.order);
  }
  [[nodiscard]] Event event_of(const Node& node) const;

  std::vector<Node> heap_;
  std::vector<Payload> payloads_;
  std::vector<std::uint32_t> free_slots_;
  std::uint64_t next_seq_ = 0;
};

} // namespace cuboid::sim

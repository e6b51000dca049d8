// EventQueue implementation: std::push_heap/pop_heap with an "earlier first, then pushed first" order.
#include "sim/event_queue.hpp"

#include <algorithm>

namespace cuboid::sim {

namespace {
// std heap algorithms build a max-heap: "a < b" must mean "a comes out after b". A function object, not a function
// pointer, so that the heap algorithms inline the comparison.
struct Later {
  bool operator()(const Event& lhs, const Event& rhs) const {
    if (lhs.time_s != rhs.time_s) {
      return lhs.time_s > rhs.time_s;
    }
    return lhs.seq > rhs.seq;
  }
};
} // namespace

void EventQueue::push(double time_s, EventKind kind, std::uint32_t a, std::uint32_t b) {
  heap_.push_back(Event{time_s, next_seq_++, kind, a, b});
  std::push_heap(heap_.begin(), heap_.end(), Later{});
}

Event EventQueue::pop() {
  std::pop_heap(heap_.begin(), heap_.end(), Later{});
  const Event event = heap_.back();
  heap_.pop_back();
  return event;
}

} // namespace cuboid::sim

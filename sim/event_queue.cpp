// EventQueue implementation: a 4-ary heap (half the depth of a binary heap; the four children of a node share a
// cache line) ordered by "earlier first, then pushed first".
#include "sim/event_queue.hpp"

#include "model/errors.hpp"

namespace cuboid::sim {

void EventQueue::reserve(std::size_t capacity) {
  heap_.reserve(capacity);
  payloads_.reserve(capacity);
  free_slots_.reserve(capacity);
}

void EventQueue::push(double time_s, EventKind kind, std::uint32_t a, std::uint32_t b) {
  // >= 0 also rejects NaN; + 0.0 turns -0.0 into +0.0 (the two compare equal as doubles but not as bits).
  CUBOID_ASSERT(time_s >= 0.0, "event at t = {} s (must be >= 0)", time_s);
  CUBOID_ASSERT(next_seq_ < (std::uint64_t{1} << (64 - SLOT_BITS)), "{} events pushed", next_seq_);
  std::uint32_t slot = 0;
  if (free_slots_.empty()) {
    CUBOID_ASSERT(payloads_.size() <= SLOT_MASK, "{} pending events", payloads_.size());
    slot = static_cast<std::uint32_t>(payloads_.size());
    payloads_.push_back(Payload{a, b, kind});
  } else {
    slot = free_slots_.back();
    free_slots_.pop_back();
    payloads_[slot] = Payload{a, b, kind};
  }
  const Node node{std::bit_cast<std::uint64_t>(time_s + 0.0), (next_seq_++ << SLOT_BITS) | slot};
  // Sift up: move parents down while the new node goes before them.
  std::size_t pos = heap_.size();
  heap_.emplace_back();
  while (pos > 0) {
    const std::size_t parent = (pos - 1) / ARITY;
    if (!before(node, heap_[parent])) {
      break;
    }
    heap_[pos] = heap_[parent];
    pos = parent;
  }
  heap_[pos] = node;
}

Event EventQueue::event_of(const Node& node) const {
  const Payload& payload = payloads_[node.order & SLOT_MASK];
  return Event{std::bit_cast<double>(node.time_bits), node.order >> SLOT_BITS, payload.kind, payload.a, payload.b};
}

Event EventQueue::top() const { return event_of(heap_.front()); }

Event EventQueue::pop() {
  const Event event = event_of(heap_.front());
  free_slots_.push_back(static_cast<std::uint32_t>(heap_.front().order & SLOT_MASK));
  const Node last = heap_.back();
  heap_.pop_back();
  const std::size_t size = heap_.size();
  if (size == 0) {
    return event;
  }
  // Sift down the former last node from the root: move the earliest child up while it goes before that node.
  std::size_t pos = 0;
  for (;;) {
    const std::size_t first = pos * ARITY + 1;
    if (first >= size) {
      break;
    }
    std::size_t best = first;
    const std::size_t end = first + ARITY < size ? first + ARITY : size;
    for (std::size_t child = first + 1; child < end; ++child) {
      if (before(heap_[child], heap_[best])) {
        best = child;
      }
    }
    if (!before(heap_[best], last)) {
      break;
    }
    heap_[pos] = heap_[best];
    pos = best;
  }
  heap_[pos] = last;
  return event;
}

} // namespace cuboid::sim

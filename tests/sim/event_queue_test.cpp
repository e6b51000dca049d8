// EventQueue: time order with a deterministic tie-break by push order.
#include "sim/event_queue.hpp"

#include <catch2/catch.hpp>

using cuboid::sim::EventKind;
using cuboid::sim::EventQueue;

TEST_CASE("sim::EventQueue: earliest first, ties in push order", "[sim]") {
  EventQueue queue;
  // Pushed out of order; three events share t = 2: they must come out as pushed (a = 10, 11, 12).
  queue.push(3.0, EventKind::TaskEnd, 0);
  queue.push(2.0, EventKind::TaskEnd, 10);
  queue.push(1.0, EventKind::FlowEnd, 1, 7);
  queue.push(2.0, EventKind::PhaseLatency, 11);
  queue.push(2.0, EventKind::TaskEnd, 12);
  REQUIRE(queue.size() == 5);
  const std::vector<std::pair<double, std::uint32_t>> expected = {{1.0, 1}, {2.0, 10}, {2.0, 11}, {2.0, 12}, {3.0, 0}};
  for (const auto& [time_s, a] : expected) {
    const cuboid::sim::Event event = queue.pop();
    CHECK(event.time_s == time_s);
    CHECK(event.a == a);
  }
  REQUIRE(queue.empty());
  REQUIRE(queue.get_pushed() == 5);
}

TEST_CASE("sim::EventQueue: many equal times stay deterministic", "[sim]") {
  // 1000 events at 5 times pushed in a scrambled order: output sorted by (time, push order), identical on reruns.
  auto run = [] {
    EventQueue queue;
    for (std::uint32_t idx = 0; idx < 1000; ++idx) {
      queue.push(static_cast<double>((idx * 7919U) % 5U), EventKind::TaskEnd, idx);
    }
    std::vector<std::uint32_t> order;
    double last_time = -1.0;
    std::uint64_t last_seq = 0;
    while (!queue.empty()) {
      const cuboid::sim::Event event = queue.pop();
      REQUIRE(event.time_s >= last_time);
      if (event.time_s == last_time) {
        REQUIRE(event.seq > last_seq);
      }
      last_time = event.time_s;
      last_seq = event.seq;
      order.push_back(event.a);
    }
    return order;
  };
  REQUIRE(run() == run());
}

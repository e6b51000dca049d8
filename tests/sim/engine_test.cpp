// Engine: stream serialisation, tie-breaks, two-executor P2P, collectives joining participants, deadlock detection.
#include "sim/engine.hpp"
#include "sim/program.hpp"
#include "tests/sim/invariants.hpp"

#include "model/errors.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>

using namespace cuboid::sim;
using cuboid::model::Stream;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {
constexpr double NIC_BW = 25e9;
constexpr double NVLINK_BW = 300e9;
} // namespace

TEST_CASE("sim::Engine: one stream runs one task at a time; streams run in parallel", "[sim]") {
  // Three independent 1 s tasks on rank 0's compute stream run back to back (end at 3 s), in id order (ready
  // together, ties by task id); a 2 s task on rank 0's DP stream overlaps them (ends at 2 s).
  ProgramBuilder builder(1, NVLINK_BW, NIC_BW);
  const std::uint32_t first = builder.add_fixed(0, Stream::Compute, 1.0);
  const std::uint32_t second = builder.add_fixed(0, Stream::Compute, 1.0);
  const std::uint32_t third = builder.add_fixed(0, Stream::Compute, 1.0);
  const std::uint32_t other = builder.add_fixed(0, Stream::DpComm, 2.0);
  const SimProgram program = builder.finish();
  const EngineResult run = run_engine(program);
  CHECK(run.start_s[first] == 0.0);
  CHECK(run.start_s[second] == 1.0);
  CHECK(run.start_s[third] == 2.0);
  CHECK(run.end_s[other] == 2.0);
  CHECK(run.makespan_s == 3.0);
  testing::check_invariants(program, run);
}

TEST_CASE("sim::Engine: FIFO by ready time, ties by task id", "[sim]") {
  // Task 2 (ready at 0.5 s) and task 3 (ready at 0.25 s) share rank 0's compute stream, which is busy until 1 s
  // with task 0: task 3 runs first (earlier ready time) although its id is larger.
  ProgramBuilder builder(2, NVLINK_BW, NIC_BW);
  const std::uint32_t busy = builder.add_fixed(0, Stream::Compute, 1.0);
  const std::uint32_t late = builder.add_fixed(1, Stream::Compute, 0.5);
  const std::uint32_t later_ready = builder.add_fixed(0, Stream::Compute, 1.0);
  const std::uint32_t early_ready = builder.add_fixed(0, Stream::Compute, 1.0);
  const std::uint32_t early = builder.add_fixed(1, Stream::TpComm, 0.25);
  builder.add_edge(late, later_ready);
  builder.add_edge(early, early_ready);
  const SimProgram program = builder.finish();
  const EngineResult run = run_engine(program);
  CHECK(run.start_s[early_ready] == 1.0);
  CHECK(run.start_s[later_ready] == 2.0);
  CHECK(run.end_s[busy] == 1.0);
  testing::check_invariants(program, run);
}

TEST_CASE("sim::Engine: a P2P holds the sender's and the receiver's stream", "[sim]") {
  // Rank 1's PP stream is busy for 1 s (a fixed task). A P2P 0 -> 1 of S over NVLink, latency a, must wait for it:
  // it starts at 1 s and ends at 1 + a + S/B. Without holding the receiver stream it starts at 0.
  const double msg_bytes = 3e8;
  const double alpha = 5e-6;
  for (const bool hold : {true, false}) {
    ProgramBuilder builder(2, NVLINK_BW, NIC_BW);
    builder.add_fixed(1, Stream::PpComm, 1.0);
    const std::uint32_t p2p = builder.add_p2p(0, 1, true, msg_bytes, alpha, hold);
    const SimProgram program = builder.finish();
    const EngineResult run = run_engine(program);
    const double start_s = hold ? 1.0 : 0.0;
    CHECK(run.start_s[p2p] == start_s);
    CHECK_THAT(run.end_s[p2p], WithinRel(start_s + alpha + msg_bytes / NVLINK_BW, 1e-12));
    testing::check_invariants(program, run);
  }
}

TEST_CASE("sim::Engine: a collective starts when its last participant arrives", "[sim]") {
  // Two participants; rank 1's participant is released by a 2 s compute task. The zero-byte, 1 ms latency
  // collective therefore runs [2 s, 2.001 s] on both ranks, and rank 0's participant holds its stream from 0 s.
  ProgramBuilder builder(2, NVLINK_BW, NIC_BW);
  const std::uint32_t inst = builder.add_instance(2);
  builder.add_phase(inst, 1e-3);
  const std::uint32_t part0 = builder.add_comm_task(inst, 0, Stream::DpComm, TaskCategory::DpComm);
  const std::uint32_t part1 = builder.add_comm_task(inst, 1, Stream::DpComm, TaskCategory::DpComm);
  const std::uint32_t gate = builder.add_fixed(1, Stream::Compute, 2.0);
  builder.add_edge(gate, part1);
  const SimProgram program = builder.finish();
  const EngineResult run = run_engine(program);
  CHECK(run.start_s[part0] == 0.0);
  CHECK(run.start_s[part1] == 2.0);
  CHECK_THAT(run.end_s[part0], WithinRel(2.001, 1e-12));
  CHECK_THAT(run.end_s[part1], WithinRel(2.001, 1e-12));
}

TEST_CASE("sim::Engine: identical inputs give identical timelines", "[sim]") {
  // A random-ish DAG of 2000 tasks over 4 ranks with P2P flows: two runs must agree bit for bit.
  ProgramBuilder builder(4, NVLINK_BW, NIC_BW);
  std::uint32_t state = 12345;
  auto next = [&state] {
    state = state * 1103515245U + 12345U;
    return (state >> 8) & 0xFFFFU;
  };
  for (std::uint32_t id = 0; id < 2000; ++id) {
    const std::uint32_t rank_idx = next() % 4;
    std::uint32_t task = 0;
    if (next() % 4 == 0) {
      task = builder.add_p2p(rank_idx, (rank_idx + 1) % 4, next() % 2 == 0, 1e6 * (1 + next() % 7), 1e-6, true);
    } else {
      task = builder.add_fixed(rank_idx, static_cast<Stream>(next() % 3), 1e-4 * (next() % 5));
    }
    if (id > 0) {
      builder.add_edge(next() % id, task);
    }
  }
  const SimProgram program = builder.finish();
  const EngineResult a = run_engine(program);
  const EngineResult b = run_engine(program);
  CHECK(a.start_s == b.start_s);
  CHECK(a.end_s == b.end_s);
  CHECK(a.start_order == b.start_order);
  testing::check_invariants(program, a);
}

TEST_CASE("sim::Engine: deadlock detection names stuck tasks", "[sim]") {
  ProgramBuilder builder(2, NVLINK_BW, NIC_BW);
  EngineOptions options;
  options.label = [](std::uint32_t task) { return fmt::format("t{}", task); };
  SECTION("dependency cycle") {
    // t1 -> t2 -> t1: neither can ever become ready; t0 runs.
    builder.add_fixed(0, Stream::Compute, 1.0);
    const std::uint32_t a = builder.add_fixed(0, Stream::Compute, 1.0);
    const std::uint32_t b = builder.add_fixed(1, Stream::Compute, 1.0);
    builder.add_edge(a, b);
    builder.add_edge(b, a);
    const SimProgram program = builder.finish();
    REQUIRE_THROWS_WITH(run_engine(program, options),
                        Contains("deadlock: 2 of 3 tasks") && Contains("'t1' waits for 1 unfinished predecessor(s): 't2'") &&
                            Contains("'t2' waits for 1 unfinished predecessor(s): 't1'"));
  }
  SECTION("P2P whose predecessor never runs") {
    // t0 depends on itself (never ready); the P2P t1 depends on t0.
    const std::uint32_t never = builder.add_fixed(0, Stream::Compute, 1.0);
    builder.add_edge(never, never);
    const std::uint32_t p2p = builder.add_p2p(0, 1, false, 1e6, 0.0, true);
    builder.add_edge(never, p2p);
    const SimProgram program = builder.finish();
    REQUIRE_THROWS_AS(run_engine(program, options), cuboid::InfeasibleError);
    REQUIRE_THROWS_WITH(run_engine(program, options), Contains("'t1' waits for 1 unfinished predecessor(s): 't0'"));
  }
  SECTION("collective whose second participant never arrives") {
    const std::uint32_t inst = builder.add_instance(2);
    builder.add_phase(inst, 1e-6);
    builder.add_comm_task(inst, 0, Stream::DpComm, TaskCategory::DpComm);
    const std::uint32_t missing = builder.add_comm_task(inst, 1, Stream::DpComm, TaskCategory::DpComm);
    builder.add_edge(missing, missing);
    const SimProgram program = builder.finish();
    REQUIRE_THROWS_WITH(run_engine(program, options), Contains("'t0' started, waiting for 1 more participant(s)"));
  }
}

TEST_CASE("sim::Engine: max_events bounds the run", "[sim]") {
  ProgramBuilder builder(1, NVLINK_BW, NIC_BW);
  for (int idx = 0; idx < 10; ++idx) {
    builder.add_fixed(0, Stream::Compute, 1.0);
  }
  const SimProgram program = builder.finish();
  EngineOptions options;
  options.max_events = 5;
  REQUIRE_THROWS_AS(run_engine(program, options), cuboid::InfeasibleError);
  REQUIRE_THROWS_WITH(run_engine(program, options), Contains("max_events = 5"));
}

TEST_CASE("sim::Engine: zero-time communication readies work on an executor already dispatched", "[sim]") {
  // Rank 0: compute task A (1 s) -> zero-phase collective C (a group of one: ends when it starts) -> optimizer O on
  // the compute stream. At t = 1 s the compute executor is dispatched (idle, nothing queued), then C starts and ends
  // in the same instant and readies O on that executor: O must still start at t = 1 s.
  ProgramBuilder builder(1, NVLINK_BW, NIC_BW);
  const std::uint32_t compute = builder.add_fixed(0, Stream::Compute, 1.0);
  const std::uint32_t inst = builder.add_instance(1);
  const std::uint32_t reduce = builder.add_comm_task(inst, 0, Stream::DpComm, TaskCategory::DpComm);
  const std::uint32_t opt = builder.add_fixed(0, Stream::Compute, 0.5, TaskCategory::Optimizer);
  builder.add_edge(compute, reduce);
  builder.add_edge(reduce, opt);
  const SimProgram program = builder.finish();
  const EngineResult run = run_engine(program);
  CHECK(run.start_s[opt] == 1.0);
  CHECK(run.makespan_s == 1.5);
  testing::check_invariants(program, run);
}

// Network and flows through the engine: equal sharing of a port, rate changes when flows start and end.
#include "sim/engine.hpp"
#include "sim/program.hpp"
#include "tests/sim/invariants.hpp"

#include <catch2/catch.hpp>

using namespace cuboid::sim;
using cuboid::model::Stream;
using Catch::Matchers::WithinRel;

namespace {
constexpr double NIC_BW = 25e9;   // bytes/s
constexpr double NVLINK_BW = 300e9;
constexpr double MSG = 100e6;     // bytes
} // namespace

TEST_CASE("sim::Network: a lone flow runs at the port capacity", "[sim]") {
  // One 100 MB P2P over the NIC, zero latency: S / B = 4 ms.
  ProgramBuilder builder(2, NVLINK_BW, NIC_BW);
  builder.add_p2p(0, 1, false, MSG, 0.0, true);
  const SimProgram program = builder.finish();
  const EngineResult run = run_engine(program);
  CHECK_THAT(run.makespan_s, WithinRel(MSG / NIC_BW, 1e-12));
  testing::check_invariants(program, run);
}

TEST_CASE("sim::Network: two flows into one port each get B/2", "[sim]") {
  // Ranks 0 and 1 both send S to rank 2 over the NIC at t = 0. Rank 2's in-port is shared by two flows, so each
  // gets B/2 (equal weights) and both end at 2S/B.
  ProgramBuilder builder(3, NVLINK_BW, NIC_BW);
  const std::uint32_t first = builder.add_p2p(0, 2, false, MSG, 0.0, false);
  const std::uint32_t second = builder.add_p2p(1, 2, false, MSG, 0.0, false);
  const SimProgram program = builder.finish();
  const EngineResult run = run_engine(program);
  CHECK_THAT(run.end_s[first], WithinRel(2.0 * MSG / NIC_BW, 1e-12));
  CHECK_THAT(run.end_s[second], WithinRel(2.0 * MSG / NIC_BW, 1e-12));
  testing::check_invariants(program, run);
}

TEST_CASE("sim::Network: rates are recomputed when a flow starts and ends", "[sim]") {
  // Flow A (rank 0 -> 2) starts at 0; flow B (rank 1 -> 2) starts at T/2 where T = S/B (after a T/2 compute task).
  // A alone sends S/2 by T/2; then both share B/2: A's last S/2 takes T, so A ends at 1.5 T. B sent S/2 by then and
  // finishes its last S/2 alone at B: it ends at 2 T.
  const double unit_s = MSG / NIC_BW;
  ProgramBuilder builder(3, NVLINK_BW, NIC_BW);
  const std::uint32_t flow_a = builder.add_p2p(0, 2, false, MSG, 0.0, false);
  const std::uint32_t delay = builder.add_fixed(1, Stream::Compute, unit_s / 2.0);
  const std::uint32_t flow_b = builder.add_p2p(1, 2, false, MSG, 0.0, false);
  builder.add_edge(delay, flow_b);
  const SimProgram program = builder.finish();
  const EngineResult run = run_engine(program);
  CHECK_THAT(run.end_s[flow_a], WithinRel(1.5 * unit_s, 1e-12));
  CHECK_THAT(run.start_s[flow_b], WithinRel(0.5 * unit_s, 1e-12));
  CHECK_THAT(run.end_s[flow_b], WithinRel(2.0 * unit_s, 1e-12));
  testing::check_invariants(program, run);
}

TEST_CASE("sim::Network: NVLink and NIC ports are separate", "[sim]") {
  // Rank 0 sends S to rank 1 over NVLink and S to rank 2 over the NIC at the same time: different ports, no
  // sharing, so they end at S/B_nvlink and S/B_nic.
  ProgramBuilder builder(3, NVLINK_BW, NIC_BW);
  const std::uint32_t nvlink = builder.add_p2p(0, 1, true, MSG, 0.0, false, Stream::PpComm);
  const std::uint32_t nic = builder.add_p2p(0, 2, false, MSG, 0.0, false, Stream::DpComm);
  const SimProgram program = builder.finish();
  const EngineResult run = run_engine(program);
  CHECK_THAT(run.end_s[nvlink], WithinRel(MSG / NVLINK_BW, 1e-12));
  CHECK_THAT(run.end_s[nic], WithinRel(MSG / NIC_BW, 1e-12));
  testing::check_invariants(program, run);
}

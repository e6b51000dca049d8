// Breakdown on hand-built programs: busy time split by block cost, idle time split by what it waited for.
#include "sim/breakdown.hpp"
#include "sim/engine.hpp"
#include "sim/program.hpp"

#include <catch2/catch.hpp>

using namespace cuboid::sim;
using cuboid::model::Stream;
using Catch::Matchers::WithinRel;

namespace {
constexpr double NIC_BW = 10e9;
constexpr double NVLINK_BW = 100e9;

double total(const Breakdown& out) {
  return out.compute_s + out.recompute_s + out.tp_comm_exposed_s + out.pp_comm_exposed_s + out.dp_comm_exposed_s +
         out.bubble_s + out.optimizer_s + out.cp_comm_exposed_s + out.ep_comm_exposed_s;
}
} // namespace

TEST_CASE("sim::breakdown: two-stage pipeline, one message", "[sim]") {
  // Stage 0 computes 1 s, sends 1 GB over the NIC (alpha 0, 10 GB/s -> 0.1 s) to stage 1, which computes 1 s (a block
  // of 0.6 s compute + 0.3 s recompute + 0.1 s TP comm), then runs a 0.2 s optimizer. Step = 1 + 0.1 + 1.2 = 2.3 s.
  // Stage 1 (bottleneck: its compute stream ends last): idle [0, 1.1): 1 s waiting for stage 0's compute (bubble),
  // 0.1 s waiting for the message (pp comm). Stage 0: busy 1 s, idle tail 1.3 s = 0.1 s while its send is in flight
  // (pp comm) + 1.2 s bubble.
  ProgramBuilder builder(2, NVLINK_BW, NIC_BW);
  const std::uint32_t cost = builder.add_block_cost(cuboid::model::BlockCost{1.0, 0.6, 0.3, 0.1});
  const std::uint32_t fwd0 = builder.add_fixed(0, Stream::Compute, 1.0);
  const std::uint32_t send = builder.add_p2p(0, 1, false, 1e9, 0.0, true);
  const std::uint32_t fwd1 = builder.add_fixed(1, Stream::Compute, 1.0, TaskCategory::Compute, cost);
  const std::uint32_t opt = builder.add_fixed(1, Stream::Compute, 0.2, TaskCategory::Optimizer);
  builder.add_edge(fwd0, send);
  builder.add_edge(send, fwd1);
  builder.add_edge(fwd1, opt);
  const SimProgram program = builder.finish();
  const EngineResult run = run_engine(program);
  REQUIRE_THAT(run.makespan_s, WithinRel(2.3, 1e-12));
  REQUIRE(find_bottleneck_rank(program, run, {0, 1}) == 1);

  const Breakdown last = compute_breakdown(program, run, 1, run.makespan_s);
  CHECK_THAT(last.compute_s, WithinRel(0.6, 1e-12));
  CHECK_THAT(last.recompute_s, WithinRel(0.3, 1e-12));
  CHECK_THAT(last.tp_comm_exposed_s, WithinRel(0.1, 1e-12));
  CHECK_THAT(last.optimizer_s, WithinRel(0.2, 1e-12));
  CHECK_THAT(last.pp_comm_exposed_s, WithinRel(0.1, 1e-9));
  CHECK_THAT(last.bubble_s, WithinRel(1.0, 1e-12));
  CHECK_THAT(total(last), WithinRel(run.makespan_s, 1e-12));

  const Breakdown first = compute_breakdown(program, run, 0, run.makespan_s);
  CHECK_THAT(first.compute_s, WithinRel(1.0, 1e-12));
  CHECK_THAT(first.pp_comm_exposed_s, WithinRel(0.1, 1e-9));
  CHECK_THAT(first.bubble_s, WithinRel(1.2, 1e-9));
  CHECK_THAT(total(first), WithinRel(run.makespan_s, 1e-12));
}

TEST_CASE("sim::breakdown: waiting for a DP collective before the optimizer", "[sim]") {
  // One rank: backward 1 s, then a 1-member "collective" with 0.5 s latency on the DP stream, then a 0.1 s optimizer.
  // The compute stream idles 0.5 s waiting for the collective: dp_comm_exposed = 0.5 s. Ties of the bottleneck
  // rank go to the lowest stage.
  ProgramBuilder builder(1, NVLINK_BW, NIC_BW);
  const std::uint32_t bwd = builder.add_fixed(0, Stream::Compute, 1.0);
  const std::uint32_t inst = builder.add_instance(1);
  builder.add_phase(inst, 0.5);
  const std::uint32_t reduce = builder.add_comm_task(inst, 0, Stream::DpComm, TaskCategory::DpComm);
  const std::uint32_t opt = builder.add_fixed(0, Stream::Compute, 0.1, TaskCategory::Optimizer);
  builder.add_edge(bwd, reduce);
  builder.add_edge(reduce, opt);
  const SimProgram program = builder.finish();
  const EngineResult run = run_engine(program);
  const Breakdown out = compute_breakdown(program, run, 0, run.makespan_s);
  CHECK_THAT(out.compute_s, WithinRel(1.0, 1e-12));
  CHECK_THAT(out.dp_comm_exposed_s, WithinRel(0.5, 1e-12));
  CHECK_THAT(out.optimizer_s, WithinRel(0.1, 1e-12));
  CHECK(out.bubble_s == Approx(0.0).margin(1e-12));
  CHECK_THAT(total(out), WithinRel(1.6, 1e-12));
}

TEST_CASE("sim::breakdown: serialised DP buckets after the backward count whole", "[sim]") {
  // Backward 1 s, then three DP buckets of 0.4 s each on the DP stream, chained (bucket k+1 waits for bucket k, as the
  // comm stream serialises them), then the optimizer waits for the last one. The compute stream idles 1.2 s, all of
  // it behind the chain: dp_comm_exposed = 1.2 s, no bubble (it used to count only the last bucket, 0.4 s).
  ProgramBuilder builder(1, NVLINK_BW, NIC_BW);
  const std::uint32_t bwd = builder.add_fixed(0, Stream::Compute, 1.0);
  std::uint32_t previous = bwd;
  for (int bucket = 0; bucket < 3; ++bucket) {
    const std::uint32_t inst = builder.add_instance(1);
    builder.add_phase(inst, 0.4);
    const std::uint32_t reduce = builder.add_comm_task(inst, 0, Stream::DpComm, TaskCategory::DpComm);
    builder.add_edge(previous, reduce);
    previous = reduce;
  }
  const std::uint32_t opt = builder.add_fixed(0, Stream::Compute, 0.1, TaskCategory::Optimizer);
  builder.add_edge(previous, opt);
  const SimProgram program = builder.finish();
  const EngineResult run = run_engine(program);
  REQUIRE_THAT(run.makespan_s, WithinRel(2.3, 1e-12));
  const Breakdown out = compute_breakdown(program, run, 0, run.makespan_s);
  CHECK_THAT(out.dp_comm_exposed_s, WithinRel(1.2, 1e-12));
  CHECK(out.bubble_s == Approx(0.0).margin(1e-12));
  CHECK_THAT(total(out), WithinRel(run.makespan_s, 1e-12));
}

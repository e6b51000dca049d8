// Engine throughput on a synthetic all-ranks pipeline (hidden test: run with `cuboid_sim_tests "[.perf]"`).
// 1024 ranks (tp 8 x dp 16 x pp 8), 96 micro-batches, 12 layers per stage, GPipe order, P2P between stages and one
// DP all-reduce per rank: about 2.6 M tasks, the shape of GPT-3 175B on 1024 GPUs in all-ranks mode.
#include "sim/engine.hpp"
#include "sim/program.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>

using namespace cuboid::sim;
using cuboid::model::Stream;

TEST_CASE("sim::Engine: synthetic all-ranks GPT-3 pipeline throughput", "[.perf]") {
  const std::uint32_t tp = 8;
  const std::uint32_t dp = 16;
  const std::uint32_t pp = 8;
  const std::uint32_t microbatches = 96;
  const std::uint32_t layers = 12;
  const std::uint32_t ranks = tp * dp * pp;
  const auto t0 = std::chrono::steady_clock::now();
  ProgramBuilder builder(ranks, 300e9, 25e9);
  // fwd_last[rank][mb] / bwd_first tasks for P2P wiring.
  std::vector<std::uint32_t> prev_on_rank(ranks, NO_INDEX);
  std::vector<std::uint32_t> fwd_out(static_cast<std::size_t>(ranks) * microbatches);
  std::vector<std::uint32_t> bwd_out(static_cast<std::size_t>(ranks) * microbatches);
  auto chain = [&](std::uint32_t rank, std::uint32_t task) {
    if (prev_on_rank[rank] != NO_INDEX) {
      builder.add_edge(prev_on_rank[rank], task);
    }
    prev_on_rank[rank] = task;
  };
  for (std::uint32_t stage = 0; stage < pp; ++stage) {
    for (std::uint32_t local = 0; local < tp * dp; ++local) {
      const std::uint32_t rank = stage * tp * dp + local;
      for (std::uint32_t mb = 0; mb < microbatches; ++mb) {
        std::uint32_t first = NO_INDEX;
        for (std::uint32_t layer = 0; layer < layers; ++layer) {
          const std::uint32_t task = builder.add_fixed(rank, Stream::Compute, 1e-3);
          first = first == NO_INDEX ? task : first;
          chain(rank, task);
        }
        if (stage > 0) {
          builder.add_edge(fwd_out[(rank - tp * dp) * microbatches + mb], first);
        }
        if (stage + 1 < pp) {
          const std::uint32_t send = builder.add_p2p(rank, rank + tp * dp, false, 25e6, 10e-6, true);
          builder.add_edge(prev_on_rank[rank], send);
          fwd_out[rank * microbatches + mb] = send;
        }
      }
    }
  }
  for (std::uint32_t stage = pp; stage-- > 0;) {
    for (std::uint32_t local = 0; local < tp * dp; ++local) {
      const std::uint32_t rank = stage * tp * dp + local;
      for (std::uint32_t mb = 0; mb < microbatches; ++mb) {
        std::uint32_t first = NO_INDEX;
        for (std::uint32_t layer = 0; layer < layers; ++layer) {
          const std::uint32_t task = builder.add_fixed(rank, Stream::Compute, 2e-3);
          first = first == NO_INDEX ? task : first;
          chain(rank, task);
        }
        if (stage + 1 < pp) {
          builder.add_edge(bwd_out[(rank + tp * dp) * microbatches + mb], first);
        }
        if (stage > 0) {
          const std::uint32_t send = builder.add_p2p(rank, rank - tp * dp, false, 25e6, 10e-6, true);
          builder.add_edge(prev_on_rank[rank], send);
          bwd_out[rank * microbatches + mb] = send;
        }
      }
    }
  }
  // One DP all-reduce per DP group (ring over 16 nodes, 1 GB), one participant per rank.
  for (std::uint32_t stage = 0; stage < pp; ++stage) {
    for (std::uint32_t tp_rank = 0; tp_rank < tp; ++tp_rank) {
      const std::uint32_t inst = builder.add_instance(dp);
      builder.add_phase(inst, 30 * 10e-6);
      for (std::uint32_t dp_rank = 0; dp_rank < dp; ++dp_rank) {
        const std::uint32_t rank = stage * tp * dp + dp_rank * tp + tp_rank;
        builder.add_flow(2.0 * 15.0 / 16.0 * 1e9, port_id(rank, PortKind::NicOut), port_id(rank, PortKind::NicIn));
      }
      for (std::uint32_t dp_rank = 0; dp_rank < dp; ++dp_rank) {
        const std::uint32_t rank = stage * tp * dp + dp_rank * tp + tp_rank;
        const std::uint32_t task = builder.add_comm_task(inst, rank, Stream::DpComm, TaskCategory::DpComm);
        builder.add_edge(prev_on_rank[rank], task);
      }
    }
  }
  const SimProgram program = builder.finish();
  const auto t1 = std::chrono::steady_clock::now();
  const EngineResult run = run_engine(program);
  const auto t2 = std::chrono::steady_clock::now();
  std::printf("synthetic all-ranks: %zu tasks, %zu events, build %.3f s, simulate %.3f s, makespan %.3f s\n",
              program.tasks.size(), run.num_events, std::chrono::duration<double>(t1 - t0).count(),
              std::chrono::duration<double>(t2 - t1).count(), run.makespan_s);
  REQUIRE(run.end_order.size() == program.tasks.size());
}

// MemoryTimeline: static bytes at t = 0, allocations at task start, frees at task end; tie rules at one instant.
#include "sim/engine.hpp"
#include "sim/memory_timeline.hpp"
#include "sim/program.hpp"

#include <catch2/catch.hpp>

using namespace cuboid::sim;
using cuboid::model::MemTag;
using cuboid::model::Stream;

namespace {
constexpr double GB = 1e9;
std::size_t tag(MemTag mem_tag) { return static_cast<std::size_t>(mem_tag); }

std::vector<cuboid::model::RankInfo> one_rank_with_weights(double bytes) {
  std::vector<cuboid::model::RankInfo> ranks(1);
  ranks[0].rank = 0;
  ranks[0].static_bytes[tag(MemTag::Weights)] = bytes;
  return ranks;
}
} // namespace

TEST_CASE("sim::MemoryTimeline: peak and breakdown at the peak", "[sim]") {
  // Rank 0 holds 10 GB of weights. Forward A (t 0-1) allocates 4 GB of activations, forward B (t 1-2) 4 GB more;
  // backward B (t 2-3) allocates a 1 GB workspace at its start and frees it and 4 GB of activations at its end;
  // backward A (t 3-4) allocates 2 GB of workspace and frees everything at its end. The peak is during backward B:
  // 10 + 8 + 1 = 19 GB with 8 GB of activations. At t = 3 backward B hands the stream to backward A, so its frees
  // come first (14 GB) and backward A's 2 GB follow (16 GB): no false 21 GB peak.
  ProgramBuilder builder(1, 1e11, 1e10);
  const std::uint32_t fwd_a = builder.add_fixed(0, Stream::Compute, 1.0);
  const std::uint32_t fwd_b = builder.add_fixed(0, Stream::Compute, 1.0);
  const std::uint32_t bwd_b = builder.add_fixed(0, Stream::Compute, 1.0);
  const std::uint32_t bwd_a = builder.add_fixed(0, Stream::Compute, 1.0);
  builder.add_edge(fwd_a, fwd_b);
  builder.add_edge(fwd_b, bwd_b);
  builder.add_edge(bwd_b, bwd_a);
  const SimProgram program = builder.finish();
  const EngineResult run = run_engine(program);

  std::vector<cuboid::model::Task> tasks(4);
  tasks[fwd_a].alloc_at_start[tag(MemTag::Activations)] = 4 * GB;
  tasks[fwd_b].alloc_at_start[tag(MemTag::Activations)] = 4 * GB;
  tasks[bwd_b].alloc_at_start[tag(MemTag::Workspace)] = 1 * GB;
  tasks[bwd_b].free_at_end[tag(MemTag::Workspace)] = 1 * GB;
  tasks[bwd_b].free_at_end[tag(MemTag::Activations)] = 4 * GB;
  tasks[bwd_a].alloc_at_start[tag(MemTag::Workspace)] = 2 * GB;
  tasks[bwd_a].free_at_end[tag(MemTag::Workspace)] = 2 * GB;
  tasks[bwd_a].free_at_end[tag(MemTag::Activations)] = 4 * GB;

  MemoryTimeline memory(one_rank_with_weights(10 * GB), true);
  memory.replay(program, tasks, run);
  const RankMemory& mem = memory.get_ranks().front();
  CHECK(mem.peak_bytes == Approx(19 * GB));
  CHECK(mem.at_peak[tag(MemTag::Weights)] == Approx(10 * GB));
  CHECK(mem.at_peak[tag(MemTag::Activations)] == Approx(8 * GB));
  CHECK(mem.at_peak[tag(MemTag::Workspace)] == Approx(1 * GB));
  REQUIRE(!mem.timeline.empty());
  CHECK(mem.timeline.front() == std::make_pair(0.0, 10 * GB));
  CHECK(mem.timeline.back().first == 4.0);
  CHECK(mem.timeline.back().second == Approx(10 * GB));
  for (std::size_t idx = 1; idx < mem.timeline.size(); ++idx) {
    CHECK(mem.timeline[idx - 1].first <= mem.timeline[idx].first);
  }
}

TEST_CASE("sim::MemoryTimeline: concurrent streams at one instant allocate before they free", "[sim]") {
  // A 5 GB communication buffer lives on the DP stream during [0, 1]; a compute task on another stream starts at
  // t = 1 (after a 1 s compute task) and allocates 5 GB. The two streams' order at t = 1 is unknown, so the replay
  // is conservative: peak = 1 + 5 + 5 = 11 GB.
  ProgramBuilder builder(1, 1e11, 1e10);
  const std::uint32_t buffer = builder.add_fixed(0, Stream::DpComm, 1.0);
  const std::uint32_t first = builder.add_fixed(0, Stream::Compute, 1.0);
  const std::uint32_t second = builder.add_fixed(0, Stream::Compute, 1.0);
  builder.add_edge(first, second);
  const SimProgram program = builder.finish();
  const EngineResult run = run_engine(program);
  std::vector<cuboid::model::Task> tasks(3);
  tasks[buffer].alloc_at_start[tag(MemTag::CommBuffers)] = 5 * GB;
  tasks[buffer].free_at_end[tag(MemTag::CommBuffers)] = 5 * GB;
  tasks[second].alloc_at_start[tag(MemTag::Activations)] = 5 * GB;
  MemoryTimeline memory(one_rank_with_weights(1 * GB), false);
  memory.replay(program, tasks, run);
  CHECK(memory.get_ranks().front().peak_bytes == Approx(11 * GB));
  CHECK(memory.get_ranks().front().timeline.empty());
}

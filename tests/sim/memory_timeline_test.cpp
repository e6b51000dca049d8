// MemoryTimeline: static bytes at t = 0, allocations at task start, frees at task end, allocs before frees at a tie.
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
} // namespace

TEST_CASE("sim::MemoryTimeline: peak and breakdown at the peak", "[sim]") {
  // Rank 0 holds 10 GB of weights. Forward A (t 0-1) allocates 4 GB of activations, forward B (t 1-2) 4 GB more;
  // backward B (t 2-3) frees 4 GB at its end, backward A (t 3-4) the other 4 GB. A 1 GB workspace of backward B is
  // allocated at its start (t = 2) and freed at its end. The peak is 10 + 8 + 1 = 19 GB during backward B, with
  // 8 GB of activations. Backward A starts at t = 3 when backward B ends: its 2 GB workspace is allocated before
  // backward B's frees (conservative tie), so 10 + 8 + 1 + 2 = 21 GB is the peak at t = 3.
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
  std::vector<cuboid::model::RankInfo> ranks(1);
  ranks[0].rank = 0;
  ranks[0].static_bytes[tag(MemTag::Weights)] = 10 * GB;

  MemoryTimeline memory(ranks, true);
  memory.replay(program, tasks, run);
  const RankMemory& mem = memory.get_ranks().front();
  CHECK(mem.peak_bytes == Approx(21 * GB));
  CHECK(mem.at_peak[tag(MemTag::Weights)] == Approx(10 * GB));
  CHECK(mem.at_peak[tag(MemTag::Activations)] == Approx(8 * GB));
  CHECK(mem.at_peak[tag(MemTag::Workspace)] == Approx(3 * GB));
  REQUIRE(!mem.timeline.empty());
  CHECK(mem.timeline.front() == std::make_pair(0.0, 10 * GB));
  CHECK(mem.timeline.back().first == 4.0);
  CHECK(mem.timeline.back().second == Approx(10 * GB));
  for (std::size_t idx = 1; idx < mem.timeline.size(); ++idx) {
    CHECK(mem.timeline[idx - 1].first <= mem.timeline[idx].first);
  }
}

// Per-rank programs: every micro-batch runs forward and backward on every unit once, sends match receives, and
// running all ranks' programs with blocking receives (non-blocking sends) finishes: no schedule can deadlock.
#include "program_check.hpp"
#include "test_models.hpp"

#include "exec/internal_schedule.hpp"

#include <catch2/catch.hpp>

#include <map>

namespace cuboid::exec {
namespace {

TEST_CASE("exec::build_internal_program: complete and deadlock-free schedules", "[exec]") {
  const model::ModelSpec spec = test::gpt_tiny_shape(); // 4 layers
  struct Case {
    model::Schedule schedule;
    int pp;
    int vp;
    std::int64_t microbatches;
  };
  const Case c = GENERATE(Case{model::Schedule::GPipe, 2, 1, 4}, Case{model::Schedule::OneFOneB, 2, 1, 4},
                          Case{model::Schedule::OneFOneB, 4, 1, 3}, Case{model::Schedule::Interleaved, 2, 2, 4},
                          Case{model::Schedule::Interleaved, 2, 2, 2}, Case{model::Schedule::OneFOneB, 1, 1, 2});
  model::Plan plan;
  plan.pp = c.pp;
  plan.vp = c.vp;
  plan.dp = 2;
  plan.tp = 2;
  plan.schedule = c.schedule;
  plan.micro_batch_size = 1;
  plan.global_batch_size = c.microbatches * plan.dp;
  std::vector<Program> programs;
  for (int rank = 0; rank < plan.world_size(); ++rank) {
    programs.push_back(build_internal_program(spec, plan, rank));
  }
  CHECK(test::runs_to_completion(programs));
  // Every (layer, micro-batch) runs forward then backward exactly once on the rank of the layer's stage.
  for (int rank = 0; rank < plan.world_size(); ++rank) {
    std::map<std::pair<int, int>, int> fwd_pos;
    std::map<std::pair<int, int>, int> bwd_pos;
    int pos = 0;
    for (const Instr& instr : programs[static_cast<std::size_t>(rank)].instrs) {
      ++pos;
      if (instr.unit != UnitKind::Layer) {
        continue;
      }
      if (instr.kind == InstrKind::Forward) {
        CHECK(fwd_pos.emplace(std::pair{instr.layer, instr.microbatch}, pos).second);
      } else if (instr.kind == InstrKind::Backward) {
        CHECK(bwd_pos.emplace(std::pair{instr.layer, instr.microbatch}, pos).second);
      }
    }
    CHECK(fwd_pos.size() == static_cast<std::size_t>(4 / plan.pp * c.microbatches));
    CHECK(bwd_pos.size() == fwd_pos.size());
    for (const auto& [key, at] : fwd_pos) {
      CHECK(bwd_pos.at(key) > at);
    }
    CHECK(programs[static_cast<std::size_t>(rank)].instrs.back().kind == InstrKind::OptimizerStep);
    CHECK(test::no_use_after_free(programs[static_cast<std::size_t>(rank)]));
  }
}

} // namespace
} // namespace cuboid::exec

// Pipeline schedule orders (model/schedule.hpp): completeness, forward-before-backward, in-flight micro-batches,
// and the interleaved order against Megatron's closed-form warm-up; chunk layouts.
#include "model/errors.hpp"
#include "model/schedule.hpp"

#include <catch2/catch.hpp>

#include <map>
#include <utility>

using namespace cuboid::model;

namespace {

// Every (mb, chunk) runs F once and B once, F before B.
void check_complete(const std::vector<ScheduleStep>& order, int m, int vp) {
  std::map<std::pair<int, int>, std::pair<int, int>> pos; // (mb, chunk) -> (fwd index, bwd index)
  for (int step_idx = 0; step_idx < static_cast<int>(order.size()); ++step_idx) {
    const ScheduleStep& step = order[static_cast<std::size_t>(step_idx)];
    auto& [fwd, bwd] = pos.try_emplace({step.microbatch, step.chunk}, -1, -1).first->second;
    int& slot = step.phase == Phase::Forward ? fwd : bwd;
    REQUIRE(slot == -1);
    slot = step_idx;
  }
  REQUIRE(pos.size() == static_cast<std::size_t>(m * vp));
  for (const auto& [key, where] : pos) {
    REQUIRE(where.first >= 0);
    REQUIRE(where.second > where.first);
  }
}

} // namespace

TEST_CASE("model::stage_order: 1F1B peak in-flight micro-batches on stage s is pp - s", "[ir]") {
  // Narayanan et al. 2021: stage s warms up with pp - s - 1 forwards and then runs one more before its first
  // backward, so pp - s micro-batches are in flight (min with m).
  const int pp = GENERATE(1, 2, 4, 8);
  const int m = GENERATE(1, 3, 8, 16);
  for (int stage = 0; stage < pp; ++stage) {
    const auto order = stage_order(Schedule::OneFOneB, pp, stage, m, 1);
    check_complete(order, m, 1);
    CHECK(peak_in_flight(order) == std::min(pp - stage, m));
  }
}

TEST_CASE("model::stage_order: GPipe runs all forwards first, m in flight", "[ir]") {
  const int pp = GENERATE(1, 4);
  const int m = GENERATE(1, 5, 8);
  for (int stage = 0; stage < pp; ++stage) {
    const auto order = stage_order(Schedule::GPipe, pp, stage, m, 1);
    check_complete(order, m, 1);
    CHECK(peak_in_flight(order) == m);
    for (int mb = 0; mb < m; ++mb) {
      CHECK(order[static_cast<std::size_t>(mb)] == ScheduleStep{Phase::Forward, mb, 0});
    }
  }
}

TEST_CASE("model::stage_order: interleaved 1F1B follows Megatron's warm-up and chunk order", "[ir]") {
  const int pp = GENERATE(2, 4);
  const int vp = GENERATE(2, 3);
  const int m = GENERATE(8, 16);
  for (int stage = 0; stage < pp; ++stage) {
    const auto order = stage_order(Schedule::Interleaved, pp, stage, m, vp);
    check_complete(order, m, vp);
    // Warm-up (pp - s - 1) * 2 + (vp - 1) * pp forwards (m != pp here), then strict F/B alternation.
    const int warmup = std::min((pp - stage - 1) * 2 + (vp - 1) * pp, m * vp);
    for (int k = 0; k < warmup; ++k) {
      REQUIRE(order[static_cast<std::size_t>(k)].phase == Phase::Forward);
    }
    REQUIRE(order[static_cast<std::size_t>(warmup)].phase == Phase::Forward);
    if (warmup < m * vp) {
      REQUIRE(order[static_cast<std::size_t>(warmup + 1)].phase == Phase::Backward);
    }
    // get_model_chunk_id: the first pp forwards run chunk 0 on micro-batches 0..pp-1, the next pp chunk 1.
    CHECK(order[0] == ScheduleStep{Phase::Forward, 0, 0});
    if (warmup > pp) {
      CHECK(order[static_cast<std::size_t>(pp)] == ScheduleStep{Phase::Forward, 0, 1});
    }
    // The first backward runs the last chunk of micro-batch 0.
    for (const ScheduleStep& step : order) {
      if (step.phase == Phase::Backward) {
        CHECK(step == ScheduleStep{Phase::Backward, 0, vp - 1});
        break;
      }
    }
    CHECK(peak_in_flight(order) == warmup + 1);
  }
}

TEST_CASE("model::stage_order: interleaved with m == pp runs all forwards first (Megatron)", "[ir]") {
  const auto order = stage_order(Schedule::Interleaved, 4, 3, 4, 2);
  check_complete(order, 4, 2);
  CHECK(peak_in_flight(order) == 8);
}

TEST_CASE("model::stage_order: interleaved needs m divisible by pp", "[ir]") {
  REQUIRE_THROWS_AS(stage_order(Schedule::Interleaved, 4, 0, 6, 2), cuboid::InfeasibleError);
  REQUIRE_THROWS_WITH(stage_order(Schedule::Interleaved, 4, 0, 6, 2),
                      Catch::Contains("micro-batches (6) is not divisible by pp (4)"));
}

TEST_CASE("model::effective_schedule maps vp to the interleaved schedule", "[ir]") {
  Plan plan;
  plan.schedule = Schedule::OneFOneB;
  plan.vp = 2;
  CHECK(effective_schedule(plan) == Schedule::Interleaved);
  plan.schedule = Schedule::Interleaved;
  plan.vp = 1;
  CHECK(effective_schedule(plan) == Schedule::OneFOneB);
  plan.schedule = Schedule::GPipe;
  CHECK(effective_schedule(plan) == Schedule::GPipe);
}

TEST_CASE("model::chunk_layouts: Megatron interleaved layer assignment", "[ir]") {
  // L = 8, pp = 2, vp = 2 (Lc = 2): stage 0 holds {L0 L1} and {L4 L5}; stage 1 {L2 L3} and {L6 L7}.
  Plan plan;
  plan.pp = 2;
  plan.vp = 2;
  const auto stage0 = chunk_layouts(plan, 8, 0);
  const auto stage1 = chunk_layouts(plan, 8, 1);
  CHECK(stage0[0].first_layer == 0);
  CHECK(stage0[1].first_layer == 4);
  CHECK(stage1[0].first_layer == 2);
  CHECK(stage1[1].first_layer == 6);
  CHECK(stage0[0].has_embedding);
  CHECK_FALSE(stage0[1].has_embedding);
  CHECK(stage1[1].has_head);
  CHECK_FALSE(stage1[0].has_head);
  REQUIRE_THROWS_AS(chunk_layouts(plan, 6, 0), cuboid::InfeasibleError);
}

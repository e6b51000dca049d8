// Single-process runtime tests: training makes progress, recompute does not change the numbers, shards initialise
// to the full model's values, and bad options are rejected with a message.
#include "test_models.hpp"

#include "exec/gpt_model.hpp"
#include "exec/local_communicator.hpp"
#include "exec/runtime.hpp"
#include "model/errors.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <string>

namespace cuboid::exec {
namespace {

RunOptions tiny_options(int steps) {
  RunOptions options;
  options.model = test::gpt_tiny_shape();
  options.plan = test::single_rank_plan(2, 8);
  options.cluster.num_gpus = 1;
  options.cluster.gpus_per_node = 1;
  options.steps = steps;
  options.optimizer.lr = 1e-3f;
  return options;
}

// The synthetic stream follows a bigram rule 75% of the time, so a model that learns it beats ln(V) = 6.24 nats;
// 50 AdamW steps at lr 1e-3 must bring the loss clearly down (by more than 1 nat) from its start near ln(V).
TEST_CASE("exec::run_training: the loss decreases over 50 steps on gpt-tiny", "[exec][slow]") {
  LocalCommunicator world;
  const RunResult result = run_training(tiny_options(50), world);
  REQUIRE(result.losses.size() == 50);
  CHECK_THAT(result.losses.front(), Catch::Matchers::WithinAbs(std::log(512.0), 0.2));
  CHECK(result.losses.back() < result.losses.front() - 1.0);
  CHECK(result.median_step_time_s > 0.0);
}

TEST_CASE("exec::Trainer: recompute modes give the same losses", "[exec]") {
  // Recomputation re-runs the same fp32 ops on the same inputs, so the results are identical (same op order).
  RunOptions options = tiny_options(2);
  options.model = test::toy_gpt();
  options.plan = test::single_rank_plan(2, 4);
  LocalCommunicator world;
  const RunResult none = run_training(options, world);
  for (const auto mode : {model::Recompute::Selective, model::Recompute::Full}) {
    options.plan.recompute = mode;
    const RunResult other = run_training(options, world);
    CHECK(other.losses == none.losses);
  }
}

TEST_CASE("exec::Trainer: micro-batch size does not change the step", "[exec]") {
  // Every micro-batch has T*B tokens, so the mean of micro-batch means is the global mean: the same loss whatever
  // the split (up to the fp32 summation order).
  RunOptions options = tiny_options(3);
  options.model = test::toy_llama();
  options.plan = test::single_rank_plan(1, 4);
  LocalCommunicator world;
  const RunResult one = run_training(options, world);
  options.plan.micro_batch_size = 4;
  const RunResult four = run_training(options, world);
  for (std::size_t step = 0; step < one.losses.size(); ++step) {
    CHECK_THAT(four.losses[step], Catch::Matchers::WithinRel(one.losses[step], 1e-5));
  }
}

TEST_CASE("exec::Trainer: the lowered IR and the internal schedule compute the same step", "[exec]") {
  // Same instructions in the same order on one rank, so the same bits.
  RunOptions options = tiny_options(2);
  options.model = test::toy_gpt();
  options.plan = test::single_rank_plan(1, 3);
  LocalCommunicator world;
  const RunResult ir = run_training(options, world);
  options.program_source = ProgramSource::Internal;
  const RunResult internal = run_training(options, world);
  CHECK(ir.losses == internal.losses);
}

TEST_CASE("exec::GptModel: TP shards hold the full model's values", "[exec]") {
  model::Plan full_plan = test::single_rank_plan(1, 1);
  const model::ModelSpec spec = test::toy_gpt();
  const GptModel full(spec, full_plan, 0, 0, 11);
  model::Plan split = full_plan;
  split.tp = 2;
  for (int tp_rank = 0; tp_rank < 2; ++tp_rank) {
    const GptModel shard(spec, split, tp_rank, 0, 11);
    for (const ParamInfo& info : shard.params().infos()) {
      const int idx = full.params().find(info.name);
      REQUIRE(idx >= 0);
      const ParamInfo& whole = full.params().info(idx);
      const float* values = shard.params().value(shard.params().find(info.name));
      for (std::int64_t r = 0; r < info.rows; ++r) {
        for (std::int64_t c = 0; c < info.cols; ++c) {
          const float expected = full.params().value(idx)[(info.row0 + r) * whole.cols + info.col0 + c];
          REQUIRE(values[r * info.cols + c] == expected);
        }
      }
    }
  }
}

TEST_CASE("exec::Trainer: bad options are rejected", "[exec]") {
  LocalCommunicator world;
  RunOptions options = tiny_options(1);
  SECTION("world size") {
    options.plan.dp = 2;
    REQUIRE_THROWS_WITH(Trainer(options, world), Catch::Matchers::Contains("tp*pp*dp = 1*1*2 = 2 but 1 ranks"));
  }
  SECTION("heads not divisible by tp") {
    options.plan.tp = 3;
    REQUIRE_THROWS_AS(Trainer(options, world), InputError);
  }
}

// --- mixture of experts --- What `cuboid run` does not execute of a MoE model is refused naming the flag, the
// value and what runs; dense models pass whatever their plan.
TEST_CASE("exec::validate_moe_run: unsupported MoE combinations are refused", "[exec]") {
  model::ModelSpec moe = test::moe_tiny_shape();
  model::Plan plan = test::single_rank_plan(1, 8);
  CHECK_NOTHROW(validate_moe_run(moe, plan, ProgramSource::TaskGraph));
  SECTION("tensor parallelism") {
    plan.tp = 2;
    REQUIRE_THROWS_AS(validate_moe_run(moe, plan, ProgramSource::TaskGraph), InputError);
    REQUIRE_THROWS_WITH(validate_moe_run(moe, plan, ProgramSource::TaskGraph),
                        Catch::Matchers::Contains("--tp: 2") && Catch::Matchers::Contains("valid: --tp 1"));
    CHECK_NOTHROW(validate_moe_run(test::gpt_tiny_shape(), plan, ProgramSource::TaskGraph));
  }
  SECTION("shared experts") {
    moe.num_shared_experts = 1;
    REQUIRE_THROWS_WITH(validate_moe_run(moe, plan, ProgramSource::TaskGraph),
                        Catch::Matchers::Contains("num_shared_experts = 1") && Catch::Matchers::Contains("valid:"));
  }
  SECTION("internal program") {
    REQUIRE_THROWS_WITH(validate_moe_run(moe, plan, ProgramSource::Internal),
                        Catch::Matchers::Contains("program: internal") && Catch::Matchers::Contains("TaskGraph"));
  }
}

// A single-rank MoE run trains (the loss falls over 3 steps at lr 1e-3 from near ln(V)) and its router choices never
// tie exactly.
TEST_CASE("exec::Trainer: a single-rank MoE model trains", "[exec]") {
  LocalCommunicator world;
  RunOptions options = tiny_options(3);
  options.model = test::moe_tiny_shape();
  Trainer trainer(options, world);
  const double first = trainer.step();
  trainer.step();
  const double third = trainer.step();
  CHECK(std::isfinite(first));
  CHECK(third < first);
  CHECK(trainer.min_router_margin() > 0.0);
  CHECK(trainer.gather_routing_fingerprint() != 0);
}

TEST_CASE("exec::Trainer: trace has one event per instruction (but Free)", "[exec]") {
  RunOptions options = tiny_options(2);
  options.model = test::toy_gpt();
  options.plan = test::single_rank_plan(1, 2);
  options.trace = true;
  LocalCommunicator world;
  const RunResult result = run_training(options, world);
  Trainer trainer(options, world);
  const auto& instrs = trainer.program().instrs;
  const auto frees = std::count_if(instrs.begin(), instrs.end(), [](const Instr& i) { return i.kind == InstrKind::Free; });
  REQUIRE(result.timeline.size() == instrs.size() - static_cast<std::size_t>(frees));
  for (const auto& event : result.timeline) {
    CHECK(event.end_s >= event.start_s);
    CHECK(event.rank == 0);
  }
}


// A NaN loss must stop the run at the step where it appears, naming rank, step and the head task that computed it
// (issue 8 point 6). The injected fault poisons the first forward activation of step 2 with NaN, which propagates.
TEST_CASE("exec::Trainer: a NaN loss stops the run naming rank, step and task", "[exec]") {
  RunOptions options = tiny_options(3);
  options.model = test::toy_gpt();
  options.plan = test::single_rank_plan(1, 2);
  options.fault_rank = 0;
  options.fault_step = 2;
  options.fault_kind = FaultKind::NanLoss;
  LocalCommunicator world;
  Trainer trainer(options, world);
  CHECK(std::isfinite(trainer.step()));
  try {
    (void)trainer.step();
    FAIL("step 2 should have thrown");
  } catch (const RunError& e) {
    const std::string what = e.what();
    CHECK_THAT(what, Catch::Matchers::StartsWith("rank 0: step 2: task "));
    CHECK_THAT(what, Catch::Matchers::Contains("loss is nan"));
  }
}

} // namespace
} // namespace cuboid::exec

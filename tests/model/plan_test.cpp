// Plan names, the pipeline layer split (even and Megatron's first/last overrides) and plan validation.
#include "model/errors.hpp"
#include "model/hardware_catalog.hpp"
#include "model/model_catalog.hpp"
#include "model/plan.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

using cuboid::InfeasibleError;
using cuboid::InputError;
using namespace cuboid::model;
using Catch::Matchers::Contains;

TEST_CASE("model::Plan names round-trip; bad text gets valid values and did-you-mean", "[spec]") {
  for (const Schedule schedule :
       {Schedule::GPipe, Schedule::OneFOneB, Schedule::Interleaved, Schedule::ZbH1, Schedule::ZbV}) {
    REQUIRE(parse_schedule(to_string(schedule), "t") == schedule);
  }
  for (const Recompute recompute : {Recompute::None, Recompute::Selective, Recompute::Full}) {
    REQUIRE(parse_recompute(to_string(recompute), "t") == recompute);
  }
  for (const Precision precision : {Precision::Bf16, Precision::Fp16, Precision::Fp8}) {
    REQUIRE(parse_precision(to_string(precision), "t") == precision);
  }
  REQUIRE(to_string(Schedule::OneFOneB) == "1f1b");
  REQUIRE_THROWS_AS(parse_schedule("1f1f", "command line: --schedule"), InputError);
  REQUIRE_THROWS_WITH(parse_schedule("1f1f", "command line: --schedule"),
                      "command line: --schedule: '1f1f' is not a valid schedule (valid: gpipe, 1f1b, interleaved, "
                      "zb-h1, zb-v; did you mean '1f1b'?)");
  REQUIRE_THROWS_WITH(parse_recompute("ful", "s.yaml: plan.recompute"), Contains("did you mean 'full'?"));
  REQUIRE_THROWS_WITH(parse_precision("fp32", "s.yaml: plan.precision"), Contains("'fp32'") && Contains("bf16"));
}

TEST_CASE("model::layers_per_stage: even, uneven and interleaved splits", "[spec]") {
  Plan plan;
  SECTION("even split") {
    plan.pp = 4;
    REQUIRE(layers_per_stage(plan, 32) == std::vector<int>(4, 8));
    plan.pp = 1;
    REQUIRE(layers_per_stage(plan, 7) == std::vector<int>{7});
  }
  SECTION("Llama 3.1 405B: 126 layers, pp=16, first=7, last=7 -> 14 middle stages of 8") {
    plan.pp = 16;
    plan.first_stage_layers = 7;
    plan.last_stage_layers = 7;
    std::vector<int> expected(16, 8);
    expected.front() = 7;
    expected.back() = 7;
    REQUIRE(layers_per_stage(plan, 126) == expected);
  }
  SECTION("only the last stage overridden") {
    plan.pp = 4;
    plan.last_stage_layers = 2;
    REQUIRE(layers_per_stage(plan, 32) == std::vector<int>{10, 10, 10, 2});
  }
  SECTION("pp=2 with both overrides: no middle stage") {
    plan.pp = 2;
    plan.first_stage_layers = 3;
    plan.last_stage_layers = 1;
    REQUIRE(layers_per_stage(plan, 4) == std::vector<int>{3, 1});
    REQUIRE_THROWS_AS(layers_per_stage(plan, 5), InfeasibleError);
  }
  SECTION("interleaving: per-stage layers divide by vp") {
    plan.pp = 2;
    plan.vp = 2;
    REQUIRE(layers_per_stage(plan, 8) == std::vector<int>{4, 4});
    REQUIRE_THROWS_WITH(layers_per_stage(plan, 6, "s.yaml"),
                        Contains("s.yaml: plan.vp: 2 does not divide the 3 layers of pipeline stage 0"));
  }
  SECTION("uneven without overrides is infeasible, with the valid pp values") {
    plan.pp = 5;
    REQUIRE_THROWS_AS(layers_per_stage(plan, 32), InfeasibleError);
    REQUIRE_THROWS_WITH(layers_per_stage(plan, 32),
                        Contains("plan.pp: 5 does not divide num_layers = 32 (valid pp: 1, 2, 4, 8, 16, 32"));
  }
  SECTION("overrides that leave an uneven middle") {
    plan.pp = 4;
    plan.first_stage_layers = 3;
    REQUIRE_THROWS_WITH(layers_per_stage(plan, 32), Contains("leave 29 of num_layers = 32 for 3 middle stages"));
  }
}

TEST_CASE("model::validate(Plan): feasible plans pass, each rule names field and value", "[spec]") {
  const ModelSpec llama = find_model("llama-3.1-8b");
  const ClusterSpec cluster = make_cluster("dgx-h100", 64, 0, "test");
  Plan plan;
  plan.tp = 4;
  plan.pp = 2;
  plan.dp = 8;
  plan.micro_batch_size = 1;
  plan.global_batch_size = 128;
  REQUIRE_NOTHROW(validate(plan, llama, cluster, "s.yaml"));
  SECTION("tp*pp*dp != num_gpus") {
    plan.dp = 6;
    REQUIRE_THROWS_AS(validate(plan, llama, cluster, "s.yaml"), InfeasibleError);
    REQUIRE_THROWS_WITH(validate(plan, llama, cluster, "s.yaml"), Contains("tp*pp*dp = 4*2*6 = 48 != num_gpus = 64"));
  }
  SECTION("tp must divide the query groups (8 KV heads)") {
    plan.tp = 16;
    plan.dp = 2;
    REQUIRE_THROWS_WITH(validate(plan, llama, cluster, "s.yaml"),
                        Contains("plan.tp: 16 does not divide num_query_groups = 8 (valid tp: 1, 2, 4, 8)"));
  }
  SECTION("global batch not divisible by micro*dp") {
    plan.global_batch_size = 100;
    plan.micro_batch_size = 2;
    REQUIRE_THROWS_WITH(validate(plan, llama, cluster, "s.yaml"),
                        Contains("plan.global_batch_size: 100 is not divisible by micro_batch_size*dp = 2*8 = 16"));
  }
  SECTION("vp > 1 needs the interleaved schedule, and interleaved needs micro-batches % pp == 0") {
    plan.vp = 2;
    REQUIRE_THROWS_AS(validate(plan, llama, cluster, "s.yaml"), InputError);
    plan.schedule = Schedule::Interleaved;
    REQUIRE_NOTHROW(validate(plan, llama, cluster, "s.yaml"));
    plan.global_batch_size = 8 * 3; // 3 micro-batches per replica, pp = 2
    REQUIRE_THROWS_WITH(validate(plan, llama, cluster, "s.yaml"), Contains("3 micro-batches per replica"));
    plan.vp = 1;
    REQUIRE_THROWS_WITH(validate(plan, llama, cluster, "s.yaml"), Contains("plan.schedule: interleaved needs vp > 1"));
  }
  SECTION("sequence parallelism with tp=1 is allowed (a no-op in Megatron)") {
    plan.tp = 1;
    plan.dp = 32;
    plan.sequence_parallel = true;
    REQUIRE_NOTHROW(validate(plan, llama, cluster, "s.yaml"));
  }
  SECTION("fp8 needs FP8 tensor cores") {
    plan.precision = Precision::Fp8;
    REQUIRE_NOTHROW(validate(plan, llama, cluster, "s.yaml"));
    const ClusterSpec a100 = make_cluster("dgx-a100", 64, 0, "test");
    REQUIRE_THROWS_AS(validate(plan, llama, a100, "s.yaml"), InfeasibleError);
    REQUIRE_THROWS_WITH(validate(plan, llama, a100, "s.yaml"),
                        Contains("plan.precision: fp8 is not supported by a100-80gb"));
  }
  SECTION("non-positive sizes are input errors") {
    plan.micro_batch_size = 0;
    REQUIRE_THROWS_AS(validate(plan, llama, cluster, "s.yaml"), InputError);
    REQUIRE_THROWS_WITH(validate(plan, llama, cluster, "s.yaml"), Contains("s.yaml: plan.micro_batch_size: 0"));
  }
}

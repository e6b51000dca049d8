// Megatron-Core's --account-for-embedding-in-pipeline-split / --account-for-loss-in-pipeline-split
// (model/plan.hpp pipeline_slot_layers): the embedding and/or the loss count as one layer slot each, the slots split
// evenly over the pp * vp virtual stages. Layer counts, chunk layouts (with the embedding on virtual stage 0 and the
// loss on the last), Megatron's refusals, the YAML keys and the parameters the memory model puts on each stage.
#include "ir_fixtures.hpp"

#include "model/errors.hpp"
#include "model/memory_model.hpp"
#include "model/model_catalog.hpp"
#include "model/plan.hpp"
#include "model/scenario.hpp"
#include "model/schedule.hpp"

#include <catch2/catch.hpp>
#include <yaml-cpp/yaml.h>

#include <vector>

using cuboid::InfeasibleError;
using namespace cuboid::model;
using namespace cuboid::model::testing;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {
Plan split_plan(int pp, int vp, bool embedding, bool loss, Schedule schedule = Schedule::Interleaved) {
  Plan plan;
  plan.pp = pp;
  plan.vp = vp;
  plan.schedule = vp == 1 ? Schedule::OneFOneB : schedule;
  plan.account_for_embedding_in_pipeline_split = embedding;
  plan.account_for_loss_in_pipeline_split = loss;
  return plan;
}

// Every virtual stage in model order: its layers follow the previous one's, they cover 0 .. L-1 once, the embedding
// is on virtual stage 0 only and the head on the last only.
void check_contiguous(const Plan& plan, std::int64_t num_layers) {
  int next_layer = 0;
  for (int virtual_stage = 0; virtual_stage < plan.pp * plan.vp; ++virtual_stage) {
    const StageChunk at = locate_virtual_stage(plan, virtual_stage);
    const ChunkLayout lay = chunk_layouts(plan, num_layers, at.stage)[static_cast<std::size_t>(at.chunk)];
    INFO("virtual stage " << virtual_stage);
    CHECK(lay.first_layer == next_layer);
    CHECK(lay.num_layers >= 1);
    CHECK(lay.has_embedding == (virtual_stage == 0));
    CHECK(lay.has_head == (virtual_stage == plan.pp * plan.vp - 1));
    next_layer = lay.first_layer + lay.num_layers;
  }
  CHECK(next_layer == num_layers);
}
} // namespace

TEST_CASE("model::chunk_layouts: Llama 3.1 405B, pp 8, vp 8, embedding and loss in the pipeline split", "[spec]") {
  // 126 layers + embedding + loss = 128 slots, 2 per virtual stage: virtual stage 0 = embedding + layer 0, virtual
  // stage 63 = layer 125 + loss, every other one 2 layers. Stage 0 holds virtual stages 0, 8, ..., 56 (1 + 7 * 2 = 15
  // layers), stage 7 holds 7, 15, ..., 63 (7 * 2 + 1 = 15), the others 16 (Megatron-Bridge llama31_405b).
  const Plan plan = split_plan(8, 8, true, true);
  REQUIRE(layers_per_stage(plan, 126) == std::vector<int>{15, 16, 16, 16, 16, 16, 16, 15});
  const std::vector<ChunkLayout> first = chunk_layouts(plan, 126, 0);
  REQUIRE(first.size() == 8);
  CHECK(first[0].first_layer == 0);
  CHECK(first[0].num_layers == 1);
  CHECK(first[0].has_embedding);
  CHECK_FALSE(first[0].has_head);
  // Chunk 1 of stage 0 is virtual stage 8: slots 16, 17 = layers 15, 16.
  CHECK(first[1].first_layer == 15);
  CHECK(first[1].num_layers == 2);
  CHECK_FALSE(first[1].has_embedding);
  const std::vector<ChunkLayout> last = chunk_layouts(plan, 126, 7);
  CHECK(last[7].first_layer == 125);
  CHECK(last[7].num_layers == 1);
  CHECK(last[7].has_head);
  CHECK_FALSE(last[7].has_embedding);
  CHECK(last[6].num_layers == 2);
  CHECK_FALSE(last[6].has_head);
  check_contiguous(plan, 126);
  // Without the flags the same plan is refused: 126 / 8 is no integer.
  REQUIRE_THROWS_AS(layers_per_stage(split_plan(8, 8, false, false), 126), InfeasibleError);
}

TEST_CASE("model::layers_per_stage: embedding only, loss only, vp 1, pp 1, zb-v", "[spec]") {
  SECTION("embedding only: L = 7, pp = 4 -> 8 slots, 2 each: {E L0} {L1 L2} {L3 L4} {L5 L6}") {
    const Plan plan = split_plan(4, 1, true, false);
    REQUIRE(layers_per_stage(plan, 7) == std::vector<int>{1, 2, 2, 2});
    CHECK(chunk_layouts(plan, 7, 3)[0].first_layer == 5);
    check_contiguous(plan, 7);
  }
  SECTION("loss only: L = 7, pp = 4 -> {L0 L1} {L2 L3} {L4 L5} {L6 loss}") {
    const Plan plan = split_plan(4, 1, false, true);
    REQUIRE(layers_per_stage(plan, 7) == std::vector<int>{2, 2, 2, 1});
    check_contiguous(plan, 7);
  }
  SECTION("both, vp = 1: L = 6, pp = 2 -> {E L0 L1 L2} {L3 L4 L5 loss}") {
    const Plan plan = split_plan(2, 1, true, true);
    REQUIRE(layers_per_stage(plan, 6) == std::vector<int>{3, 3});
    check_contiguous(plan, 6);
  }
  SECTION("both, pp = 2, vp = 2: L = 6 -> stage 0 {E L0} {L3 L4}, stage 1 {L1 L2} {L5 loss}") {
    const Plan plan = split_plan(2, 2, true, true);
    REQUIRE(layers_per_stage(plan, 6) == std::vector<int>{3, 3});
    const std::vector<ChunkLayout> stage0 = chunk_layouts(plan, 6, 0);
    CHECK(stage0[1].first_layer == 3);
    CHECK(stage0[1].num_layers == 2);
    check_contiguous(plan, 6);
  }
  SECTION("pp = 1: a no-op, one chunk with every layer, the embedding and the loss") {
    const Plan plan = split_plan(1, 1, true, true);
    REQUIRE(layers_per_stage(plan, 5) == std::vector<int>{5});
    check_contiguous(plan, 5);
  }
  SECTION("zb-v: the V order, L = 6, pp = 2 -> stage 0 {E L0} and {L5 loss}, stage 1 {L1 L2} and {L3 L4}") {
    const Plan plan = split_plan(2, 2, true, true, Schedule::ZbV);
    REQUIRE(layers_per_stage(plan, 6) == std::vector<int>{2, 4});
    const std::vector<ChunkLayout> stage0 = chunk_layouts(plan, 6, 0);
    CHECK(stage0[0].has_embedding);
    CHECK(stage0[1].first_layer == 5);
    CHECK(stage0[1].has_head);
    check_contiguous(plan, 6);
  }
}

TEST_CASE("model::validate: the embedding/loss-aware split refuses what Megatron-Core refuses", "[spec]") {
  // Megatron-Core TransformerConfig.__post_init__: not with num_layers_in_first/last_pipeline_stage; the slots must
  // divide by pp and the slots per stage by vp. cuboid also refuses a chunk without a transformer layer.
  const ModelSpec spec = gpt_model(6, 256, 4, 128, 1024);
  const auto check = [&spec](Plan plan, const char* field, const char* text) {
    plan.global_batch_size = plan.pp * 4;
    const ClusterSpec cluster = test_cluster(plan.world_size());
    REQUIRE_THROWS_AS(validate(plan, spec, cluster, "s.yaml"), InfeasibleError);
    REQUIRE_THROWS_WITH(validate(plan, spec, cluster, "s.yaml"), Contains(field) && Contains(text));
  };
  SECTION("with first/last stage overrides") {
    Plan plan = split_plan(2, 1, true, false);
    plan.first_stage_layers = 3;
    plan.last_stage_layers = 3;
    check(plan, "s.yaml: plan.account_for_embedding_in_pipeline_split",
          "cannot be combined with first_stage_layers / last_stage_layers (3 / 3)");
    plan.account_for_embedding_in_pipeline_split = false;
    plan.account_for_loss_in_pipeline_split = true;
    check(plan, "plan.account_for_loss_in_pipeline_split", "first_stage_layers");
  }
  SECTION("slots not divisible by pp: 6 + 1 = 7 over pp = 2") {
    check(split_plan(2, 1, true, false), "s.yaml: plan.pp",
          "2 does not divide the 7 layer slots (num_layers = 6 + 1 embedding)");
  }
  SECTION("slots per stage not divisible by vp: 8 slots, pp = 2 -> 4 per stage, vp = 3") {
    check(split_plan(2, 3, true, true), "s.yaml: plan.vp", "3 does not divide the 4 layer slots of each pipeline stage");
  }
  SECTION("a chunk with the embedding and no layer: 8 slots over pp 4 x vp 2") {
    check(split_plan(4, 2, true, true), "plan.account_for_embedding_in_pipeline_split",
          "leaves the first model chunk with the embedding and no transformer layer");
  }
  SECTION("a chunk with the loss and no layer: 7 slots over pp 7") {
    check(split_plan(7, 1, false, true), "plan.account_for_loss_in_pipeline_split",
          "leaves the last model chunk with the loss and no transformer layer");
  }
  SECTION("a valid plan passes") {
    Plan plan = split_plan(2, 2, true, true);
    plan.global_batch_size = 8;
    REQUIRE_NOTHROW(validate(plan, spec, test_cluster(2), "s.yaml"));
  }
}

TEST_CASE("model::load_plan_yaml: account_for_embedding/loss_in_pipeline_split keys", "[spec]") {
  const Plan plan = load_plan_yaml(YAML::Load("{pp: 2, global_batch_size: 8, account_for_embedding_in_pipeline_split: "
                                              "true, account_for_loss_in_pipeline_split: true}"),
                                   "s.yaml", "plan", 2);
  CHECK(plan.account_for_embedding_in_pipeline_split);
  CHECK(plan.account_for_loss_in_pipeline_split);
  const Plan plain = load_plan_yaml(YAML::Load("{pp: 2, global_batch_size: 8}"), "s.yaml", "plan", 2);
  CHECK_FALSE(plain.accounts_in_pipeline_split());
  REQUIRE_THROWS_WITH(load_plan_yaml(YAML::Load("{global_batch_size: 8, account_for_loss_in_pipeline: true}"),
                                     "s.yaml", "plan", 2),
                      Contains("unknown key 'account_for_loss_in_pipeline'") &&
                          Contains("did you mean 'account_for_loss_in_pipeline_split'?"));
  REQUIRE_THROWS_WITH(load_plan_yaml(YAML::Load("{global_batch_size: 8, account_for_loss_in_pipeline_split: 3}"),
                                     "s.yaml", "plan", 2),
                      Contains("plan.account_for_loss_in_pipeline_split"));
}

// --- context parallelism --- plan.cp_comm_type: Megatron's names; default p2p; a bad value names file, key, valid.
TEST_CASE("model::load_plan_yaml: cp_comm_type", "[spec][cp]") {
  const Plan plan = load_plan_yaml(YAML::Load("{cp: 2, cp_comm_type: a2a, global_batch_size: 8}"), "s.yaml", "plan", 2);
  CHECK(plan.cp_comm_type == CpCommType::A2A);
  CHECK(load_plan_yaml(YAML::Load("{cp: 2, global_batch_size: 8}"), "s.yaml", "plan", 2).cp_comm_type ==
        CpCommType::P2P);
  REQUIRE_THROWS_WITH(load_plan_yaml(YAML::Load("{cp: 2, cp_comm_type: ring, global_batch_size: 8}"), "s.yaml",
                                     "plan", 2),
                      Contains("s.yaml") && Contains("plan.cp_comm_type") && Contains("'ring'") &&
                          Contains("allgather"));
}

// The communication-overlap keys (Plan::overlap_param_gather, tp_comm_overlap, async_tp_grad_reduce) parse as bools.
TEST_CASE("model::load_plan_yaml: communication overlap keys", "[spec]") {
  const Plan plan = load_plan_yaml(YAML::Load("{tp: 2, global_batch_size: 8, overlap_param_gather: true, "
                                              "tp_comm_overlap: true, async_tp_grad_reduce: true}"),
                                   "s.yaml", "plan", 2);
  CHECK(plan.overlap_param_gather);
  CHECK(plan.tp_comm_overlap);
  CHECK(plan.async_tp_grad_reduce);
  const Plan plain = load_plan_yaml(YAML::Load("{tp: 2, global_batch_size: 8}"), "s.yaml", "plan", 2);
  CHECK_FALSE(plain.async_tp_grad_reduce);
  REQUIRE_THROWS_WITH(load_plan_yaml(YAML::Load("{global_batch_size: 8, async_tp_grad_reduce: maybe}"), "s.yaml",
                                     "plan", 2),
                      Contains("plan.async_tp_grad_reduce"));
}

TEST_CASE("model::params_per_rank: the embedding and the output layer stay on the stages holding them", "[ir]") {
  // Llama 3.1 405B, tp 8, pp 8, vp 8, both flags: stage 0 holds 15 layers and the embedding, stage 7 15 layers and
  // the final norm + output layer, stages 1-6 16 layers and neither.
  const ModelSpec spec = find_model("llama-3.1-405b");
  Plan plan = split_plan(8, 8, true, true);
  plan.tp = 8;
  const double layer = layer_params_per_tp_rank(spec, 8);
  const double embedding = embedding_params_per_rank(spec, plan);
  const double head = head_params_per_rank(spec, plan, false);
  CHECK_THAT(params_per_rank(spec, plan, 0), WithinRel(15.0 * layer + embedding, 1e-12));
  CHECK_THAT(params_per_rank(spec, plan, 3), WithinRel(16.0 * layer, 1e-12));
  CHECK_THAT(params_per_rank(spec, plan, 7), WithinRel(15.0 * layer + head, 1e-12));
}

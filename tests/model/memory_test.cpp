// Memory model (model/memory_model.hpp): activations per layer against Korthikanti et al. 2022 Table 2 for GPT-3
// 175B, static bytes per parameter (18, or 6 + 12/dp with the distributed optimizer), parameter placement.
#include "ir_fixtures.hpp"

#include "model/memory_model.hpp"

#include <catch2/catch.hpp>

using namespace cuboid::model;
using namespace cuboid::model::testing;
using Catch::Matchers::WithinRel;

namespace {
constexpr double EXACT = 1e-12;
double total(const MemBytes& bytes, std::initializer_list<MemTag> tags) {
  double sum = 0.0;
  for (const MemTag tag : tags) {
    sum += bytes[static_cast<std::size_t>(tag)];
  }
  return sum;
}
} // namespace

TEST_CASE("model::layer_activation_bytes: Korthikanti et al. 2022 Table 2 for GPT-3 175B", "[ir]") {
  // GPT-3 175B, s = 2048, b = 1, h = 12288, a = 96, t = 8: sbh = 25,165,824 and 5as/(ht) = 10, so
  //   TP only:            sbh (10 + 24/8 + 10)  = 23    sbh = 578,813,952 B
  //   TP + SP:            sbh (34/8 + 10)       = 14.25 sbh = 358,612,992 B
  //   TP + selective:     sbh (10 + 24/8)       = 13    sbh = 327,155,712 B
  //   TP + SP + selective sbh 34/8              = 4.25  sbh = 106,954,752 B
  //   full recompute:     2 sbh = 50,331,648 B (with SP: / 8 = 6,291,456 B)
  //   no TP (t = 1):      sbh (34 + 5as/h) = sbh (34 + 80) = 2,868,903,936 B
  // with flash attention (the default) the 5as/(ht) term is not stored.
  const ModelSpec spec = gpt3_175b();
  Plan plan = make_plan(8, 1, 1, 1);
  const MemoryOptions paper{.flash_attention = false};
  CHECK_THAT(layer_activation_bytes(spec, plan, paper), WithinRel(578'813'952.0, EXACT));
  CHECK_THAT(layer_activation_bytes(spec, plan), WithinRel(13.0 * 25'165'824.0, EXACT));
  plan.sequence_parallel = true;
  CHECK_THAT(layer_activation_bytes(spec, plan, paper), WithinRel(358'612'992.0, EXACT));
  CHECK_THAT(layer_activation_bytes(spec, plan), WithinRel(106'954'752.0, EXACT));
  plan.recompute = Recompute::Selective;
  CHECK_THAT(layer_activation_bytes(spec, plan, paper), WithinRel(106'954'752.0, EXACT));
  plan.sequence_parallel = false;
  CHECK_THAT(layer_activation_bytes(spec, plan, paper), WithinRel(327'155'712.0, EXACT));
  plan.recompute = Recompute::Full;
  CHECK_THAT(layer_activation_bytes(spec, plan, paper), WithinRel(50'331'648.0, EXACT));
  plan.sequence_parallel = true;
  CHECK_THAT(layer_activation_bytes(spec, plan, paper), WithinRel(6'291'456.0, EXACT));
  const Plan no_tp = make_plan(1, 1, 1, 1);
  CHECK_THAT(layer_activation_bytes(spec, no_tp, paper), WithinRel(2'868'903'936.0, EXACT));
}

TEST_CASE("model::layer_activation_bytes: GQA and gated MLPs", "[ir]") {
  // Llama-like layer, t = 1, flash: 10 Th replicated + 2T (2q + 2kv + 2F + F) sharded bytes.
  const ModelSpec spec = llama_model(1, 4096, 32, 8, 14336, 4096);
  const Plan plan = make_plan(1, 1, 1, 1);
  const double tokens = 4096.0;
  const double expected = tokens * (10.0 * 4096 + 2.0 * (2.0 * 4096 + 2.0 * 1024 + 3.0 * 14336));
  CHECK_THAT(layer_activation_bytes(spec, plan), WithinRel(expected, EXACT));
}

TEST_CASE("model::static_memory: 18 B/param, 6 + 12/dp with the distributed optimizer", "[ir]") {
  const ModelSpec spec = gpt_model(8, 1024, 16, 1024, 32000);
  const int dp = GENERATE(1, 4, 8);
  Plan plan = make_plan(2, 2, dp, 64);
  for (int stage = 0; stage < plan.pp; ++stage) {
    const double params = params_per_rank(spec, plan, stage);
    const std::initializer_list<MemTag> state = {MemTag::Weights, MemTag::Grads, MemTag::Optimizer};
    plan.distributed_optimizer = false;
    CHECK_THAT(total(static_memory(spec, plan, stage), state), WithinRel(18.0 * params, EXACT));
    CHECK(static_bytes_per_param(plan) == 18.0);
    plan.distributed_optimizer = true;
    CHECK_THAT(total(static_memory(spec, plan, stage), state), WithinRel((6.0 + 12.0 / dp) * params, EXACT));
  }
}

TEST_CASE("model::params_per_rank: layers / tp, embedding on the first stage, output layer on the last", "[ir]") {
  // GPT, h = 1024, F = 4096, tp = 2: a layer holds 12h^2 + 13h weights and biases; per TP rank the QKV, FC1 weights
  // and biases and the proj, FC2 weights are halved, the 2 LayerNorms (4h) and the proj, FC2 biases (2h) are not.
  const ModelSpec spec = gpt_model(8, 1024, 16, 1024, 32000);
  const double h = 1024.0;
  const double layer = (12.0 * h * h + 3.0 * h + 4.0 * h) / 2.0 + 6.0 * h;
  CHECK_THAT(layer_params_per_tp_rank(spec, 2), WithinRel(layer, EXACT));
  const Plan plan = make_plan(2, 2, 1, 8);
  const double embedding = 32000.0 * h / 2.0 + 1024.0 * h;
  const double head = 2.0 * h + 32000.0 * h / 2.0;
  CHECK_THAT(params_per_rank(spec, plan, 0), WithinRel(4.0 * layer + embedding, EXACT));
  CHECK_THAT(params_per_rank(spec, plan, 1), WithinRel(4.0 * layer + head, EXACT));
  // Tied embeddings on one stage: the output layer is the embedding, counted once.
  ModelSpec tied = spec;
  tied.tied_embeddings = true;
  const Plan single = make_plan(2, 1, 1, 8);
  CHECK_THAT(params_per_rank(tied, single, 0), WithinRel(8.0 * layer + embedding + 2.0 * h, EXACT));
  // ... and on two stages Megatron's last stage keeps a copy.
  CHECK_THAT(params_per_rank(tied, plan, 1), WithinRel(4.0 * layer + head, EXACT));
}

TEST_CASE("model::head_activation_bytes: fp32 logits 4 b s V / t", "[ir]") {
  const ModelSpec spec = gpt_model(8, 1024, 16, 1024, 32000);
  Plan plan = make_plan(4, 1, 1, 2, 2);
  const double tokens = 2.0 * 1024;
  CHECK_THAT(head_activation_bytes(spec, plan), WithinRel(4.0 * tokens * 1024 + 4.0 * tokens * 32000 / 4, EXACT));
  plan.sequence_parallel = true;
  CHECK_THAT(head_activation_bytes(spec, plan), WithinRel(tokens * 1024 + 4.0 * tokens * 32000 / 4, EXACT));
}

TEST_CASE("model::layer_activation_bytes: FP8 plans save FP8 copies of the GEMM inputs (Transformer Engine)", "[ir]") {
  // GPT-3 175B, s = 2048, b = 1, h = q = 12288, F = 4h, t = 8, SP, flash: sbh = 25,165,824.
  //   bf16: sbh (10 + 2 (2 + 2 + 4 + 4)) / 8      = sbh 34/8 = 4.25 sbh
  //   fp8:  replicated 2*2 + 2*1 + 2 masks = 8 sbh / 8;
  //         sharded Q,K,V 2*3h + O 2h + O fp8 1h + FC1 out 2*4h + FC2 in fp8 1*4h = 21 sbh / 8
  //         total 29/8 = 3.625 sbh = 91,226,112 B (15 % less)
  const ModelSpec spec = gpt3_175b();
  Plan plan = make_plan(8, 1, 1, 1);
  plan.sequence_parallel = true;
  CHECK_THAT(layer_activation_bytes(spec, plan), WithinRel(4.25 * 25'165'824.0, EXACT));
  plan.precision = Precision::Fp8;
  CHECK_THAT(layer_activation_bytes(spec, plan), WithinRel(3.625 * 25'165'824.0, EXACT));
}

TEST_CASE("model::static_memory: DeepSpeed's BF16 optimizer also keeps the bf16 gradients", "[ir]") {
  // Plan::all_reduce_sharded_grads (Megatron-DeepSpeed): 2 bf16 params + 4 fp32 grads + 2 bf16 grads + 12/dp.
  const ModelSpec spec = gpt3_175b();
  Plan plan = make_plan(8, 4, 4, 64);
  plan.distributed_optimizer = true;
  const double psi = params_per_rank(spec, plan, 0);
  CHECK_THAT(static_bytes_per_param(plan), WithinRel(6.0 + 12.0 / 4.0, EXACT));
  CHECK_THAT(total(static_memory(spec, plan, 0), {MemTag::Grads}), WithinRel(4.0 * psi, EXACT));
  plan.all_reduce_sharded_grads = true;
  CHECK_THAT(static_bytes_per_param(plan), WithinRel(8.0 + 12.0 / 4.0, EXACT));
  CHECK_THAT(total(static_memory(spec, plan, 0), {MemTag::Grads}), WithinRel(6.0 * psi, EXACT));
}

// Whole-model gradient check: embedding -> layers -> head -> loss on a toy GPT and a toy Llama, for every
// recompute mode, against central finite differences of the loss in every parameter.
#include "grad_check.hpp"
#include "test_models.hpp"

#include "exec/data.hpp"
#include "exec/gpt_model.hpp"
#include "exec/init.hpp"
#include "exec/local_communicator.hpp"

namespace cuboid::exec {
namespace {

double model_loss(GptModel& gpt, Communicator& tp, const MicroBatch& mb, int num_layers) {
  cpu::Mat act;
  gpt.embedding_forward(tp, mb.inputs, act);
  for (int layer = 0; layer < num_layers; ++layer) {
    LayerCache cache;
    cpu::Mat out;
    gpt.layer_forward(tp, layer, act, out, cache, true);
    act = std::move(out);
  }
  HeadCache head;
  return gpt.head_forward(tp, act, mb.targets, head);
}

// Zeroes the gradients, then runs one micro-batch as the runtime does: forward keeping the layer caches (only the
// inputs under full recompute), head and loss, backward with loss scale 1. Returns the loss; the gradients are in
// gpt.params().grads().
double analytic_gradients(GptModel& gpt, Communicator& tp, const MicroBatch& mb, int num_layers,
                          model::Recompute recompute) {
  gpt.params().zero_grads();
  cpu::Mat act;
  gpt.embedding_forward(tp, mb.inputs, act);
  std::vector<LayerCache> caches(static_cast<std::size_t>(num_layers));
  for (int layer = 0; layer < num_layers; ++layer) {
    cpu::Mat out;
    gpt.layer_forward(tp, layer, act, out, caches[static_cast<std::size_t>(layer)],
                      recompute != model::Recompute::Full);
    act = std::move(out);
  }
  HeadCache head;
  const double loss = gpt.head_forward(tp, act, mb.targets, head);
  cpu::Mat grad;
  gpt.head_backward(tp, head, mb.targets, 1.0f, grad);
  for (int layer = num_layers - 1; layer >= 0; --layer) {
    cpu::Mat dx;
    gpt.layer_backward(tp, layer, caches[static_cast<std::size_t>(layer)], grad, dx);
    grad = std::move(dx);
  }
  gpt.embedding_backward(tp, mb.inputs, grad);
  return loss;
}

TEST_CASE("exec::GptModel: gradient check of the whole model", "[exec]") {
  const bool llama = GENERATE(false, true);
  const model::Recompute recompute = GENERATE(model::Recompute::None, model::Recompute::Selective, model::Recompute::Full);
  const model::ModelSpec spec = llama ? test::toy_llama() : test::toy_gpt();
  model::Plan plan = test::single_rank_plan(2, 2);
  plan.recompute = recompute;
  LocalCommunicator tp;
  GptModel gpt(spec, plan, 0, 0, 7);
  const TokenSource source(spec.vocab_size, spec.seq_length, 3);
  const MicroBatch mb = source.microbatch(1, 0, 2);
  const int layers = static_cast<int>(spec.num_layers);

  // Analytic: forward keeping caches as the runtime does, backward with loss scale 1.
  CHECK(analytic_gradients(gpt, tp, mb, layers, recompute) > 0.0);

  const std::vector<float> analytic(gpt.params().grads().begin(), gpt.params().grads().end());
  for (const ParamInfo& info : gpt.params().infos()) {
    const auto values = gpt.params().values().subspan(info.offset, info.size());
    const auto grads = std::span<const float>(analytic).subspan(info.offset, info.size());
    // Embedding rows are small (std 0.02) and feed a norm directly, so they need a smaller step to stay linear.
    const bool embedding = info.name.rfind("embed.", 0) == 0;
    test::check_gradient(spec.name + " " + info.name, values, grads, [&] { return model_loss(gpt, tp, mb, layers); },
                         embedding ? 1e-3f : 1e-2f, embedding ? 5e-4 : 2e-4, 3e-2);
  }
}

// --- mixture of experts ---
// The same check on the toys with a MoE layer 1 (router + 4 experts, top-2, in a group of one): the router, expert
// and dense parameters all match finite differences. The routing must not flip under the finite-difference steps:
// the toy's smallest top-k margin is checked to be far above what a step moves a logit (about step * |h2| <= 0.03).
TEST_CASE("exec::GptModel: gradient check of a mixture-of-experts model", "[exec]") {
  const bool llama = GENERATE(false, true);
  const model::Recompute recompute = GENERATE(model::Recompute::None, model::Recompute::Full);
  const model::ModelSpec spec = test::toy_moe(llama ? test::toy_llama() : test::toy_gpt());
  model::Plan plan = test::single_rank_plan(2, 2);
  plan.recompute = recompute;
  LocalCommunicator tp;
  LocalCommunicator ep;
  GptModel gpt(spec, plan, 0, 0, 7);
  gpt.set_expert_parallel(&ep);
  const TokenSource source(spec.vocab_size, spec.seq_length, 3);
  const MicroBatch mb = source.microbatch(1, 0, 2);
  const int layers = static_cast<int>(spec.num_layers);
  REQUIRE(gpt.dense_param_elements() < gpt.params().num_elements());
  // The init's router (std 0.02) gives the toy's 8 tokens near-equal logits; a router of std 2 (key chosen for
  // margins > 1 on both toys) spreads them so that finite differences do not flip choices (checked below).
  constexpr float ROUTER_STD = 2.0f;
  constexpr std::uint64_t ROUTER_KEY = 94;
  const int router = gpt.params().find("layers.1.moe.router");
  REQUIRE(router >= 0);
  const ParamInfo& router_info = gpt.params().info(router);
  for (std::size_t idx = 0; idx < router_info.size(); ++idx) {
    gpt.params().values()[router_info.offset + idx] = ROUTER_STD * static_cast<float>(standard_normal(ROUTER_KEY, idx));
  }

  CHECK(analytic_gradients(gpt, tp, mb, layers, recompute) > 0.0);
  REQUIRE(gpt.min_router_margin() > 1.0); // over every routing of the forward (and of a full recompute's)

  const std::vector<float> analytic(gpt.params().grads().begin(), gpt.params().grads().end());
  int experts = 0;
  for (const ParamInfo& info : gpt.params().infos()) {
    experts += info.expert ? 1 : 0;
    const auto values = gpt.params().values().subspan(info.offset, info.size());
    const auto grads = std::span<const float>(analytic).subspan(info.offset, info.size());
    const bool embedding = info.name.rfind("embed.", 0) == 0;
    test::check_gradient(spec.name + " " + info.name, values, grads, [&] { return model_loss(gpt, tp, mb, layers); },
                         embedding ? 1e-3f : 1e-2f, embedding ? 5e-4 : 2e-4, 3e-2);
  }
  // 4 experts of w1, w2 (+ wg for SwiGLU; + b1, b2 for GPT-style biases).
  CHECK(experts == (llama ? 12 : 16));
}

// The fingerprint the equivalence runs compare: equal for equal routings (two models of one seed), different once a
// router change sends tokens elsewhere (increments of one more forward each).
TEST_CASE("exec::GptModel: the routing fingerprint tells equal routings from different ones", "[exec]") {
  const model::ModelSpec spec = test::toy_moe(test::toy_gpt());
  const model::Plan plan = test::single_rank_plan(2, 2);
  LocalCommunicator tp;
  LocalCommunicator ep;
  GptModel a(spec, plan, 0, 0, 7);
  GptModel b(spec, plan, 0, 0, 7);
  a.set_expert_parallel(&ep);
  b.set_expert_parallel(&ep);
  const TokenSource source(spec.vocab_size, spec.seq_length, 3);
  const MicroBatch mb = source.microbatch(1, 0, 2);
  const int layers = static_cast<int>(spec.num_layers);
  (void)model_loss(a, tp, mb, layers);
  (void)model_loss(b, tp, mb, layers);
  CHECK(a.routing_fingerprint() != 0);
  CHECK(a.routing_fingerprint() == b.routing_fingerprint());
  const std::uint64_t before = b.routing_fingerprint();
  const ParamInfo& router = b.params().info(b.params().find("layers.1.moe.router"));
  for (std::size_t idx = 0; idx < router.size(); ++idx) {
    b.params().values()[router.offset + idx] = 2.0f * static_cast<float>(standard_normal(94, idx));
  }
  (void)model_loss(a, tp, mb, layers);
  (void)model_loss(b, tp, mb, layers);
  CHECK(a.routing_fingerprint() - before != b.routing_fingerprint() - before);
}

} // namespace
} // namespace cuboid::exec

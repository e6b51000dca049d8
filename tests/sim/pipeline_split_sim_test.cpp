// The embedding/loss-aware pipeline split in the simulator: Megatron-Bridge's Llama 3.1 405B pre-training plan on
// H100 (llama31_405b_pretrain_config: TP 8, PP 8, CP 2, VP 8, account_for_embedding_in_pipeline_split and
// account_for_loss_in_pipeline_split) runs with the flags and is refused without them (126 layers do not split over
// pp 8); the memory peak of stage 0 holds the embedding's weights, that of stage 7 the output layer's.
#include "model/errors.hpp"
#include "model/hardware_catalog.hpp"
#include "model/memory_model.hpp"
#include "model/model_catalog.hpp"
#include "model/step_builder.hpp"
#include "sim/analysis/result_json.hpp"
#include "sim/simulator.hpp"

#include <catch2/catch.hpp>

using namespace cuboid;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {
// 1024 H100s, tp 8 pp 8 cp 2 (dp 8), vp 8, mbs 1, gbs 512, seq 8192, sequence parallel, fp8, distributed optimizer.
model::Plan bridge_405b_plan(bool flags) {
  model::Plan plan;
  plan.tp = 8;
  plan.pp = 8;
  plan.cp = 2;
  plan.dp = 8;
  plan.vp = 8;
  plan.schedule = model::Schedule::Interleaved;
  plan.micro_batch_size = 1;
  plan.global_batch_size = 512;
  plan.sequence_parallel = true;
  plan.precision = model::Precision::Fp8;
  plan.distributed_optimizer = true;
  plan.account_for_embedding_in_pipeline_split = flags;
  plan.account_for_loss_in_pipeline_split = flags;
  return plan;
}
} // namespace

TEST_CASE("sim: Megatron-Bridge Llama 3.1 405B on 1024 H100 needs the embedding/loss-aware split", "[sim][schedule]") {
  model::ModelSpec spec = model::find_model("llama-3.1-405b");
  spec.seq_length = 8192;
  const model::ClusterSpec cluster = model::make_cluster("h100-sxm", 1024, 8, "test");
  REQUIRE_THROWS_AS(model::validate(bridge_405b_plan(false), spec, cluster, "test"), InfeasibleError);
  REQUIRE_THROWS_WITH(model::validate(bridge_405b_plan(false), spec, cluster, "test"),
                      Contains("plan.pp: 8 does not divide num_layers = 126"));

  const model::Plan plan = bridge_405b_plan(true);
  REQUIRE_NOTHROW(model::validate(plan, spec, cluster, "test"));
  const model::TaskGraph graph = model::build_step_graph(spec, cluster, plan, model::Instantiation::RankClasses);
  const model::CostModel cost(cluster, model::default_profile("h100-sxm"), plan);
  const sim::SimResult result = sim::simulate(graph, cost);
  CHECK(result.step_time_s > 0.0);
  // Megatron-Bridge trains this plan on 80 GB H100s: it must fit.
  CHECK(result.fits);

  // One rank class per stage (rank = ... + tp*cp*dp * stage). Weights are static: at any peak they are the stage's
  // parameters, 15 layers + embedding on stage 0, 16 layers on stage 3, 15 layers + output layer on stage 7.
  const int per_stage = plan.tp * plan.cp * plan.dp;
  const auto weights_at_peak = [&](int stage) {
    for (const sim::RankMemory& memory : result.memory) {
      if (memory.rank / per_stage == stage) {
        return memory.at_peak[static_cast<std::size_t>(model::MemTag::Weights)];
      }
    }
    FAIL("no rank of stage " << stage << " materialised");
    return 0.0;
  };
  const double layer = model::layer_params_per_tp_rank(spec, plan.tp);
  const double embedding = model::embedding_params_per_rank(spec, plan);
  const double head = model::head_params_per_rank(spec, plan, false);
  const double middle = weights_at_peak(3);
  REQUIRE(middle > 0.0);
  CHECK_THAT(weights_at_peak(0) / middle, WithinRel((15.0 * layer + embedding) / (16.0 * layer), 1e-9));
  CHECK_THAT(weights_at_peak(7) / middle, WithinRel((15.0 * layer + head) / (16.0 * layer), 1e-9));
  // simulate's summary names the split right after the plan line; a plan without the flags prints no such line.
  const std::string summary = sim::analysis::format_summary(graph, cost, result);
  CHECK_THAT(summary, Contains("\n# split    layers per stage 15,16,16,16,16,16,16,15 (embedding and loss each counted "
                               "as a layer: 128 slots, 2 per model chunk; virtual stage 0: embedding + 1 layer, 63: 1 "
                               "layer + loss)\n"));
  CHECK(summary.find("# split") > summary.find("# plan"));
  model::Plan even = plan;
  even.account_for_embedding_in_pipeline_split = false;
  even.account_for_loss_in_pipeline_split = false;
  even.pp = 2;
  even.vp = 1;
  even.dp = 32;
  even.schedule = model::Schedule::OneFOneB;
  const model::TaskGraph even_graph = model::build_step_graph(spec, cluster, even, model::Instantiation::RankClasses);
  const model::CostModel even_cost(cluster, model::default_profile("h100-sxm"), even);
  CHECK(sim::analysis::format_summary(even_graph, even_cost, sim::simulate(even_graph, even_cost)).find("# split") ==
        std::string::npos);
}
